// No query type is slower to answer than another, and no query type, rcode or opcode a
// client sends can grow mesd's metrics: through the running binary.
#include "dns/dns.hpp"
#include "test/support/dns.hpp"

#include "test/support/ldns_query.hpp"
#include "test/support/resources.hpp"

#include <catch2/catch.hpp>

#include <ldns/ldns.h>


using namespace test_support;

namespace {

// The value of one metric line ("name{label} value"), or -1 when absent.
long long metric(const std::string& page, const std::string& series)
{
    auto at = page.find("\n" + series + " ");
    if (at == std::string::npos) return -1;
    return std::stoll(page.substr(at + series.size() + 2));
}

std::vector<std::uint8_t> query(const std::string& name, ldns_rr_type type, std::uint16_t edns_size = 0)
{
    return test_support::ldns_query(name, type, {.edns_size = edns_size, .id = 0x4d45});
}

// One framed query over TCP and its reply.
std::vector<std::uint8_t> tcp_exchange(int port, const std::vector<std::uint8_t>& q)
{
    int fd = tcp_connect(port);
    auto stream = framed({q});
    REQUIRE(::write(fd, stream.data(), stream.size()) == static_cast<ssize_t>(stream.size()));
    std::vector<std::uint8_t> in;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (std::chrono::steady_clock::now() < deadline) {
        if (in.size() >= 2 && in.size() >= 2 + ((static_cast<std::size_t>(in[0]) << 8) | in[1])) break;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 200) != 1) continue;
        std::uint8_t buf[65536];
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        in.insert(in.end(), buf, buf + n);
    }
    ::close(fd);
    REQUIRE(in.size() >= 2);
    return {in.begin() + 2, in.end()};
}

std::string reverse_of(const std::string& address) { return vip::Address::parse(address)->reverse_name(); }

// A second generator: every MES has two hostnames, so a VIP's PTR answer has two records.
const std::string alt_generator =
    "---\ntype: HostnameGenerator\nname: alt\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.alt.mesh\"\n";

MesdOptions dual_stack()
{
    MesdOptions o;
    o.vip_section = "  ipv4: 127.242.0.0/16\n  ipv6: fd00:fd02::/64\n";
    return o;
}

}  // namespace

TEST_CASE("TXT and PTR through mesd are the general path's bytes, written by the fast path")
{
    // mes-big's TXT answer is over 512 bytes and under 1232; mes-huge's over 1232.
    Fixture f(dual_stack(), alt_generator + big_mes("mes-huge", 26));
    int port = f.mesd->dns_port();
    // The general path over the same store, read from this process (LMDB readers share it).
    auto db = store::Store::open(store::Options{(f.dir.path / "mesd" / "data").string()});
    REQUIRE(db.has_value());
    dns::StoreSource source(**db, {"default"});
    REQUIRE(source.refresh().has_value());
    dns::Settings plain;
    plain.fast_path = false;
    dns::Responder general(plain);
    auto expected = [&](const std::vector<std::uint8_t>& q, bool tcp) {
        return general.answer_general(q, dns::Client{tcp, false}, source).wire;
    };

    auto v4 = f.short_answer("mes-tls.mesh"), v6 = f.short_answer("mes-tls.mesh", "AAAA");
    REQUIRE(v4 == "127.242.0.2");
    REQUIRE(v6.starts_with("fd00:fd02::"));
    auto before = f.mesd->admin_get("/metrics");

    // Each fits its reply: the fast path writes it.
    std::vector<std::vector<std::uint8_t>> fits = {
        query("mes-http.mesh.", LDNS_RR_TYPE_TXT),
        query("MES-TLS.Alt.Mesh.", LDNS_RR_TYPE_TXT, 1232),
        query("mes-big.mesh.", LDNS_RR_TYPE_TXT, 1232),  // over 512, under 1232
        query("nope.mesh.", LDNS_RR_TYPE_TXT),
        query(reverse_of(v4), LDNS_RR_TYPE_PTR),
        query(reverse_of(v6), LDNS_RR_TYPE_PTR, 1232),
        query(reverse_of("127.242.0.1"), LDNS_RR_TYPE_PTR),
        query(reverse_of("127.242.200.1"), LDNS_RR_TYPE_PTR),  // in the pool, unused: NXDOMAIN and SOA
        query(reverse_of("fd00:fd02::ffff"), LDNS_RR_TYPE_PTR),
    };
    for (const auto& q : fits) {
        auto reply = udp_exchange(port, q);
        INFO("query of " << q.size() << " bytes, reply " << reply.size());
        REQUIRE_FALSE(reply.empty());
        CHECK(reply == expected(q, false));
    }
    // Too large for 512 bytes: TC from the general path, then the whole answer over TCP.
    auto big = query("mes-big.mesh.", LDNS_RR_TYPE_TXT);
    auto cut = udp_exchange(port, big);
    REQUIRE(cut.size() > 3);
    CHECK((cut[2] & 0x02) != 0);
    CHECK(cut == expected(big, false));
    auto whole = tcp_exchange(port, big);
    CHECK(whole.size() > 512);
    CHECK(whole == expected(big, true));
    // Too large for our EDNS size: TC with the OPT record; whole over TCP.
    auto huge = query("mes-huge.mesh.", LDNS_RR_TYPE_TXT, 4096);
    cut = udp_exchange(port, huge);
    REQUIRE(cut.size() > 3);
    CHECK((cut[2] & 0x02) != 0);
    CHECK(cut == expected(huge, false));
    whole = tcp_exchange(port, huge);
    CHECK(whole.size() > 1232);
    CHECK(whole == expected(huge, true));

    auto after = f.mesd->admin_get("/metrics");
    // Every query but the two truncated ones was written by the fast path.
    CHECK(metric(after, "mesd_dns_answered_fast_total") - metric(before, "mesd_dns_answered_fast_total") ==
          static_cast<long long>(fits.size()) + 2);
    CHECK(metric(after, "mesd_dns_queries_total{qtype=\"TXT\"}") == 8);
    CHECK(metric(after, "mesd_dns_queries_total{qtype=\"PTR\"}") == 5);
    CHECK(metric(after, "mesd_dns_truncated_total") == 2);

    // The answers themselves, as dig reads them.
    // In the status's order: by generator name.
    CHECK(f.short_answer(reverse_of(v4), "PTR") == "mes-tls.alt.mesh.\nmes-tls.extsvc.mesh.local.\nmes-tls.mesh.");  // Kuma's default generator's too
    CHECK(f.short_answer(reverse_of(v6), "PTR") == "mes-tls.alt.mesh.\nmes-tls.extsvc.mesh.local.\nmes-tls.mesh.");
    CHECK(f.short_answer("mes-tls.mesh", "TXT") ==
          "\"mes=default/mes-tls\" \"port=443\" \"protocol=tcp\" \"endpoint=127.0.0.1:8443\" "
          "\"endpoint=backup.example:443 priority=1\" \"tls=enabled mode=SkipSAN sni=tls.example\"");
}

TEST_CASE("one query of every QTYPE keeps the metrics page small: the unknown ones count as other")
{
    Fixture f;
    auto before = f.mesd->admin_get("/metrics");

    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(f.mesd->dns_port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    int buffer = 1 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    // Types 0 to 65535 for a name inside the zone (NXDOMAIN, whatever the type), at most
    // `window` outstanding so that no socket buffer overflows (a datagram costs a buffer about
    // a kilobyte, however small); bounded by a deadline.
    auto q = raw_query("nope.mesh");
    constexpr int types = 65536, window = 64;
    int sent = 0, received = 0;
    std::vector<bool> seen(types);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (received < types && std::chrono::steady_clock::now() < deadline) {
        while (sent < types && sent - received < window) {
            q[q.size() - 4] = static_cast<std::uint8_t>(sent >> 8);
            q[q.size() - 3] = static_cast<std::uint8_t>(sent & 0xff);
            if (::send(fd, q.data(), q.size(), 0) != static_cast<ssize_t>(q.size())) break;
            ++sent;
        }
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 200) != 1) continue;
        std::uint8_t buf[4096];
        ssize_t n;
        while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) {
            ++received;
            if (n >= 12 + 11 + 4) seen[static_cast<std::size_t>((buf[12 + 11] << 8) | buf[12 + 12])] = true;
        }
    }
    ::close(fd);
    for (std::size_t t = 0; t < seen.size(); ++t)
        if (!seen[t]) UNSCOPED_INFO("no reply for type " << t);
    REQUIRE(received == types);

    auto after = f.mesd->admin_get("/metrics");
    INFO(after.substr(0, 4000));
    CHECK(after.size() < before.size() + 2048);
    std::size_t series = 0;
    for (auto at = after.find("\nmesd_dns_queries_total{"); at != std::string::npos;
         at = after.find("\nmesd_dns_queries_total{", at + 1))
        ++series;
    CHECK(series == dns::known_qtypes.size() + 1);
    // Type 0 is not counted (a question's type of 0 is no type); each known one once, the rest
    // together.
    CHECK(metric(after, "mesd_dns_queries_total{qtype=\"A\"}") == 1);
    CHECK(metric(after, "mesd_dns_queries_total{qtype=\"CAA\"}") == 1);
    CHECK(metric(after, "mesd_dns_queries_total{qtype=\"HTTPS\"}") == 1);
    CHECK(metric(after, "mesd_dns_queries_total{qtype=\"other\"}") ==
          static_cast<long long>(types - 1 - dns::known_qtypes.size()));
    CHECK(metric(after, "mesd_dns_queries_by_opcode_total{opcode=\"QUERY\"}") == types);
    // AXFR and IXFR over UDP get NOTIMP; every other type NXDOMAIN.
    CHECK(metric(after, "mesd_dns_replies_total{rcode=\"NXDOMAIN\"}") == types - 2);
    CHECK(metric(after, "mesd_dns_replies_total{rcode=\"NOTIMP\"}") == 2);
}

TEST_CASE("every opcode is counted, those IANA has not assigned as other")
{
    Fixture f;
    for (int opcode = 0; opcode < 16; ++opcode) {
        auto reply = udp_exchange(f.mesd->dns_port(), raw_query("mes-http.mesh", static_cast<std::uint8_t>(opcode << 3)));
        REQUIRE(reply.size() >= 12);
        CHECK((reply[3] & 0x0f) == (opcode == 0 ? 0 : 4));  // NOTIMP but for QUERY
    }
    auto page = f.mesd->admin_get("/metrics");
    CHECK(metric(page, "mesd_dns_queries_by_opcode_total{opcode=\"QUERY\"}") == 1);
    CHECK(metric(page, "mesd_dns_queries_by_opcode_total{opcode=\"NOTIFY\"}") == 1);
    CHECK(metric(page, "mesd_dns_queries_by_opcode_total{opcode=\"UPDATE\"}") == 1);
    CHECK(metric(page, "mesd_dns_queries_by_opcode_total{opcode=\"other\"}") == 10);  // 3 and 7 to 15
    CHECK(metric(page, "mesd_dns_replies_total{rcode=\"NOTIMP\"}") == 15);
}

TEST_CASE("code counters: a fixed set of counters whatever codes are counted")
{
    dns::Metrics m;
    for (int code = 0; code < 65536; ++code) {
        ++m.queries_by_qtype[static_cast<std::uint16_t>(code)];
        ++m.replies_by_rcode[static_cast<std::uint16_t>(code)];
    }
    std::size_t labels = 0;
    std::uint64_t total = 0;
    m.queries_by_qtype.each([&](std::string_view, std::uint64_t n) {
        ++labels;
        total += n;
    });
    CHECK(labels == dns::known_qtypes.size() + 1);
    CHECK(total == 65536);
    CHECK(m.queries_by_qtype.other() == 65536 - dns::known_qtypes.size());
    CHECK(m.replies_by_rcode.other() == 65536 - dns::known_rcodes.size());
    CHECK(m.queries_by_qtype.label(16) == "TXT");
    CHECK(m.queries_by_qtype.label(65) == "HTTPS");
    CHECK(m.queries_by_qtype.label(258) == "other");
    CHECK(m.replies_by_rcode.label(16) == "BADVERS");
    CHECK(m.replies_by_rcode.label(12) == "other");
}

TEST_CASE("store source: a MES's TXT RDATA is built on its first question and follows the store")
{
    TempDir dir;
    auto db = store::Store::open(store::Options{(dir.path / "data").string()});
    REQUIRE(db.has_value());
    store::WriteOptions options;
    options.pools.ipv4 = "127.242.0.0/16";
    auto mes = [](std::uint16_t port, const std::string& name = "a") { return make_mes(name, port); };
    auto generator = make_generator("g", "{{ .Name }}.mesh");
    REQUIRE((*db)->apply(std::vector<conf::Resource>{generator, mes(80)}, options).has_value());
    dns::StoreSource source(**db, {"default"});
    REQUIRE(source.refresh().has_value());

    auto text = [](std::span<const std::uint8_t> rdata) { return std::string(rdata.begin(), rdata.end()); };
    auto first = source.txt_rdata("a.mesh");
    REQUIRE(first.found == dns::Source::Found::yes);
    CHECK(text(first.rdata).find("port=80") != std::string::npos);
    // The same bytes the second time: kept, not built again.
    auto again = source.txt_rdata("a.mesh");
    REQUIRE(again.found == dns::Source::Found::yes);
    CHECK(again.rdata.data() == first.rdata.data());
    CHECK(source.txt_rdata("b.mesh").found == dns::Source::Found::no);

    REQUIRE((*db)->apply(std::vector<conf::Resource>{mes(8080), mes(81, "b")}, options).has_value());
    REQUIRE(source.refresh().has_value());
    auto changed = source.txt_rdata("a.mesh");
    REQUIRE(changed.found == dns::Source::Found::yes);
    CHECK(text(changed.rdata).find("port=8080") != std::string::npos);
    // With the snapshot let go, what is kept still answers; nothing new is kept.
    source.release();
    CHECK(source.txt_rdata("a.mesh").found == dns::Source::Found::yes);
    CHECK(source.txt_rdata("b.mesh").found == dns::Source::Found::unknown);
    REQUIRE(source.refresh().has_value());
    auto b = source.txt_rdata("b.mesh");
    REQUIRE(b.found == dns::Source::Found::yes);
    CHECK(text(b.rdata).find("port=81") != std::string::npos);

    std::array<std::string_view, 4> names;
    auto hostnames = source.vip_hostnames(*vip::Address::parse("127.242.0.1"), names);
    REQUIRE(hostnames.found == dns::Source::Found::yes);
    REQUIRE(hostnames.count == 1);
    CHECK(names[0] == "a.mesh");
    CHECK(source.vip_hostnames(*vip::Address::parse("127.242.0.9"), names).found == dns::Source::Found::no);
}

TEST_CASE("an upstream's unassigned rcodes are counted as other")
{
    // Answers each query with its question, QR set, and the rcode its first label names:
    // "rcX" is rcode X - 'a'.
    FakeUpstream upstream([](int fd, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
        auto r = q;
        r[2] = static_cast<std::uint8_t>(r[2] | 0x80);
        r[3] = static_cast<std::uint8_t>(0x80 | ((q[15] - 'a') & 0x0f));
        ::sendto(fd, r.data(), r.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
    });
    Fixture f(forwarding({upstream.port}));
    for (int rcode : {0, 3, 9, 12, 13, 15}) {
        auto reply = udp_exchange(f.mesd->dns_port(), raw_query("rc" + std::string(1, static_cast<char>('a' + rcode)) + ".fwd.test"));
        REQUIRE(reply.size() >= 12);
        CHECK((reply[3] & 0x0f) == rcode);
    }
    auto page = f.mesd->admin_get("/metrics");
    CHECK(metric(page, "mesd_dns_replies_total{rcode=\"NOERROR\"}") == 1);
    CHECK(metric(page, "mesd_dns_replies_total{rcode=\"NXDOMAIN\"}") == 1);
    CHECK(metric(page, "mesd_dns_replies_total{rcode=\"NOTAUTH\"}") == 1);
    CHECK(metric(page, "mesd_dns_replies_total{rcode=\"other\"}") == 3);
    CHECK(page.find("RCODE12") == std::string::npos);
}
