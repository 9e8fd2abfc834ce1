// The responder alone, with a Source in memory: every rule, byte for byte where it matters.
#include "dns/dns.hpp"

#include "test/support/resources.hpp"
#include "test/support/tempdir.hpp"

#include "test/support/ldns_query.hpp"

#include <catch2/catch.hpp>

#include <ldns/ldns.h>

#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <map>

namespace {

class MemorySource : public dns::Source {
public:
    std::map<std::string, dns::Owner> names;
    std::uint32_t generation = 7;
    std::vector<std::string> extra_facts;
    std::optional<dns::Owner> find_name(std::string_view name) override
    {
        auto it = names.find(std::string(name));
        return it == names.end() ? std::nullopt : std::optional<dns::Owner>(it->second);
    }
    std::optional<dns::Owner> find_vip(const vip::Address& a) override
    {
        for (const auto& [n, o] : names)
            if (o.ipv4 == a || o.ipv6 == a) return o;
        return std::nullopt;
    }
    std::vector<std::string> hostnames_of(const dns::Owner& o) override
    {
        std::vector<std::string> out;
        for (const auto& [n, owner] : names)
            if (owner.name == o.name) out.push_back(n);
        return out;
    }
    std::vector<std::string> describe(const dns::Owner& o) override
    {
        std::vector<std::string> facts{"mes=" + o.mesh + "/" + o.name};
        facts.insert(facts.end(), extra_facts.begin(), extra_facts.end());
        return facts;
    }
    bool in_pool(const vip::Address& a) override { return vip::Pool::parse("127.242.0.0/16")->contains(a); }
    std::vector<vip::Pool> pools() override { return {*vip::Pool::parse("127.242.0.0/16")}; }
    std::size_t reverse_apex_labels(const vip::Address& a) override { return in_pool(a) ? 16 / 8 + 2 : 0; }
    bool has_names_below(std::string_view name) override
    {
        for (const auto& [n, o] : names)
            if (n.size() > name.size() && n.ends_with(name) && n[n.size() - name.size() - 1] == '.') return true;
        return false;
    }
    std::uint32_t serial() override { return generation; }
};

struct Parsed {
    ldns_pkt* pkt = nullptr;
    explicit Parsed(const std::vector<std::uint8_t>& wire) { REQUIRE(ldns_wire2pkt(&pkt, wire.data(), wire.size()) == LDNS_STATUS_OK); }
    ~Parsed() { ldns_pkt_free(pkt); }
};

// A reply as dig prints it, without the query time and size lines, which differ by nature.
std::string text(const std::vector<std::uint8_t>& wire)
{
    Parsed p(wire);
    char* s = ldns_pkt2str(p.pkt);
    std::string out = s;
    free(s);
    return out.substr(0, out.find(";; Query time"));
}

std::vector<std::uint8_t> query(const char* name, ldns_rr_type type, std::uint16_t edns_size = 0, std::uint8_t edns_version = 0)
{
    return test_support::ldns_query(name, type, {edns_size, edns_version});
}

struct Setup {
    MemorySource source;
    dns::Responder responder{dns::Settings{}};
    Setup()
    {
        source.names["mes-http.mesh"] = dns::Owner{"default", "mes-http", vip::Address::parse("127.242.0.3"), std::nullopt};
        source.names["v6.mesh"] = dns::Owner{"default", "v6", vip::Address::parse("127.242.0.4"), vip::Address::parse("fd00::4")};
    }
    dns::Response ask(const std::vector<std::uint8_t>& q, bool may_forward = false, bool tcp = false)
    {
        return responder.respond(q, dns::Client{tcp, may_forward}, source);
    }
};

}  // namespace

TEST_CASE("responder: A, AAAA and the other family")
{
    Setup s;
    auto r = s.ask(query("MES-http.mesh.", LDNS_RR_TYPE_A));
    REQUIRE(r.action == dns::Action::reply);
    Parsed p(r.wire);
    CHECK(ldns_pkt_id(p.pkt) == 0xbeef);
    CHECK(ldns_pkt_qr(p.pkt));
    CHECK(ldns_pkt_aa(p.pkt));
    CHECK(ldns_pkt_rd(p.pkt));
    REQUIRE(ldns_pkt_ancount(p.pkt) == 1);
    ldns_rr* a = ldns_rr_list_rr(ldns_pkt_answer(p.pkt), 0);
    CHECK(ldns_rr_ttl(a) == 30);
    char* owner = ldns_rdf2str(ldns_rr_owner(a));
    CHECK(std::string(owner) == "MES-http.mesh.");
    free(owner);
    auto v6 = s.ask(query("v6.mesh.", LDNS_RR_TYPE_AAAA));
    Parsed p6(v6.wire);
    CHECK(ldns_pkt_ancount(p6.pkt) == 1);
    auto nodata = s.ask(query("mes-http.mesh.", LDNS_RR_TYPE_AAAA));
    Parsed pn(nodata.wire);
    CHECK(ldns_pkt_get_rcode(pn.pkt) == LDNS_RCODE_NOERROR);
    CHECK(ldns_pkt_ancount(pn.pkt) == 0);
    REQUIRE(ldns_pkt_nscount(pn.pkt) == 1);
    CHECK(ldns_rr_get_type(ldns_rr_list_rr(ldns_pkt_authority(pn.pkt), 0)) == LDNS_RR_TYPE_SOA);
}

TEST_CASE("responder: NXDOMAIN in a zone, forward or REFUSED outside")
{
    Setup s;
    auto nx = s.ask(query("nope.mesh.", LDNS_RR_TYPE_A));
    CHECK(nx.rcode == LDNS_RCODE_NXDOMAIN);
    Parsed p(nx.wire);
    CHECK(ldns_pkt_aa(p.pkt));
    auto soa = ldns_rr_list_rr(ldns_pkt_authority(p.pkt), 0);
    CHECK(ldns_rdf2native_int32(ldns_rr_rdf(soa, 2)) == 7);  // the serial is the store generation
    CHECK(s.ask(query("example.org.", LDNS_RR_TYPE_A), true).action == dns::Action::forward);
    CHECK(s.ask(query("example.org.", LDNS_RR_TYPE_A), false).rcode == LDNS_RCODE_REFUSED);
    CHECK(s.ask(query("meshy.", LDNS_RR_TYPE_A), false).rcode == LDNS_RCODE_REFUSED);  // not under mesh.
}

TEST_CASE("responder: PTR inside the pool, NXDOMAIN for unused pool addresses")
{
    Setup s;
    auto ptr = s.ask(query("3.0.242.127.in-addr.arpa.", LDNS_RR_TYPE_PTR));
    Parsed p(ptr.wire);
    REQUIRE(ldns_pkt_ancount(p.pkt) == 1);
    char* target = ldns_rdf2str(ldns_rr_rdf(ldns_rr_list_rr(ldns_pkt_answer(p.pkt), 0), 0));
    CHECK(std::string(target) == "mes-http.mesh.");
    free(target);
    CHECK(s.ask(query("9.9.242.127.in-addr.arpa.", LDNS_RR_TYPE_PTR)).rcode == LDNS_RCODE_NXDOMAIN);
    CHECK(s.ask(query("1.2.0.192.in-addr.arpa.", LDNS_RR_TYPE_PTR), true).action == dns::Action::forward);
    CHECK(s.ask(query("4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", LDNS_RR_TYPE_PTR), true).action ==
          dns::Action::forward);  // fd00::4 is outside the pool of this source
}

TEST_CASE("responder: EDNS echo, BADVERS, truncation")
{
    Setup s;
    auto e = s.ask(query("mes-http.mesh.", LDNS_RR_TYPE_A, 4096));
    Parsed p(e.wire);
    CHECK(ldns_pkt_edns(p.pkt));
    CHECK(ldns_pkt_edns_udp_size(p.pkt) == 1232);
    auto bad = s.ask(query("mes-http.mesh.", LDNS_RR_TYPE_A, 4096, 1));
    CHECK(bad.rcode == 16);
    Parsed pb(bad.wire);
    CHECK(ldns_pkt_edns_extended_rcode(pb.pkt) == 1);
    CHECK(ldns_pkt_ancount(pb.pkt) == 0);
    // A TXT of about 800 bytes: TC without EDNS, whole with EDNS, whole over TCP.
    s.source.extra_facts = {std::string(250, 'a'), std::string(250, 'b'), std::string(250, 'c')};
    auto plain = s.ask(query("mes-http.mesh.", LDNS_RR_TYPE_TXT));
    CHECK(plain.truncated);
    Parsed pt(plain.wire);
    CHECK(ldns_pkt_tc(pt.pkt));
    CHECK(ldns_pkt_ancount(pt.pkt) == 0);
    CHECK(ldns_pkt_qdcount(pt.pkt) == 1);
    CHECK(plain.wire.size() <= 512);
    auto with_edns = s.ask(query("mes-http.mesh.", LDNS_RR_TYPE_TXT, 4096));
    CHECK_FALSE(with_edns.truncated);
    CHECK(with_edns.wire.size() > 512);
    CHECK_FALSE(s.ask(query("mes-http.mesh.", LDNS_RR_TYPE_TXT), false, true).truncated);
}

TEST_CASE("responder: garbage never crashes and gets FORMERR or nothing")
{
    Setup s;
    std::vector<std::uint8_t> q = query("mes-http.mesh.", LDNS_RR_TYPE_A);
    // Every prefix and every single-byte corruption of a valid query.
    for (std::size_t n = 0; n <= q.size(); ++n) {
        auto r = s.ask(std::vector<std::uint8_t>(q.begin(), q.begin() + static_cast<std::ptrdiff_t>(n)));
        if (n < 12) CHECK(r.action == dns::Action::drop);
        else CHECK(r.action != dns::Action::forward);
    }
    for (std::size_t i = 0; i < q.size(); ++i)
        for (int v : {0x00, 0x3f, 0xc0, 0xff}) {
            auto copy = q;
            copy[i] = static_cast<std::uint8_t>(v);
            auto r = s.ask(copy, true);
            if (r.action == dns::Action::reply) CHECK(r.wire.size() >= 12);
        }
}

// A Setup whose responder never takes the hand-written fast path.
Setup general_path()
{
    Setup s;
    dns::Settings plain;
    plain.fast_path = false;
    s.responder = dns::Responder(plain);
    return s;
}

TEST_CASE("responder: the fast path says exactly what the general path says")
{
    Setup fast;
    Setup general = general_path();
    for (const char* name : {"mes-http.mesh.", "MES-HTTP.Mesh.", "v6.mesh.", "nope.mesh.", "a.b.nope.mesh."})
        for (auto type : {LDNS_RR_TYPE_A, LDNS_RR_TYPE_AAAA})
            for (std::uint16_t edns : {std::uint16_t{0}, std::uint16_t{4096}, std::uint16_t{512}})
                for (bool tcp : {false, true}) {
                    auto q = query(name, type, edns);
                    auto a = fast.ask(q, true, tcp), b = general.ask(q, true, tcp);
                    INFO(name << " " << type << " edns " << edns << " tcp " << tcp);
                    REQUIRE(a.action == dns::Action::reply);
                    REQUIRE(b.action == dns::Action::reply);
                    CHECK(a.rcode == b.rcode);
                    CHECK(a.qtype == b.qtype);
                    CHECK(text(a.wire) == text(b.wire));
                    CHECK(a.wire.size() <= b.wire.size() + 16);
                }
}

TEST_CASE("system upstreams leave out mesd's own listen addresses")
{
    char path[] = "/tmp/mesd-resolv-XXXXXX";
    int fd = mkstemp(path);
    std::string text = "# comment\nnameserver 127.0.0.1\nnameserver 10.1.2.3\nnameserver ::1\nsearch example\n"
                       "nameserver fe80::1%eth0\n";
    REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
    close(fd);
    auto names = [&](std::vector<conf::HostPort> listen) {
        std::vector<std::string> out;
        for (const auto& u : dns::system_upstreams(listen, path)) out.push_back(u.to_string());
        return out;
    };
    CHECK(names({{"127.0.0.1", 53}}) == std::vector<std::string>{"10.1.2.3:53", "[::1]:53", "[fe80::1]:53"});
    CHECK(names({{"0.0.0.0", 53}}) == std::vector<std::string>{"10.1.2.3:53", "[fe80::1]:53"});
    CHECK(names({{"::", 53}}) == std::vector<std::string>{"10.1.2.3:53", "[fe80::1]:53"});
    CHECK(names({{"127.0.0.1", 15053}}).size() == 4);
    std::remove(path);
}

TEST_CASE("responder: every fuzz corpus input, crashes found included, gets the same outcome from both paths")
{
    Setup fast;
    Setup general = general_path();
    std::size_t inputs = 0;
    for (const auto& entry : std::filesystem::directory_iterator(std::string(MESD_SOURCE_DIR) + "/test/dns/fuzz-corpus")) {
        std::ifstream in(entry.path(), std::ios::binary);
        std::vector<std::uint8_t> q((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        for (bool tcp : {false, true}) {
            INFO(entry.path().filename().string() << " tcp " << tcp);
            auto a = fast.ask(q, q.size() % 2 == 0, tcp), b = general.ask(q, q.size() % 2 == 0, tcp);
            CHECK(a.action == b.action);
            CHECK(a.rcode == b.rcode);
        }
        ++inputs;
    }
    CHECK(inputs >= 16);
}

TEST_CASE("responder: a name of 256 octets with its root is malformed on the fast path too")
{
    Setup s;
    // Labels of 63, 63, 63 and `last` octets: 3 * 64 + 1 + last + 1 (the root) octets.
    auto ask = [&](int last) {
        std::vector<std::uint8_t> q = {0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0};
        for (int len : {63, 63, 63, last}) {
            q.push_back(static_cast<std::uint8_t>(len));
            q.insert(q.end(), static_cast<std::size_t>(len), 'a');
        }
        q.insert(q.end(), {0x00, 0x00, 0x01, 0x00, 0x01});
        return s.ask(q);
    };
    CHECK(ask(61).rcode != 1);  // 255 octets: a name (outside the zones: REFUSED)
    CHECK(ask(62).rcode == 1);  // 256: FORMERR, as the general path says
}

TEST_CASE("responder: empty non-terminals, the DO bit and malformed OPT records: the fast path says what the general one says")
{
    Setup fast;
    Setup general = general_path();
    for (auto* s : {&fast, &general})
        s->source.names["deep.ext.mesh"] = dns::Owner{"default", "deep", vip::Address::parse("127.242.0.5"), std::nullopt};
    auto with_do = [](const char* name, ldns_rr_type type) {
        return test_support::ldns_query(name, type, {.edns_size = 1232, .do_bit = true});
    };
    for (const char* name : {"ext.mesh.", "EXT.Mesh.", "deep.ext.mesh.", "x.ext.mesh.", "x.deep.ext.mesh.", "nope.mesh."})
        for (auto type : {LDNS_RR_TYPE_A, LDNS_RR_TYPE_AAAA})
            for (int kind = 0; kind < 3; ++kind) {
                auto q = kind == 0 ? query(name, type) : kind == 1 ? query(name, type, 1232) : with_do(name, type);
                auto a = fast.ask(q), b = general.ask(q);
                INFO(name << " " << type << " kind " << kind);
                CHECK(a.rcode == b.rcode);
                CHECK(text(a.wire) == text(b.wire));
                bool ent = std::string(name) == "ext.mesh." || std::string(name) == "EXT.Mesh.";
                if (ent) CHECK(a.rcode == LDNS_RCODE_NOERROR);
                if (kind == 2) CHECK(a.wire[a.wire.size() - 4] == 0x80);  // the OPT's DO bit (it is the last record)
            }
    // An option running past the OPT RDATA: FORMERR from both, with an OPT.
    auto q = query("mes-http.mesh.", LDNS_RR_TYPE_A, 1232);
    q.insert(q.end(), {0x00, 0x0a, 0x00, 0x10, 1, 2});
    q[q.size() - 7] = 6;  // RDLENGTH covers the half option
    auto a = fast.ask(q), b = general.ask(q);
    CHECK(a.rcode == LDNS_RCODE_FORMERR);
    CHECK(b.rcode == LDNS_RCODE_FORMERR);
    CHECK(a.wire == b.wire);
    CHECK(a.wire[11] == 1);
}

namespace {

// A store behind a StoreSource: the TXT and PTR answers the fast path takes from the index
// against those the general path builds from the snapshot.
struct StoreSetup {
    test_support::TempDir dir;
    std::unique_ptr<store::Store> db;
    std::unique_ptr<dns::StoreSource> source;
    dns::Responder fast{dns::Settings{}};
    dns::Responder general{[] {
        dns::Settings s;
        s.fast_path = false;
        return s;
    }()};

    explicit StoreSetup(std::vector<conf::Resource> resources)
    {
        auto opened = store::Store::open(store::Options{(dir.path / "data").string()});
        REQUIRE(opened.has_value());
        db = std::move(*opened);
        store::WriteOptions options;
        options.pools.ipv4 = "127.242.0.0/16";
        options.pools.ipv6 = "fd00::/112";
        auto applied = db->apply(resources, options);
        INFO((applied ? std::string() : applied.error().message));
        REQUIRE(applied.has_value());
        source = std::make_unique<dns::StoreSource>(*db, std::vector<std::string>{"default"});
        REQUIRE(source->refresh().has_value());
    }
    // Both paths' replies, which must be the same bytes; whether the fast path answered.
    bool same(const std::vector<std::uint8_t>& q, bool tcp = false)
    {
        dns::Client client{tcp, false};
        dns::FastReply reply;
        bool answered = fast.answer_fast(q, client, *source, reply);
        auto a = fast.respond(q, client, *source);
        auto b = general.respond(q, client, *source);
        CHECK(a.action == b.action);
        CHECK(a.rcode == b.rcode);
        CHECK(a.qtype == b.qtype);
        CHECK(a.truncated == b.truncated);
        CHECK(a.wire == b.wire);
        if (answered) CHECK(std::vector<std::uint8_t>(reply.wire.begin(), reply.wire.begin() + reply.size) == b.wire);
        return answered;
    }
};

conf::Resource mes_with_endpoints(const std::string& name, int endpoints)
{
    auto r = test_support::make_mes(name);
    auto& m = std::get<conf::MeshExternalService>(r.spec);
    m.endpoints.clear();
    for (int i = 0; i < endpoints; ++i)
        m.endpoints.push_back(conf::Endpoint{"endpoint-" + std::to_string(i) + ".backends.example.com",
                                             conf::AddressKind::hostname, 8080, static_cast<std::uint8_t>(i % 3)});
    return r;
}

std::string reverse_of(const char* address) { return vip::Address::parse(address)->reverse_name(); }

}  // namespace

TEST_CASE("responder: TXT and PTR from the index are byte for byte the general path's, and the fast path's")
{
    std::vector<conf::Resource> resources = {test_support::make_generator("a-plain", "{{ .Name }}.mesh"),
                                             test_support::make_generator("b-other", "{{ .Name }}.other.mesh"),
                                             test_support::make_generator("c-outside", "{{ .Name }}.svc.example")};
    for (int endpoints : {0, 1, 2, 6, 7, 8, 9, 12, 19, 20, 21, 22, 27, 80})
        resources.push_back(mes_with_endpoints("mes-" + std::to_string(endpoints), endpoints));
    StoreSetup s(resources);

    std::size_t fast = 0, general = 0;
    auto ask = [&](const std::string& name, ldns_rr_type type, std::uint16_t edns, bool tcp) {
        INFO(name << " type " << type << " edns " << edns << " tcp " << tcp);
        (s.same(query(name.c_str(), type, edns), tcp) ? fast : general) += 1;
    };
    for (const std::string suffix : {".mesh.", ".OTHER.Mesh.", ".svc.example.", ".nope.mesh."})
        for (int endpoints : {0, 1, 2, 6, 7, 8, 9, 12, 19, 20, 21, 22, 27, 80})
            for (std::uint16_t edns : {std::uint16_t{0}, std::uint16_t{512}, std::uint16_t{1232}, std::uint16_t{4096}})
                for (bool tcp : {false, true}) ask("MES-" + std::to_string(endpoints) + suffix, LDNS_RR_TYPE_TXT, edns, tcp);
    // Every VIP: two families, three hostnames each (one outside the zones), unused addresses
    // of the pools, and an address outside them.
    for (const char* address : {"127.242.0.1", "127.242.0.5", "127.242.0.14", "127.242.0.15", "127.242.255.254",
                                "10.0.0.1", "fd00::1", "fd00::e", "fd00::ff", "fd01::1"})
        for (std::uint16_t edns : {std::uint16_t{0}, std::uint16_t{1232}})
            for (bool tcp : {false, true}) {
                ask(reverse_of(address), LDNS_RR_TYPE_PTR, edns, tcp);
                auto upper = reverse_of(address);
                for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
                ask(upper, LDNS_RR_TYPE_PTR, edns, tcp);
                ask(reverse_of(address), LDNS_RR_TYPE_TXT, edns, tcp);
            }
    // Reverse names that are not addresses.
    for (const char* name : {"1.0.242.127.in-addr.arpa.", "01.0.242.127.in-addr.arpa.", "256.0.242.127.in-addr.arpa.",
                             "0.242.127.in-addr.arpa.", "1.1.0.242.127.in-addr.arpa.",
                             "g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."})
        ask(name, LDNS_RR_TYPE_PTR, 0, false);
    // The fast path answered most, and left the replies that need truncating (and the
    // names outside the zones) to the general path.
    CHECK(fast > general);
    CHECK(general > 0);

    // What the fast path took, case by case.
    dns::FastReply reply;
    auto fast_answers = [&](const std::string& name, ldns_rr_type type, std::uint16_t edns = 0, bool tcp = false) {
        return s.fast.answer_fast(query(name.c_str(), type, edns), dns::Client{tcp, false}, *s.source, reply);
    };
    CHECK(fast_answers("mes-1.mesh.", LDNS_RR_TYPE_TXT));
    CHECK(fast_answers("nope.mesh.", LDNS_RR_TYPE_TXT));              // NXDOMAIN
    CHECK_FALSE(fast_answers("mes-1.svc.example.", LDNS_RR_TYPE_TXT));  // outside the zones
    CHECK_FALSE(fast_answers("mes-12.mesh.", LDNS_RR_TYPE_TXT));        // over 512: TC
    CHECK(fast_answers("mes-12.mesh.", LDNS_RR_TYPE_TXT, 1232));
    CHECK(fast_answers("mes-12.mesh.", LDNS_RR_TYPE_TXT, 0, true));
    CHECK_FALSE(fast_answers("mes-27.mesh.", LDNS_RR_TYPE_TXT, 1232));  // over 1232: TC
    CHECK(fast_answers("mes-27.mesh.", LDNS_RR_TYPE_TXT, 4096, true));
    CHECK_FALSE(fast_answers("mes-80.mesh.", LDNS_RR_TYPE_TXT, 0, true));  // over the fast buffer
    CHECK(fast_answers(reverse_of("127.242.0.1"), LDNS_RR_TYPE_PTR));
    CHECK(reply.size > 0);
    CHECK(fast_answers(reverse_of("fd00::1"), LDNS_RR_TYPE_PTR));
    // NXDOMAIN with the reverse zone's SOA, written by the fast path too.
    CHECK(fast_answers(reverse_of("127.242.255.254"), LDNS_RR_TYPE_PTR));
    CHECK(reply.rcode == 3);
    CHECK_FALSE(fast_answers(reverse_of("10.0.0.1"), LDNS_RR_TYPE_PTR));  // not ours
}
