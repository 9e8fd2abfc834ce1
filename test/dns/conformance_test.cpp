// DNS conformance at the edges of the RFCs, through the real mesd: empty non-terminals,
// the reverse zones of the VIP pools, EDNS (DO, OPT in error replies, malformed OPT
// records), TSIG, zone transfers, ISC genreport's probes with its expectations, and the
// same probes sent to Knot DNS serving an equivalent zone.
#include "test/support/dns.hpp"
#include "vip/vip.hpp"

#include <algorithm>
#include <ctime>
#include <map>
#include <fstream>
#include <optional>
#include <sstream>

using namespace test_support;

namespace {

// A query built byte by byte, so that every header bit and the OPT record are as a probe
// wants them, malformed ones included.
struct Query {
    std::uint16_t id = 0x4d45;
    std::string name = "mesh";
    std::uint16_t type = 1;
    std::uint16_t klass = 1;
    std::uint8_t opcode = 0;
    bool rd = false, aa = false, tc = false, ra = false, z = false, ad = false, cd = false;
    bool header_only = false;  // no question at all
    // EDNS: a UDP size of 0 sends no OPT.
    std::uint16_t udp_size = 0;
    std::uint16_t edns_flags = 0;
    std::uint8_t edns_version = 0;
    std::vector<std::uint8_t> options;
    // Records written after the OPT in the additional section, and their count.
    std::vector<std::uint8_t> more_additional;
    std::uint16_t more_additional_count = 0;
};

void put16(std::vector<std::uint8_t>& out, std::uint16_t v)
{
    out.push_back(static_cast<std::uint8_t>(v >> 8));
    out.push_back(static_cast<std::uint8_t>(v & 0xff));
}

void put_name(std::vector<std::uint8_t>& out, const std::string& name)
{
    std::size_t start = 0;
    while (start < name.size()) {
        auto dot = name.find('.', start);
        auto label = name.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        out.push_back(static_cast<std::uint8_t>(label.size()));
        out.insert(out.end(), label.begin(), label.end());
        if (dot == std::string::npos) break;
        start = dot + 1;
    }
    out.push_back(0);
}

// An OPT record as RFC 6891 6.1.2 lays it out.
std::vector<std::uint8_t> opt_record(std::uint16_t udp_size, std::uint16_t flags = 0, std::uint8_t version = 0,
                                     const std::vector<std::uint8_t>& options = {})
{
    std::vector<std::uint8_t> rr = {0};
    put16(rr, 41);
    put16(rr, udp_size);
    rr.push_back(0);
    rr.push_back(version);
    put16(rr, flags);
    put16(rr, static_cast<std::uint16_t>(options.size()));
    rr.insert(rr.end(), options.begin(), options.end());
    return rr;
}

std::vector<std::uint8_t> build(const Query& q)
{
    std::vector<std::uint8_t> out;
    put16(out, q.id);
    out.push_back(static_cast<std::uint8_t>((q.opcode & 0x0f) << 3 | (q.aa ? 0x04 : 0) | (q.tc ? 0x02 : 0) | (q.rd ? 0x01 : 0)));
    out.push_back(static_cast<std::uint8_t>((q.ra ? 0x80 : 0) | (q.z ? 0x40 : 0) | (q.ad ? 0x20 : 0) | (q.cd ? 0x10 : 0)));
    put16(out, q.header_only ? 0 : 1);
    put16(out, 0);
    put16(out, 0);
    put16(out, static_cast<std::uint16_t>((q.udp_size ? 1 : 0) + q.more_additional_count));
    if (!q.header_only) {
        put_name(out, q.name);
        put16(out, q.type);
        put16(out, q.klass);
    }
    if (q.udp_size) {
        auto opt = opt_record(q.udp_size, q.edns_flags, q.edns_version, q.options);
        out.insert(out.end(), opt.begin(), opt.end());
    }
    out.insert(out.end(), q.more_additional.begin(), q.more_additional.end());
    return out;
}

// What a reply says, read with bounds checks; `ok` is false when it does not parse.
struct Reply {
    bool ok = false;
    std::size_t size = 0;
    std::uint16_t id = 0;
    bool qr = false, aa = false, tc = false, rd = false, ra = false, z = false, ad = false, cd = false;
    unsigned opcode = 0, rcode = 0;  // rcode with the OPT's extended bits
    std::uint16_t qd = 0, an = 0, ns = 0, ar = 0;
    std::string qname;
    std::uint16_t qtype = 0;
    bool has_opt = false;
    std::uint16_t opt_size = 0, opt_flags = 0;
    unsigned opt_version = 0;
    std::vector<std::uint16_t> opt_codes;
    std::vector<std::uint16_t> answer_types, authority_types;
    std::vector<std::string> authority_owners;
    bool has_tsig = false, tsig_last = false;
    std::string tsig_owner, tsig_algorithm;
    std::uint16_t tsig_mac_size = 0xffff, tsig_original_id = 0, tsig_error = 0, tsig_class = 0;
    std::uint32_t tsig_ttl = 0xffffffff;
};

class Cursor {
public:
    explicit Cursor(const std::vector<std::uint8_t>& b) : b_(b) {}
    std::size_t pos = 0;
    std::size_t remaining() const { return b_.size() - pos; }
    bool u8(std::uint8_t& v)
    {
        if (1 > remaining()) return false;
        v = b_[pos++];
        return true;
    }
    bool u16(std::uint16_t& v)
    {
        if (2 > remaining()) return false;
        v = static_cast<std::uint16_t>(b_[pos] << 8 | b_[pos + 1]);
        pos += 2;
        return true;
    }
    bool u32(std::uint32_t& v)
    {
        std::uint16_t hi = 0, lo = 0;
        if (!u16(hi) || !u16(lo)) return false;
        v = static_cast<std::uint32_t>(hi) << 16 | lo;
        return true;
    }
    // A name, following compression pointers (at most 32, so a loop cannot hang).
    bool name(std::string& out)
    {
        out.clear();
        std::size_t at = pos;
        bool jumped = false;
        for (int hops = 0; hops < 32;) {
            if (at >= b_.size()) return false;
            std::uint8_t len = b_[at];
            if ((len & 0xc0) == 0xc0) {
                if (at + 1 >= b_.size()) return false;
                if (!jumped) pos = at + 2;
                jumped = true;
                at = static_cast<std::size_t>((len & 0x3f) << 8 | b_[at + 1]);
                ++hops;
                continue;
            }
            if (len == 0) {
                if (!jumped) pos = at + 1;
                if (out.empty()) out = ".";
                return true;
            }
            if (len > 63 || at + 1 + len > b_.size()) return false;
            out.append(reinterpret_cast<const char*>(&b_[at + 1]), len);
            out.push_back('.');
            at += 1 + len;
        }
        return false;
    }
    bool skip(std::size_t n)
    {
        if (n > remaining()) return false;
        pos += n;
        return true;
    }

private:
    const std::vector<std::uint8_t>& b_;
};

std::string lower(std::string s)
{
    std::ranges::transform(s, s.begin(), [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; });
    return s;
}

Reply parse(const std::vector<std::uint8_t>& wire)
{
    Reply r;
    r.size = wire.size();
    Cursor in(wire);
    std::uint8_t b2 = 0, b3 = 0;
    if (!in.u16(r.id) || !in.u8(b2) || !in.u8(b3) || !in.u16(r.qd) || !in.u16(r.an) || !in.u16(r.ns) || !in.u16(r.ar)) return r;
    r.qr = b2 & 0x80, r.opcode = (b2 >> 3) & 0x0f, r.aa = b2 & 0x04, r.tc = b2 & 0x02, r.rd = b2 & 0x01;
    r.ra = b3 & 0x80, r.z = b3 & 0x40, r.ad = b3 & 0x20, r.cd = b3 & 0x10, r.rcode = b3 & 0x0f;
    for (std::uint16_t i = 0; i < r.qd; ++i) {
        std::uint16_t klass = 0;
        if (!in.name(r.qname) || !in.u16(r.qtype) || !in.u16(klass)) return r;
        r.qname = lower(r.qname);
    }
    std::uint16_t total = static_cast<std::uint16_t>(r.an + r.ns + r.ar);
    for (std::uint16_t i = 0; i < total; ++i) {
        std::string owner;
        std::uint16_t type = 0, klass = 0, rdlen = 0;
        std::uint32_t ttl = 0;
        if (!in.name(owner) || !in.u16(type) || !in.u16(klass) || !in.u32(ttl) || !in.u16(rdlen) || rdlen > in.remaining()) return r;
        std::size_t end = in.pos + rdlen;
        if (i < r.an) r.answer_types.push_back(type);
        else if (i < r.an + r.ns) {
            r.authority_types.push_back(type);
            r.authority_owners.push_back(lower(owner));
        } else if (type == 41) {
            r.has_opt = true;
            r.opt_size = klass;
            r.rcode |= (ttl >> 24) << 4;
            r.opt_version = (ttl >> 16) & 0xff;
            r.opt_flags = static_cast<std::uint16_t>(ttl & 0xffff);
            while (in.pos < end) {
                std::uint16_t code = 0, len = 0;
                if (!in.u16(code) || !in.u16(len) || !in.skip(len)) return r;
                r.opt_codes.push_back(code);
            }
        } else if (type == 250) {
            r.has_tsig = true;
            r.tsig_last = i + 1 == total;
            r.tsig_owner = owner;
            r.tsig_class = klass;
            r.tsig_ttl = ttl;
            std::uint16_t fudge = 0, other = 0;
            std::uint32_t time_low = 0;
            std::uint16_t time_high = 0;
            if (!in.name(r.tsig_algorithm) || !in.u16(time_high) || !in.u32(time_low) || !in.u16(fudge) || !in.u16(r.tsig_mac_size) ||
                !in.skip(r.tsig_mac_size) || !in.u16(r.tsig_original_id) || !in.u16(r.tsig_error) || !in.u16(other) || !in.skip(other))
                return r;
        }
        if (in.pos > end) return r;
        in.pos = end;
    }
    r.ok = in.remaining() == 0;
    return r;
}

std::vector<std::uint8_t> tcp_exchange(int port, const std::vector<std::uint8_t>& query)
{
    int fd = tcp_connect(port);
    auto stream = framed({query});
    REQUIRE(::send(fd, stream.data(), stream.size(), 0) == static_cast<ssize_t>(stream.size()));
    std::vector<std::uint8_t> in;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (std::chrono::steady_clock::now() < deadline) {
        if (in.size() >= 2 && in.size() >= 2 + (static_cast<std::size_t>(in[0]) << 8 | in[1])) break;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 200) != 1) continue;
        std::uint8_t buf[4096];
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        in.insert(in.end(), buf, buf + n);
    }
    ::close(fd);
    if (in.size() < 2) return {};
    std::size_t len = static_cast<std::size_t>(in[0]) << 8 | in[1];
    if (in.size() < 2 + len) return {};
    return {in.begin() + 2, in.begin() + 2 + static_cast<std::ptrdiff_t>(len)};
}

Reply ask(int port, const Query& q, bool tcp = false)
{
    auto wire = build(q);
    auto reply = tcp ? tcp_exchange(port, wire) : udp_exchange(port, wire, std::chrono::milliseconds(2000));
    REQUIRE(!reply.empty());
    Reply r = parse(reply);
    REQUIRE(r.ok);
    CHECK(r.id == q.id);
    return r;
}

// Every generated name twice: "{{ .Name }}.mesh" and, from a second generator as Kuma's
// default "*.extsvc.mesh.local" does, one level deeper under "extsvc.mesh", an empty
// non-terminal.
const std::string extsvc_generator =
    "---\ntype: HostnameGenerator\nname: extsvc\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.extsvc.mesh\"\n";

MesdOptions dual_stack()
{
    MesdOptions o;
    o.vip_section = "  ipv4: 127.242.0.0/16\n  ipv6: fd00:fd02::/64\n";
    return o;
}

constexpr std::uint16_t A = 1, NS = 2, SOA = 6, PTR = 12, TXT = 16, AAAA = 28, DNSKEY = 48, IXFR = 251, AXFR = 252,
                        ANY = 255;
constexpr unsigned NOERROR = 0, FORMERR = 1, SERVFAIL = 2, NXDOMAIN = 3, NOTIMP = 4, REFUSED = 5, NOTAUTH = 9, BADVERS = 16;

bool soa_in_authority(const Reply& r, const std::string& apex)
{
    return r.ns == 1 && r.authority_types == std::vector<std::uint16_t>{SOA} && r.authority_owners[0] == apex;
}

// The 16 nibbles of fd00:fd02::/64, the IPv6 pool's reverse zone.
const std::string v6_apex = "0.0.0.0.0.0.0.0.2.0.d.f.0.0.d.f.ip6.arpa";

}  // namespace

TEST_CASE("conformance: an empty non-terminal above generated hostnames gets NODATA with the SOA, on both paths")
{
    Fixture f(MesdOptions{}, extsvc_generator);
    // A and AAAA are the fast path's, TXT and MX the general one's; with and without EDNS.
    for (std::uint16_t type : {A, AAAA, TXT, std::uint16_t{15}, ANY}) {
        for (std::uint16_t size : {std::uint16_t{0}, std::uint16_t{1232}}) {
            CAPTURE(type, size);
            Query q;
            q.name = "extsvc.mesh";
            q.type = type;
            q.udp_size = size;
            auto r = ask(std::stoi(f.port), q);
            CHECK(r.rcode == NOERROR);
            CHECK(r.aa);
            CHECK(r.an == 0);
            CHECK(soa_in_authority(r, "mesh."));
            q.name = "EXTSVC.Mesh";  // matched case-insensitively
            CHECK(ask(std::stoi(f.port), q).rcode == NOERROR);
        }
    }
    Query below;
    below.name = "mes-http.extsvc.mesh";
    CHECK(ask(std::stoi(f.port), below).an == 1);
    // Not every name on the way is one: a sibling and a name below a hostname do not exist.
    for (std::string name : {"other.mesh", "nope.extsvc.mesh", "x.mes-http.extsvc.mesh", "svc.mesh"}) {
        CAPTURE(name);
        Query q;
        q.name = name;
        auto r = ask(std::stoi(f.port), q);
        CHECK(r.rcode == NXDOMAIN);
        CHECK(soa_in_authority(r, "mesh."));
    }
}

TEST_CASE("conformance: the reverse zones of the pools have SOA and NS at their apex and their SOA in every negative answer")
{
    Fixture f(dual_stack(), extsvc_generator);
    int port = std::stoi(f.port);
    auto vip4 = f.short_answer("mes-http.mesh", "A");
    auto vip6 = f.short_answer("mes-http.mesh", "AAAA");
    REQUIRE(vip4.starts_with("127.242."));
    REQUIRE(vip6.starts_with("fd00:fd02::"));
    auto reverse4 = f.dig_out({"-x", vip4, "+short"});
    CHECK(reverse4.find("mes-http.mesh.") != std::string::npos);

    for (const std::string& apex : std::vector<std::string>{"242.127.in-addr.arpa", v6_apex}) {
        CAPTURE(apex);
        Query q;
        q.name = apex;
        q.type = SOA;
        auto soa = ask(port, q);
        CHECK(soa.rcode == NOERROR);
        CHECK(soa.aa);
        CHECK(soa.answer_types == std::vector<std::uint16_t>{SOA});
        q.type = NS;
        CHECK(ask(port, q).answer_types == std::vector<std::uint16_t>{NS});
        q.type = A;
        auto nodata = ask(port, q);
        CHECK(nodata.rcode == NOERROR);
        CHECK(nodata.an == 0);
        CHECK(soa_in_authority(nodata, apex + "."));
    }
    // Between the apex and the addresses: empty non-terminals.
    for (const std::string& name : std::vector<std::string>{"0.242.127.in-addr.arpa", "0." + v6_apex, "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0." + v6_apex}) {
        CAPTURE(name);
        Query q;
        q.name = name;
        q.type = PTR;
        auto r = ask(port, q);
        CHECK(r.rcode == NOERROR);
        CHECK(r.aa);
        CHECK(r.an == 0);
        CHECK(r.ns == 1);
        CHECK(r.authority_types == std::vector<std::uint16_t>{SOA});
    }
    // An unused VIP and names that are no address of the zone: NXDOMAIN with the SOA.
    for (const std::string& name : std::vector<std::string>
         {"200.200.242.127.in-addr.arpa", "x.242.127.in-addr.arpa", "01.0.242.127.in-addr.arpa", "1.1.0.242.127.in-addr.arpa",
          "f.f.f.f.f.f.f.f.f.f.f.f.f.f.f.f." + v6_apex, "g." + v6_apex}) {
        CAPTURE(name);
        Query q;
        q.name = name;
        q.type = PTR;
        auto r = ask(port, q);
        CHECK(r.rcode == NXDOMAIN);
        CHECK(r.aa);
        CHECK(r.ns == 1);
        CHECK(r.authority_types == std::vector<std::uint16_t>{SOA});
    }
    // A used VIP: PTR, NODATA with the SOA for other types, and ANY the whole PTR RRset.
    Query q;
    {
        auto a = vip::Address::parse(vip4);
        REQUIRE(a);
        q.name = a->reverse_name();
        q.name.pop_back();
    }
    q.type = TXT;
    auto other = ask(port, q);
    CHECK(other.rcode == NOERROR);
    CHECK(other.an == 0);
    CHECK(soa_in_authority(other, "242.127.in-addr.arpa."));
    q.type = ANY;
    auto any = ask(port, q);
    // mes-http.mesh, mes-http.extsvc.mesh and Kuma's default mes-http.extsvc.mesh.local
    CHECK(any.answer_types == std::vector<std::uint16_t>{PTR, PTR, PTR});
    q.type = PTR;
    CHECK(ask(port, q).answer_types == std::vector<std::uint16_t>{PTR, PTR, PTR});
    // Outside every pool: not ours (refused here, forwarding being off).
    Query outside;
    outside.name = "1.0.243.127.in-addr.arpa";
    outside.type = PTR;
    CHECK(ask(port, outside).rcode == REFUSED);
}

TEST_CASE("conformance: the DO bit comes back in every reply to a query that set it")
{
    Fixture f;
    int port = std::stoi(f.port);
    struct Case {
        std::string name;
        std::uint16_t type;
        std::uint16_t size = 1232;
        std::uint8_t version = 0;
        unsigned rcode;
        bool tcp = false;
        bool tc = false;
    };
    std::vector<Case> cases = {
        {"mes-http.mesh", A, 1232, 0, NOERROR},           // the fast path: an answer
        {"nope.mesh", A, 1232, 0, NXDOMAIN},              // the fast path: NXDOMAIN
        {"mes-http.mesh", AAAA, 1232, 0, NOERROR},        // the fast path: NODATA
        {"mesh", SOA, 1232, 0, NOERROR},                  // the general path
        {"mesh", SOA, 1232, 1, BADVERS},                  // BADVERS
        {"mes-big.mesh", TXT, 512, 0, NOERROR, false, true},  // TC
        {"mesh", AXFR, 1232, 0, NOTIMP},
        {"mesh", AXFR, 1232, 0, REFUSED, true},
        {"example.org", A, 1232, 0, REFUSED},             // outside the zones, not forwarded
    };
    for (const auto& c : cases) {
        for (bool do_bit : {true, false}) {
            CAPTURE(c.name, c.type, c.version, c.tcp, do_bit);
            Query q;
            q.name = c.name;
            q.type = c.type;
            q.udp_size = c.size;
            q.edns_version = c.version;
            q.edns_flags = do_bit ? 0x8000 : 0;
            auto r = ask(port, q, c.tcp);
            CHECK(r.rcode == c.rcode);
            CHECK(r.tc == c.tc);
            REQUIRE(r.has_opt);
            CHECK(r.opt_version == 0);
            CHECK(r.opt_flags == (do_bit ? 0x8000 : 0));
        }
    }
    // An EDNS flag other than DO is not echoed (RFC 6891 6.1.4).
    Query q;
    q.udp_size = 1232;
    q.edns_flags = 0x8080;
    q.name = "mes-http.mesh";
    CHECK(ask(port, q).opt_flags == 0x8000);
}

TEST_CASE("conformance: the forwarder's own SERVFAIL carries the OPT and the DO bit")
{
    FakeUpstream silent(nullptr);
    Fixture f(forwarding({silent.port}, "200ms"));
    Query q;
    q.name = "example.org";
    q.rd = true;
    q.udp_size = 1232;
    q.edns_flags = 0x8000;
    auto r = ask(std::stoi(f.port), q);
    CHECK(r.rcode == SERVFAIL);
    REQUIRE(r.has_opt);
    CHECK(r.opt_flags == 0x8000);
    q.edns_flags = 0;
    auto plain = ask(std::stoi(f.port), q);
    CHECK(plain.rcode == SERVFAIL);
    REQUIRE(plain.has_opt);
    CHECK(plain.opt_flags == 0);
}

TEST_CASE("conformance: NOTIMP and FORMERR replies to an EDNS query carry an OPT, with DO as asked")
{
    Fixture f;
    int port = std::stoi(f.port);
    for (bool do_bit : {false, true}) {
        CAPTURE(do_bit);
        // An opcode mesd does not implement (STATUS, and 15 as genreport sends it).
        for (std::uint8_t opcode : {std::uint8_t{2}, std::uint8_t{15}}) {
            Query q;
            q.opcode = opcode;
            q.rd = true;
            q.udp_size = 1232;
            q.edns_flags = do_bit ? 0x8000 : 0;
            auto r = ask(port, q);
            CHECK(r.rcode == NOTIMP);
            CHECK(r.opcode == opcode);
            CHECK(!r.rd);  // RD is defined for QUERY alone
            REQUIRE(r.has_opt);
            CHECK(r.opt_flags == (do_bit ? 0x8000 : 0));
            CHECK(r.ar == 1);
        }
        // Two questions: FORMERR, with the OPT.
        Query q;
        q.udp_size = 1232;
        q.edns_flags = do_bit ? 0x8000 : 0;
        auto two = build(q);
        two[5] = 2;
        std::vector<std::uint8_t> question = {4, 'm', 'e', 's', 'h', 0, 0, 1, 0, 1};
        two.insert(two.begin() + 12 + 10, question.begin(), question.end());
        auto r = parse(udp_exchange(port, two));
        REQUIRE(r.ok);
        CHECK(r.rcode == FORMERR);
        REQUIRE(r.has_opt);
        CHECK(r.opt_flags == (do_bit ? 0x8000 : 0));
    }
    // Without EDNS, no OPT.
    Query plain;
    plain.opcode = 2;
    auto r = ask(port, plain);
    CHECK(r.rcode == NOTIMP);
    CHECK(!r.has_opt);
    CHECK(r.ar == 0);
}

TEST_CASE("conformance: malformed OPT records get FORMERR, on the fast path's names too")
{
    Fixture f;
    int port = std::stoi(f.port);
    for (std::string name : {"mes-http.mesh", "mesh"}) {
        CAPTURE(name);
        std::uint16_t type = name == "mesh" ? SOA : A;
        // two OPT records
        {
            Query q;
            q.name = name;
            q.type = type;
            q.udp_size = 1232;
            q.more_additional = opt_record(1232);
            q.more_additional_count = 1;
            CHECK(ask(port, q).rcode == FORMERR);
        }
        // an OPT record in the answer or authority section
        {
            for (int section : {6, 8}) {
                Query q;
                q.name = name;
                q.type = type;
                auto wire = build(q);
                auto opt = opt_record(1232);
                wire.insert(wire.end(), opt.begin(), opt.end());
                wire[static_cast<std::size_t>(section) + 1] = 1;
                auto r = parse(udp_exchange(port, wire));
                REQUIRE(r.ok);
                CHECK(r.rcode == FORMERR);
            }
        }
        // an OPT record whose owner is not the root
        {
            Query q;
            q.name = name;
            q.type = type;
            auto wire = build(q);
            wire[11] = 1;
            std::vector<std::uint8_t> opt = {1, 'x', 0};
            auto rest = opt_record(1232);
            opt.insert(opt.end(), rest.begin() + 1, rest.end());
            wire.insert(wire.end(), opt.begin(), opt.end());
            auto r = parse(udp_exchange(port, wire));
            REQUIRE(r.ok);
            CHECK(r.rcode == FORMERR);
            CHECK(r.has_opt);
        }
        // an option whose length runs past the OPT RDATA
        {
            Query q;
            q.name = name;
            q.type = type;
            q.udp_size = 1232;
            q.options = {0x00, 0x0a, 0x00, 0x10, 1, 2, 3, 4, 5, 6, 7, 8};  // a cookie claiming 16 bytes, holding 8
            auto r = ask(port, q);
            CHECK(r.rcode == FORMERR);
            CHECK(r.has_opt);
            q.options = {0x00, 0x0a, 0x00};  // half an option header
            CHECK(ask(port, q).rcode == FORMERR);
            q.options = {0x00, 0x0a, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8};  // the same cookie, well formed
            CHECK(ask(port, q).rcode == NOERROR);
        }
    }
}

namespace {

// A TSIG record as genreport's "dnswkk" probe signs with (the well-known all-zero key named
// "."); the MAC is not checked by mesd, which knows no key, so any 32 bytes do.
std::vector<std::uint8_t> tsig_record(std::uint16_t original_id, const std::string& key = "")
{
    std::vector<std::uint8_t> rr;
    put_name(rr, key);
    put16(rr, 250);
    put16(rr, 255);  // class ANY
    put16(rr, 0);
    put16(rr, 0);  // TTL 0
    std::vector<std::uint8_t> rdata;
    put_name(rdata, "hmac-sha256");
    auto now = static_cast<std::uint32_t>(std::time(nullptr));
    put16(rdata, 0);
    put16(rdata, static_cast<std::uint16_t>(now >> 16));
    put16(rdata, static_cast<std::uint16_t>(now & 0xffff));
    put16(rdata, 300);  // fudge
    put16(rdata, 32);
    rdata.insert(rdata.end(), 32, 0xab);
    put16(rdata, original_id);
    put16(rdata, 0);  // error
    put16(rdata, 0);  // other length
    put16(rr, static_cast<std::uint16_t>(rdata.size()));
    rr.insert(rr.end(), rdata.begin(), rdata.end());
    return rr;
}

}  // namespace

TEST_CASE("conformance: a TSIG-signed query gets NOTAUTH and an unsigned TSIG record carrying BADKEY")
{
    Fixture f;
    int port = std::stoi(f.port);
    for (bool tcp : {false, true}) {
        for (std::uint16_t size : {std::uint16_t{0}, std::uint16_t{1232}}) {
            for (std::string key : {"", "key.example"}) {
                CAPTURE(tcp, size, key);
                Query q;
                q.name = "mes-http.mesh";
                q.udp_size = size;
                q.edns_flags = 0x8000;
                q.more_additional = tsig_record(q.id, key);
                q.more_additional_count = 1;
                auto r = ask(port, q, tcp);
                CHECK(r.rcode == NOTAUTH);
                CHECK(r.an == 0);
                REQUIRE(r.has_tsig);
                CHECK(r.tsig_last);
                CHECK(r.tsig_error == 17);  // BADKEY
                CHECK(r.tsig_mac_size == 0);
                CHECK(r.tsig_original_id == q.id);
                CHECK(r.tsig_class == 255);
                CHECK(r.tsig_ttl == 0);
                CHECK(r.tsig_owner == (key.empty() ? "." : key + "."));
                CHECK(lower(r.tsig_algorithm) == "hmac-sha256.");
                CHECK(r.has_opt == (size != 0));
                if (size) CHECK(r.opt_flags == 0x8000);
            }
        }
    }
    // A TSIG record that is not the last one: FORMERR (RFC 8945 5.2).
    Query q;
    q.name = "mes-http.mesh";
    auto wire = build(q);
    auto tsig = tsig_record(q.id);
    auto opt = opt_record(1232);
    wire.insert(wire.end(), tsig.begin(), tsig.end());
    wire.insert(wire.end(), opt.begin(), opt.end());
    wire[11] = 2;
    auto r = parse(udp_exchange(port, wire));
    REQUIRE(r.ok);
    CHECK(r.rcode == FORMERR);
    // dig signs with the same well-known key and sees the error.
    auto out = f.dig_out({"mesh", "SOA", "-y", "hmac-sha256:.:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="});
    CHECK(out.find("status: NOTAUTH") != std::string::npos);
    CHECK(out.find("BADKEY") != std::string::npos);
}

TEST_CASE("conformance: AXFR and IXFR get NOTIMP over UDP and REFUSED over TCP")
{
    Fixture f(dual_stack());
    int port = std::stoi(f.port);
    for (std::string name : {"mesh", "mes-http.mesh", "242.127.in-addr.arpa", "example.org"}) {
        for (std::uint16_t type : {AXFR, IXFR}) {
            CAPTURE(name, type);
            Query q;
            q.name = name;
            q.type = type;
            auto udp = ask(port, q);
            CHECK(udp.rcode == NOTIMP);
            CHECK(udp.an == 0);
            CHECK(udp.qtype == type);
            auto tcp = ask(port, q, true);
            CHECK(tcp.rcode == REFUSED);
            CHECK(tcp.an == 0);
        }
    }
    auto out = output_of({"/bin/sh", "-c", kdig + " @127.0.0.1 -p " + f.port + " mesh AXFR +tcp +retry=0 +timeout=2 2>&1"});
    CHECK(out.find("REFUSED") != std::string::npos);
}

namespace {

// One of ISC genreport's probes: its flags, EDNS fields and query type (genreport.c, opts[]).
struct Probe {
    std::string name;
    std::uint16_t udp_size = 0;
    std::uint16_t edns_flags = 0;
    std::uint8_t version = 0;
    bool tcp = false, cookie = false, ignore_tc = false;
    bool tc = false, rd = false, ra = false, cd = false, ad = false, aa = false, z = false;
    std::uint8_t opcode = 0;
    std::uint16_t type = SOA;
    std::vector<std::uint8_t> options;
    bool signed_wkk = false;
};

const std::vector<std::uint8_t> opt_nsid = {0, 3, 0, 0}, opt_expire = {0, 9, 0, 0}, opt_ecs = {0, 8, 0, 4, 0, 1, 0, 0},
                                opt_cookie = {0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8}, opt_100 = {0, 100, 0, 0};

std::vector<std::uint8_t> cat(std::initializer_list<std::vector<std::uint8_t>> parts)
{
    std::vector<std::uint8_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

std::vector<Probe> genreport_probes()
{
    std::vector<Probe> p;
    auto add = [&](std::string name, auto&& set) {
        Probe x;
        x.name = std::move(name);
        set(x);
        p.push_back(std::move(x));
    };
    add("dns", [](Probe&) {});
    add("aa", [](Probe& x) { x.aa = true; });
    add("ad", [](Probe& x) { x.ad = true; });
    add("cd", [](Probe& x) { x.cd = true; });
    add("ra", [](Probe& x) { x.ra = true; });
    add("rd", [](Probe& x) { x.rd = true; });
    add("tc", [](Probe& x) { x.tc = true; });
    add("zflag", [](Probe& x) { x.z = true; });
    add("opcode", [](Probe& x) { x.opcode = 15, x.type = 0; });
    add("opcodeflg", [](Probe& x) {
        x.opcode = 15, x.type = 0;
        x.tc = x.rd = x.ra = x.cd = x.ad = x.aa = x.z = true;
    });
    add("type666", [](Probe& x) { x.type = 666; });
    add("tcp", [](Probe& x) { x.tcp = true; });
    add("edns", [](Probe& x) { x.udp_size = 4096; });
    add("edns1", [](Probe& x) { x.udp_size = 4096, x.version = 1; });
    add("edns@512", [](Probe& x) { x.udp_size = 512, x.ignore_tc = true, x.type = DNSKEY; });
    add("ednsopt", [](Probe& x) { x.udp_size = 4096, x.options = opt_100; });
    add("edns1opt", [](Probe& x) { x.udp_size = 4096, x.version = 1, x.options = opt_100; });
    add("do", [](Probe& x) { x.udp_size = 4096, x.edns_flags = 0x8000; });
    add("docd", [](Probe& x) { x.udp_size = 4096, x.edns_flags = 0x8000, x.cd = true; });
    add("edns1do", [](Probe& x) { x.udp_size = 4096, x.edns_flags = 0x8000, x.version = 1; });
    add("ednsflags", [](Probe& x) { x.udp_size = 4096, x.edns_flags = 0x0080; });
    add("optlist", [](Probe& x) {
        x.udp_size = 4096, x.cookie = true;
        x.options = cat({opt_nsid, opt_ecs, opt_expire, opt_cookie});
    });
    add("ednsnsid", [](Probe& x) { x.udp_size = 4096, x.options = opt_nsid; });
    add("ednscookie", [](Probe& x) { x.udp_size = 4096, x.cookie = true, x.options = opt_cookie; });
    add("ednsexpire", [](Probe& x) { x.udp_size = 4096, x.options = opt_expire; });
    add("ednssubnet", [](Probe& x) { x.udp_size = 4096, x.options = opt_ecs; });
    add("edns1nsid", [](Probe& x) { x.udp_size = 4096, x.version = 1, x.options = opt_nsid; });
    add("edns1cookie", [](Probe& x) { x.udp_size = 4096, x.version = 1, x.cookie = true, x.options = opt_cookie; });
    add("edns1expire", [](Probe& x) { x.udp_size = 4096, x.version = 1, x.options = opt_expire; });
    add("edns1subnet", [](Probe& x) { x.udp_size = 4096, x.version = 1, x.options = opt_ecs; });
    add("ednstcp", [](Probe& x) { x.udp_size = 512, x.edns_flags = 0x8000, x.tcp = true, x.type = DNSKEY; });
    add("bind11", [](Probe& x) { x.udp_size = 4096, x.edns_flags = 0x8000, x.cookie = true, x.options = opt_cookie; });
    add("dig11", [](Probe& x) { x.udp_size = 4096, x.cookie = true, x.rd = true, x.ad = true, x.options = opt_cookie; });
    add("dnswkk", [](Probe& x) { x.signed_wkk = true; });
    // The "TYPE" group: every listed type at the apex, without EDNS.
    for (int t : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                            29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 55,
                            56, 57, 58, 59, 60, 61, 62, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 256, 257, 258, 259,
                            1000, 32768, 32769})
        add("TYPE" + std::to_string(t), [t](Probe& x) { x.type = static_cast<std::uint16_t>(t); });
    return p;
}

std::string rcode_text(unsigned rcode)
{
    static const std::map<unsigned, std::string> names = {{0, "noerror"}, {1, "formerr"}, {2, "servfail"}, {3, "nxdomain"},
                                                          {4, "notimp"},  {5, "refused"}, {9, "notauth"},  {16, "badvers"},
                                                          {23, "badcookie"}};
    auto it = names.find(rcode);
    return it != names.end() ? it->second : "rcode" + std::to_string(rcode);
}

// genreport's verdict on one reply to a probe of `zone` by a server authoritative for it:
// "ok", or the tags it would print (its process(), for a non-recursive server).
std::string verdict(const Probe& probe, const std::string& zone, const std::vector<std::uint8_t>& wire)
{
    std::vector<std::string> tags;
    Reply r = parse(wire);
    if (!r.ok) return "malformed";
    if (probe.opcode != 0 && r.qd != 0) tags.push_back("non-empty-question-section");
    if (probe.opcode == 0 && (r.qd != 1 || r.qname != lower(zone) + "." || r.qtype != probe.type)) tags.push_back("mismatch");
    if (probe.opcode != 0 && r.an != 0) tags.push_back("non-empty-answer-section");
    if (probe.opcode != 0 && r.ns != 0) tags.push_back("non-empty-authority-section");
    if (probe.opcode != 0 && r.ar != 0) tags.push_back("non-empty-additional-section");
    if (r.opcode != probe.opcode) tags.push_back("opcode");
    bool seen_cookie = std::ranges::count(r.opt_codes, 10) > 0;
    bool rcode_tagged = false;
    if (probe.version == 0) {
        if (probe.opcode == 0 && r.rcode != 0 && (!probe.cookie || r.rcode != 23 || !seen_cookie))
            tags.push_back(rcode_text(r.rcode)), rcode_tagged = true;
        if (probe.opcode != 0 && r.rcode != NOTIMP) tags.push_back(rcode_text(r.rcode)), rcode_tagged = true;
    }
    if (r.has_tsig && r.tsig_error != 0) {
        if (!rcode_tagged && r.rcode != NOTAUTH) tags.push_back(rcode_text(r.rcode));
        tags.push_back(r.tsig_error == 17 ? "badkey" : "tsigerror" + std::to_string(r.tsig_error));
    }
    if (probe.signed_wkk && !r.has_tsig) tags.push_back("notsig");
    if (r.has_tsig && !r.tsig_last) tags.push_back("tsig-not-last");
    if (probe.version != 0 && r.rcode != BADVERS) tags.push_back(rcode_text(r.rcode));
    if (r.has_opt && r.opt_version != 0) tags.push_back("version-not-zero");
    if (r.has_opt && ((r.opt_version < probe.version && r.rcode != BADVERS) || (r.opt_version >= probe.version && r.rcode == BADVERS)))
        tags.push_back("badversion");
    if (!r.has_opt && probe.udp_size) tags.push_back("noopt");
    if (r.has_opt && probe.udp_size == 0) tags.push_back("opt");
    bool seen_soa = std::ranges::count(r.answer_types, SOA) > 0;
    if (probe.type == SOA && probe.version == 0 && !probe.ignore_tc && !seen_soa && r.rcode == NOERROR) tags.push_back("nosoa");
    if (probe.type == SOA && seen_soa && (probe.version != 0 || r.rcode != NOERROR)) tags.push_back("soa");
    if (std::ranges::count(r.opt_codes, 100) > 0) tags.push_back("echoed");
    if (!r.aa && probe.version == 0 && r.rcode == NOERROR && probe.opcode == 0) tags.push_back("noaa");
    if (r.aa && probe.opcode != 0) tags.push_back("aa");
    if (r.ra && probe.opcode != 0) tags.push_back("ra");
    if (r.rd && (probe.opcode != 0 || !probe.rd)) tags.push_back("rd");
    if (!r.rd && probe.rd && probe.opcode == 0) tags.push_back("nord");
    if (r.ad && (probe.opcode != 0 || (!probe.ad && (probe.edns_flags & 0x8000) == 0))) tags.push_back("ad");
    if (r.cd && (probe.opcode != 0 || !probe.cd)) tags.push_back("cd");
    if (r.z) tags.push_back("z");
    if (r.has_opt && (r.opt_flags & 0x7fff) != 0) tags.push_back("mbz");
    if (probe.ignore_tc && r.size > (probe.udp_size ? probe.udp_size : 512u)) tags.push_back("toobig");
    if (tags.empty()) return "ok";
    std::string out;
    for (const auto& t : tags) out += (out.empty() ? "" : ",") + t;
    return out;
}

// genreport's exchange for a probe: UDP (or TCP for the TCP probes), and TCP again after a
// truncated UDP reply unless the probe ignores TC.
std::vector<std::uint8_t> run_probe(int port, const Probe& probe, const std::string& zone)
{
    Query q;
    q.name = zone;
    q.type = probe.type;
    q.header_only = probe.opcode != 0;
    q.opcode = probe.opcode;
    q.rd = probe.rd, q.aa = probe.aa, q.tc = probe.tc, q.ra = probe.ra, q.z = probe.z, q.ad = probe.ad, q.cd = probe.cd;
    q.udp_size = probe.udp_size;
    q.edns_flags = probe.edns_flags;
    q.edns_version = probe.version;
    q.options = probe.options;
    if (probe.signed_wkk) {
        q.more_additional = tsig_record(q.id);
        q.more_additional_count = 1;
    }
    auto wire = build(q);
    auto reply = probe.tcp ? tcp_exchange(port, wire) : udp_exchange(port, wire, std::chrono::milliseconds(2000));
    if (!probe.tcp && reply.size() > 2 && (reply[2] & 0x02) && !probe.ignore_tc) reply = tcp_exchange(port, wire);
    return reply;
}

}  // namespace

TEST_CASE("conformance: ISC genreport's probes each get its verdict ok, at the zone apex and the reverse zones'")
{
    Fixture f(dual_stack());
    int port = std::stoi(f.port);
    for (const std::string& zone : std::vector<std::string>{"mesh", "242.127.in-addr.arpa", v6_apex}) {
        for (const auto& probe : genreport_probes()) {
            CAPTURE(zone, probe.name);
            auto reply = run_probe(port, probe, zone);
            REQUIRE(!reply.empty());
            // mesd knows no TSIG key, not even genreport's well-known one: NOTAUTH/BADKEY by
            // design, what genreport prints for a server without that key.
            CHECK(verdict(probe, zone, reply) == (probe.signed_wkk ? "notauth,badkey" : "ok"));
        }
    }
}

namespace {

// Knot DNS serving what mesd serves: the zone "mesh." and the reverse zones of the pools,
// with mesd's SOA fields, names and addresses, read from mesd itself.
struct Knot {
    Dir& dir;
    int port = free_dual_port();  // knotd listens on TCP too
    std::unique_ptr<Child> child;

    Knot(Dir& d, const std::map<std::string, std::string>& zones) : dir(d)
    {
        std::string conf = "server:\n    listen: 127.0.0.1@" + std::to_string(port) + "\n    rundir: " + dir.path.string() +
                           "/knot\ndatabase:\n    storage: " + dir.path.string() + "/knot\n" +
                           "template:\n  - id: default\n    storage: " + dir.path.string() + "/knot\n    semantic-checks: off\nzone:\n";
        int n = 0;
        for (const auto& [apex, text] : zones) {
            std::string file = "zone" + std::to_string(n++) + ".zone";
            dir.write("knot/" + file, text);
            conf += "  - domain: " + apex + ".\n    file: " + file + "\n";
        }
        auto path = dir.write("knot/knot.conf", conf);
        child = std::make_unique<Child>(std::vector<std::string>{"/usr/sbin/knotd", "-c", path}, (dir.path / "knot.out").string(),
                                        (dir.path / "knot.err").string());
        Query probe;
        probe.name = zones.begin()->first;
        probe.type = SOA;
        bool ready = eventually([&] {
            auto r = udp_exchange(port, build(probe), std::chrono::milliseconds(100));
            return !r.empty() && (r[3] & 0x0f) == 0;
        });
        REQUIRE(ready);
    }
};

std::string soa_text(const std::string& apex, const std::string& serial)
{
    return "$TTL 30\n" + apex + ". IN SOA localhost. hostmaster." + apex + ". " + serial + " 3600 600 86400 30\n" + apex +
           ". IN NS localhost.\n";
}

}  // namespace

TEST_CASE("conformance: mesd and Knot DNS serving the same zones answer the same probes alike")
{
    // Knot serves the names listed below; Kuma's default generators (whose zone Knot is not
    // given) are left out.
    auto options = dual_stack();
    options.extra_config = "defaultHostnameGenerators: false\n";
    Fixture f(options, extsvc_generator);
    int port = std::stoi(f.port);
    auto serial_line = f.short_answer("mesh", "SOA");
    std::istringstream fields(serial_line);
    std::string mname, rname, serial;
    fields >> mname >> rname >> serial;
    REQUIRE(!serial.empty());

    std::map<std::string, std::string> zones = {{"mesh", soa_text("mesh", serial)},
                                                {"242.127.in-addr.arpa", soa_text("242.127.in-addr.arpa", serial)},
                                                {v6_apex, soa_text(v6_apex, serial)}};
    for (std::string mes : {"mes-http", "mes-tls", "mes-big"}) {
        for (std::string zone_part : {".mesh", ".extsvc.mesh"}) {
            std::string host = mes + zone_part;
            auto v4 = f.short_answer(host, "A");
            auto v6 = f.short_answer(host, "AAAA");
            REQUIRE(!v4.empty());
            REQUIRE(!v6.empty());
            zones["mesh"] += host + ". IN A " + v4 + "\n" + host + ". IN AAAA " + v6 + "\n";
            auto r4 = vip::Address::parse(v4)->reverse_name();
            auto r6 = vip::Address::parse(v6)->reverse_name();
            zones["242.127.in-addr.arpa"] += r4 + " IN PTR " + host + ".\n";
            zones[v6_apex] += r6 + " IN PTR " + host + ".\n";
        }
    }
    Knot knot(f.dir, zones);

    auto vip4 = vip::Address::parse(f.short_answer("mes-http.mesh", "A"));
    auto vip6 = vip::Address::parse(f.short_answer("mes-http.mesh", "AAAA"));
    auto rev4 = vip4->reverse_name(), rev6 = vip6->reverse_name();
    rev4.pop_back();
    rev6.pop_back();
    auto parent4 = rev4.substr(rev4.find('.') + 1);
    auto parent6 = rev6.substr(rev6.find('.') + 1);

    struct Case {
        std::string name;
        std::uint16_t type;
    };
    std::vector<Case> cases = {
        {"mesh", SOA},          {"mesh", NS},           {"mesh", A},           {"mesh", DNSKEY},
        {"mes-http.mesh", A},   {"mes-http.mesh", AAAA}, {"mes-http.mesh", 15}, {"MES-HTTP.mesh", A},
        {"extsvc.mesh", A},     {"extsvc.mesh", TXT},   {"extsvc.mesh", AAAA}, {"mes-http.extsvc.mesh", A},
        {"nope.mesh", A},       {"nope.extsvc.mesh", AAAA}, {"x.mes-http.mesh", A},
        {"242.127.in-addr.arpa", SOA}, {"242.127.in-addr.arpa", NS}, {"242.127.in-addr.arpa", A},
        {parent4, PTR},         {parent4, A},           {rev4, PTR},           {rev4, A},
        {"200.200.242.127.in-addr.arpa", PTR}, {"x." + rev4, PTR},
        {v6_apex, SOA},         {v6_apex, NS},          {"0." + v6_apex, PTR}, {parent6, PTR},
        {rev6, PTR},            {rev6, AAAA},           {"f.f.f.f.f.f.f.f.f.f.f.f.f.f.f.f." + v6_apex, PTR},
    };
    struct Edns {
        std::uint16_t size;
        std::uint16_t flags;
    };
    int compared = 0;
    for (const auto& c : cases) {
        for (Edns e : {Edns{0, 0}, Edns{1232, 0}, Edns{1232, 0x8000}, Edns{512, 0x8000}}) {
            for (bool tcp : {false, true}) {
                CAPTURE(c.name, c.type, e.size, e.flags, tcp);
                Query q;
                q.name = c.name;
                q.type = c.type;
                q.udp_size = e.size;
                q.edns_flags = e.flags;
                auto ours = ask(port, q, tcp);
                auto theirs = ask(knot.port, q, tcp);
                CHECK(ours.rcode == theirs.rcode);
                CHECK(ours.aa == theirs.aa);
                CHECK(ours.tc == theirs.tc);
                CHECK(ours.an == theirs.an);
                CHECK(ours.ns == theirs.ns);
                CHECK(ours.ar == theirs.ar);
                CHECK(ours.authority_types == theirs.authority_types);
                CHECK(ours.has_opt == theirs.has_opt);
                CHECK((ours.opt_flags & 0x8000) == (theirs.opt_flags & 0x8000));
                ++compared;
            }
        }
    }
    // Where the two agree beyond answers: BADVERS, EDNS flags, NOTIMP for an unknown opcode
    // (Knot keeps RD there, which genreport flags, so that bit is left out) and BADKEY.
    std::vector<Query> extra;
    {
        Query q;
        q.type = SOA;
        q.udp_size = 1232;
        q.edns_version = 1;
        q.edns_flags = 0x8000;
        extra.push_back(q);
        q.edns_version = 0;
        q.edns_flags = 0x0080;
        q.options = opt_100;
        extra.push_back(q);
        Query op;
        op.header_only = true;
        op.opcode = 15;
        extra.push_back(op);
        op.udp_size = 1232;
        op.edns_flags = 0x8000;
        extra.push_back(op);
        Query s;
        s.type = SOA;
        s.more_additional = tsig_record(s.id);
        s.more_additional_count = 1;
        extra.push_back(s);
        s.udp_size = 1232;
        s.more_additional_count = 1;
        extra.push_back(s);
    }
    for (const auto& q : extra) {
        CAPTURE(q.opcode, q.edns_version, q.edns_flags, q.more_additional_count);
        auto ours = ask(port, q);
        auto theirs = ask(knot.port, q);
        CHECK(ours.rcode == theirs.rcode);
        CHECK(ours.aa == theirs.aa);
        CHECK(ours.an == theirs.an);
        CHECK(ours.ns == theirs.ns);
        CHECK(ours.ar == theirs.ar);
        CHECK(ours.has_opt == theirs.has_opt);
        CHECK(ours.opt_flags == theirs.opt_flags);
        CHECK(ours.has_tsig == theirs.has_tsig);
        CHECK(ours.tsig_error == theirs.tsig_error);
        CHECK(ours.tsig_mac_size == theirs.tsig_mac_size);
        ++compared;
    }
    CHECK(compared == static_cast<int>(cases.size()) * 8 + static_cast<int>(extra.size()));
}

TEST_CASE("conformance: a pool whose prefix ends inside an octet or a nibble: the zone is rounded down, the rest of it NXDOMAIN")
{
    MesdOptions o;
    o.vip_section = "  ipv4: 127.242.16.0/20\n  ipv6: fd00:fd02::/62\n";
    Fixture f(o);
    int port = std::stoi(f.port);
    auto vip4 = f.short_answer("mes-http.mesh", "A");
    REQUIRE(vip4.starts_with("127.242.16."));
    // 127.242.16.0/20 -> 242.127.in-addr.arpa; fd00:fd02::/62 -> the first 15 nibbles.
    const std::string apex6 = "0.0.0.0.0.0.0.2.0.d.f.0.0.d.f.ip6.arpa";
    for (const std::string& apex : std::vector<std::string>{"242.127.in-addr.arpa", apex6}) {
        Query q;
        q.name = apex;
        q.type = SOA;
        CHECK(ask(port, q).answer_types == std::vector<std::uint16_t>{SOA});
    }
    struct Case {
        std::string name;
        unsigned rcode;
    };
    for (const auto& c : std::vector<Case>{{"16.242.127.in-addr.arpa", NOERROR},  // inside the pool: an ENT
                                           {"31.242.127.in-addr.arpa", NOERROR},
                                           {"15.242.127.in-addr.arpa", NXDOMAIN},  // in the zone, outside the pool
                                           {"32.242.127.in-addr.arpa", NXDOMAIN},
                                           {"1.15.242.127.in-addr.arpa", NXDOMAIN},
                                           {"3." + apex6, NOERROR},  // nibbles 0-3 of the 16th are the pool's
                                           {"4." + apex6, NXDOMAIN},
                                           {"0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4." + apex6, NXDOMAIN}}) {
        CAPTURE(c.name);
        Query q;
        q.name = c.name;
        q.type = PTR;
        auto r = ask(port, q);
        CHECK(r.rcode == c.rcode);
        CHECK(r.aa);
        CHECK(r.an == 0);
        CHECK(r.authority_types == std::vector<std::uint16_t>{SOA});
    }
}
