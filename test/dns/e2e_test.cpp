// The running mesd answering real clients: dig, kdig and drill over UDP and TCP.
#include "test/support/dns.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

using namespace test_support;

TEST_CASE("A answers for generated hostnames through dig, kdig and drill, UDP and TCP")
{
    Fixture f;
    CHECK(f.short_answer("mes-http.mesh") == "127.242.0.1");
    CHECK(f.short_answer("mes-http.mesh", "A", "+tcp") == "127.242.0.1");
    auto full = f.dig_out({"mes-http.mesh", "A", "+norec"});
    CHECK_THAT(full, Catch::Contains("status: NOERROR"));
    CHECK_THAT(full, Catch::Contains("flags: qr aa;"));
    CHECK_THAT(full, Catch::Contains("mes-http.mesh.\t\t30\tIN\tA\t127.242.0.1"));

    auto k = output_of({kdig, "@127.0.0.1", "-p", f.port, "mes-tls.mesh", "A", "+short"});
    CHECK(k == "127.242.0.2\n");
    auto kt = output_of({kdig, "@127.0.0.1", "-p", f.port, "+tcp", "mes-tls.mesh", "A", "+short"});
    CHECK(kt == "127.242.0.2\n");
    auto d = output_of({drill, "-p", f.port, "mes-tls.mesh", "@127.0.0.1", "A"});
    CHECK_THAT(d, Catch::Contains("rcode: NOERROR"));
    CHECK_THAT(d, Catch::Matches("(.|\\n)*mes-tls\\.mesh\\.\\s+30\\s+IN\\s+A\\s+127\\.242\\.0\\.2(.|\\n)*"));
    auto dt = output_of({drill, "-t", "-p", f.port, "mes-tls.mesh", "@127.0.0.1", "A"});
    CHECK_THAT(dt, Catch::Contains("127.242.0.2"));
}

TEST_CASE("names match case-insensitively and the question is echoed as asked")
{
    Fixture f;
    auto out = f.dig_out({"MeS-HtTp.MeSh", "A"});
    CHECK_THAT(out, Catch::Contains(";MeS-HtTp.MeSh.\t\t\tIN\tA"));
    CHECK_THAT(out, Catch::Contains("127.242.0.1"));
    CHECK(f.short_answer("MES-TLS.MESH.", "A", "+tcp") == "127.242.0.2");
}

TEST_CASE("NODATA, NXDOMAIN, SOA and NS")
{
    Fixture f;
    auto nodata = f.dig_out({"mes-http.mesh", "AAAA"});
    CHECK_THAT(nodata, Catch::Contains("status: NOERROR"));
    CHECK_THAT(nodata, Catch::Contains("ANSWER: 0, AUTHORITY: 1"));
    CHECK_THAT(nodata, Catch::Contains("IN\tSOA\tlocalhost. hostmaster.mesh."));
    auto mx = f.dig_out({"mes-http.mesh", "MX"});
    CHECK_THAT(mx, Catch::Contains("ANSWER: 0, AUTHORITY: 1"));

    auto nx = f.dig_out({"nothing-here.mesh", "A"});
    CHECK_THAT(nx, Catch::Contains("status: NXDOMAIN"));
    CHECK_THAT(nx, Catch::Contains("flags: qr aa"));
    CHECK_THAT(nx, Catch::Contains("mesh.\t\t\t30\tIN\tSOA\tlocalhost. hostmaster.mesh."));
    auto deep = f.dig_out({"a.b.c.mesh", "TXT", "+tcp"});
    CHECK_THAT(deep, Catch::Contains("status: NXDOMAIN"));

    auto soa = f.short_answer("mesh", "SOA");
    CHECK_THAT(soa, Catch::StartsWith("localhost. hostmaster.mesh. "));
    CHECK_THAT(soa, Catch::EndsWith(" 3600 600 86400 30"));
    CHECK(f.short_answer("mesh", "NS") == "localhost.");
}

TEST_CASE("PTR for IPv4 and IPv6 VIPs")
{
    MesdOptions o;
    o.vip_section = "  ipv4: 127.242.0.0/16\n  ipv6: fd00:fd02::/64\n";
    Fixture f(o);
    CHECK(f.short_answer("mes-http.mesh", "AAAA") == "fd00:fd02::1");
    // Every name of the MES, in name order: Kuma's default generator's and the example's.
    CHECK(f.dig_out({"-x", "127.242.0.1", "+short"}) == "mes-http.extsvc.mesh.local.\nmes-http.mesh.\n");
    CHECK(f.dig_out({"-x", "fd00:fd02::2", "+short", "+tcp"}) == "mes-tls.extsvc.mesh.local.\nmes-tls.mesh.\n");
    auto unused = f.dig_out({"-x", "127.242.9.9"});
    CHECK_THAT(unused, Catch::Contains("status: NXDOMAIN"));
    CHECK_THAT(unused, Catch::Contains("flags: qr aa"));
    // Outside the pools the reverse name is not ours: forwarding is off, so REFUSED.
    CHECK_THAT(f.dig_out({"-x", "192.0.2.1"}), Catch::Contains("status: REFUSED"));
}

TEST_CASE("TXT describes the MES, one string per fact")
{
    Fixture f;
    auto txt = f.short_answer("mes-tls.mesh", "TXT");
    CHECK(txt == "\"mes=default/mes-tls\" \"port=443\" \"protocol=tcp\" \"endpoint=127.0.0.1:8443\" "
                 "\"endpoint=backup.example:443 priority=1\" \"tls=enabled mode=SkipSAN sni=tls.example\"");
    auto http = f.short_answer("mes-http.mesh", "TXT");
    CHECK_THAT(http, Catch::Contains("\"protocol=http\""));
    CHECK_THAT(http, Catch::Contains("\"tls=disabled\""));
}

TEST_CASE("ANY is answered minimally")
{
    Fixture f;
    auto any = f.dig_out({"mes-http.mesh", "ANY"});
    CHECK_THAT(any, Catch::Contains("ANSWER: 1,"));
    CHECK_THAT(any, Catch::Contains("IN\tA\t127.242.0.1"));
}

TEST_CASE("EDNS: our size echoed, truncation forced and avoided, BADVERS")
{
    Fixture f;
    auto edns = f.dig_out({"mes-http.mesh", "A", "+bufsize=4096"});
    CHECK_THAT(edns, Catch::Contains("; EDNS: version: 0, flags:; udp: 1232"));
    // Without EDNS the 20-endpoint TXT does not fit 512 bytes: TC, no records.
    auto small = f.dig_out({"mes-big.mesh", "TXT", "+noedns", "+ignore", "+norec"});
    CHECK_THAT(small, Catch::Contains("flags: qr aa tc;"));
    CHECK_THAT(small, Catch::Contains("ANSWER: 0,"));
    // dig retries over TCP by itself and gets everything.
    auto retried = f.dig_out({"mes-big.mesh", "TXT", "+noedns"});
    CHECK_THAT(retried, Catch::Contains("ANSWER: 1,"));
    CHECK_THAT(retried, Catch::Contains("(TCP)"));
    // A large enough EDNS size avoids truncation over UDP.
    auto big = f.dig_out({"mes-big.mesh", "TXT", "+bufsize=4096", "+ignore", "+norec"});
    CHECK_THAT(big, Catch::Contains("flags: qr aa;"));
    CHECK_THAT(big, Catch::Contains("ANSWER: 1,"));
    CHECK_THAT(big, Catch::Contains("endpoint-19.backends.example.com:8080"));
    auto kd = output_of({kdig, "@127.0.0.1", "-p", f.port, "+bufsize=512", "+ignoretc", "mes-big.mesh", "TXT"});
    CHECK_THAT(kd, Catch::Contains("TC"));
    auto badvers = f.dig_out({"mes-http.mesh", "A", "+edns=1", "+noednsnegotiation"});
    CHECK_THAT(badvers, Catch::Contains("status: BADVERS"));
}

TEST_CASE("UDP answers larger than the link takes unfragmented come back truncated, with the OPT record")
{
    // A namespace whose loopback carries at most 1280 bytes per packet, and an EDNS size that
    // allows more: the 40-endpoint TXT answer (about 2 KB) would have to be fragmented.
    Namespace ns("mesd-mtu");
    REQUIRE(ns.in({"/usr/sbin/ip", "link", "set", "lo", "mtu", "1280"}).exit_code == 0);
    MesdOptions o;
    o.wrapper = ns.exec;
    o.dns_section = "  ednsUdpSize: 4096\n  forward:\n    enabled: false\n";
    Fixture f(o, big_mes("mes-huge", 40));
    auto cut = f.dig_out(ns, {"mes-huge.mesh", "TXT", "+bufsize=4096", "+ignore", "+norec"});
    CHECK_THAT(cut, Catch::Contains("flags: qr aa tc;"));
    CHECK_THAT(cut, Catch::Contains("ANSWER: 0,"));
    CHECK_THAT(cut, Catch::Contains("; EDNS: version: 0, flags:; udp: 4096"));
    // dig's own retry over TCP gets the whole answer.
    auto retried = f.dig_out(ns, {"mes-huge.mesh", "TXT", "+bufsize=4096", "+norec"});
    CHECK_THAT(retried, Catch::Contains("ANSWER: 1,"));
    CHECK_THAT(retried, Catch::Contains("endpoint-39.backends.example.com:8080"));
    CHECK_THAT(retried, Catch::Contains("(TCP)"));
    // An answer that fits the link still arrives whole over UDP.
    auto fits = f.dig_out(ns, {"mes-big.mesh", "TXT", "+bufsize=4096", "+ignore", "+norec"});
    CHECK_THAT(fits, Catch::Contains("flags: qr aa;"));
    CHECK_THAT(fits, Catch::Contains("ANSWER: 1,"));
    auto metrics = ns.in({"/usr/bin/curl", "-s", "http://127.0.0.1:" + std::to_string(f.mesd->admin_port()) + "/metrics"}).out;
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_truncated_total 2\n"));
}

TEST_CASE("malformed and unusual packets")
{
    Fixture f;
    int port = f.mesd->dns_port();
    // Too short for a header: dropped.
    CHECK(udp_exchange(port, {0x01, 0x02, 0x03}).empty());
    // A response (QR=1) is never answered.
    CHECK(udp_exchange(port, raw_query("mes-http.mesh", 0x81)).empty());
    // Two questions: FORMERR.
    auto two = udp_exchange(port, raw_query("mes-http.mesh", 0x01, 2));
    REQUIRE(two.size() >= 12);
    CHECK((two[3] & 0x0f) == 1);
    CHECK(two[0] == 0x12);
    CHECK(two[1] == 0x34);
    // A header with a question that runs off the end: FORMERR.
    auto cut = raw_query("mes-http.mesh");
    cut.resize(cut.size() - 3);
    auto formerr = udp_exchange(port, cut);
    REQUIRE(formerr.size() >= 12);
    CHECK((formerr[3] & 0x0f) == 1);
    // Opcode NOTIFY (4): NOTIMP.
    auto notify = udp_exchange(port, raw_query("mes-http.mesh", static_cast<std::uint8_t>(4 << 3)));
    REQUIRE(notify.size() >= 12);
    CHECK((notify[3] & 0x0f) == 4);
    // A datagram larger than any query (5,000 bytes): dropped, and mesd reads on.
    auto huge = raw_query("mes-http.mesh");
    huge.resize(5000, 0);
    CHECK(udp_exchange(port, huge).empty());
    // Still answering after all that.
    CHECK(f.short_answer("mes-http.mesh") == "127.242.0.1");
    auto metrics = f.mesd->admin_get("/metrics");
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_dropped_total 3\n"));
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_replies_total{rcode=\"FORMERR\"} 2\n"));
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_replies_total{rcode=\"NOTIMP\"} 1\n"));
}

TEST_CASE("TCP: framing fed one byte at a time, pipelined queries, idle timeout")
{
    MesdOptions o;
    o.dns_section = "  tcpIdleTimeout: 300ms\n  forward:\n    enabled: false\n";
    Fixture f(o);
    int fd = tcp_connect(f.mesd->dns_port());
    auto stream = framed({raw_query("mes-http.mesh"), raw_query("mes-tls.mesh"), raw_query("nothing.mesh")});
    for (auto byte : stream) REQUIRE(::send(fd, &byte, 1, 0) == 1);
    auto rcodes = read_replies(fd, 3);
    CHECK(rcodes == std::vector<int>{0, 0, 3});
    // Idle for longer than tcpIdleTimeout: the server closes the connection.
    pollfd p{fd, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 3000) == 1);
    std::uint8_t b;
    CHECK(::recv(fd, &b, 1, 0) == 0);
    ::close(fd);
}

TEST_CASE("names outside the zones are refused when forwarding is off")
{
    Fixture f;
    auto out = f.dig_out({"example.org", "A"});
    CHECK_THAT(out, Catch::Contains("status: REFUSED"));
    CHECK_THAT(out, !Catch::Contains("flags: qr aa"));
}

TEST_CASE("store changes show within a second and a bad --conf-dir file keeps the last good state")
{
    Fixture f;
    auto mesctl = std::vector<std::string>{MESCTL_PATH, "--config", f.mesd->config()};
    auto extra = f.dir.write("extra.yaml", "type: MeshExternalService\nname: mes-live\nspec:\n  match: {port: 80}\n");
    auto apply = mesctl;
    apply.insert(apply.end(), {"apply", "-f", extra});
    auto started = std::chrono::steady_clock::now();
    REQUIRE(run(apply).exit_code == 0);
    std::string answer;
    while (std::chrono::steady_clock::now() - started < std::chrono::seconds(1)) {
        answer = f.short_answer("mes-live.mesh");
        if (!answer.empty()) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    CHECK_THAT(answer, Catch::StartsWith("127.242.0."));

    auto del = mesctl;
    del.insert(del.end(), {"delete", "mes", "mes-live"});
    started = std::chrono::steady_clock::now();
    REQUIRE(run(del).exit_code == 0);
    std::string status;
    while (std::chrono::steady_clock::now() - started < std::chrono::seconds(1)) {
        status = f.dig_out({"mes-live.mesh", "A"});
        if (status.find("NXDOMAIN") != std::string::npos) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    CHECK_THAT(status, Catch::Contains("status: NXDOMAIN"));

    // A broken file in the conf dir: the old answers stay, the error is logged and counted.
    f.dir.write("resources/broken.yaml", "type: MeshExternalService\nname: broken\nspec:\n  match: {port: 0}\n");
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline &&
           f.mesd->admin_get("/metrics").find("mesd_conf_dir_errors_total 1") == std::string::npos)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK_THAT(f.mesd->admin_get("/metrics"), Catch::Contains("mesd_conf_dir_errors_total 1\n"));
    CHECK_THAT(f.mesd->log(), Catch::Contains("broken.yaml:4:17: MeshExternalService default/broken: spec.match.port"));
    CHECK(f.short_answer("mes-http.mesh") == "127.242.0.1");
    // Fixed: applied, with the new MES answering.
    f.dir.write("resources/broken.yaml", "type: MeshExternalService\nname: fixed\nspec:\n  match: {port: 81}\n");
    deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    std::string fixed;
    while (std::chrono::steady_clock::now() < deadline && (fixed = f.short_answer("fixed.mesh")).empty())
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK_THAT(fixed, Catch::StartsWith("127.242.0."));
}

TEST_CASE("admin endpoint: metrics, readiness and the live table")
{
    Fixture f;
    f.short_answer("mes-http.mesh");
    f.short_answer("nothing.mesh");
    auto metrics = f.mesd->admin_get("/metrics");
    CHECK_THAT(metrics, Catch::StartsWith("HTTP/1.1 200 OK\r\n"));
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_queries_total{qtype=\"A\"} 2\n"));
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_replies_total{rcode=\"NXDOMAIN\"} 1\n"));
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_answered_total 2\n"));
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_latency_seconds_count 2\n"));
    CHECK_THAT(metrics, Catch::Contains("mesd_vips_in_use 3\n"));
    CHECK_THAT(metrics, Catch::Contains("mesd_store_generation "));
    CHECK_THAT(f.mesd->admin_get("/ready"), Catch::StartsWith("HTTP/1.1 200 OK"));
    auto config = f.mesd->admin_get("/config");
    CHECK_THAT(config, Catch::Contains("\"hostname\": \"mes-http.mesh\",\n      \"ipv4\": \"127.242.0.1\",\n      \"mesh\": \"default\",\n      \"name\": \"mes-http\""));
    CHECK_THAT(f.mesd->admin_get("/nope"), Catch::StartsWith("HTTP/1.1 404"));
}

TEST_CASE("SIGTERM stops mesd cleanly")
{
    Fixture f;
    CHECK(f.short_answer("mes-http.mesh") == "127.242.0.1");
    CHECK(f.mesd->stop() == 0);
    auto log = f.mesd->log();
    CHECK_THAT(log, Catch::Contains("msg=stopping signal=SIGTERM"));
    CHECK_THAT(log, Catch::Contains("msg=stopped"));
}

TEST_CASE("configuration errors stop mesd before it starts")
{
    Dir dir;
    auto bad = dir.write("bad.yaml", "dns:\n  listen: [\"nowhere\"]\n");
    auto r = run({MESD_PATH, "--config", bad});
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Catch::Contains("bad.yaml:2:12: dns.listen[0]: must be ADDRESS:PORT with an IP address"));
    CHECK(run({MESD_PATH, "--bogus"}).exit_code == 2);
}


TEST_CASE("forwarding to a real upstream: answers, and TCP after a truncated answer")
{
    Dir dir;
    Dnsmasq upstream(dir.path);
    Fixture f(forwarding({upstream.port}));
    CHECK(f.short_answer("www.fwd.test") == "127.0.0.77");
    CHECK(f.short_answer("www.fwd.test", "A", "+tcp") == "127.0.0.77");
    // Mesh names are still ours.
    CHECK(f.short_answer("mes-http.mesh") == "127.242.0.1");
    // With room for 4096 bytes the client gets the whole answer over UDP.
    auto big = f.dig_out({"big.fwd.test", "TXT", "+bufsize=4096", "+ignore"});
    CHECK_THAT(big, Catch::Contains("status: NOERROR"));
    CHECK_THAT(big, Catch::Contains(std::string(60, 'l')));
    auto metrics = f.mesd->admin_get("/metrics");
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_forwarded_total 3\n"));
    // Without EDNS the upstream truncates: mesd asks it again over TCP, gives the client
    // (512 bytes) TC, and the client's own TCP retry gets everything.
    auto small = f.dig_out({"big.fwd.test", "TXT", "+noedns"});
    CHECK_THAT(small, Catch::Contains(std::string(60, 'l')));
    CHECK_THAT(small, Catch::Contains("(TCP)"));
    metrics = f.mesd->admin_get("/metrics");
    // Twice: once for the UDP query, once for the client's TCP retry (forwarded without EDNS).
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_upstream_tcp_retries_total 2\n"));
    CHECK_THAT(metrics, Catch::Contains("mesd_dns_truncated_total 1\n"));
    // An EDNS client with room for 512 bytes: TC, and the OPT record kept (RFC 6891 section 7).
    auto edns_small = f.dig_out({"big.fwd.test", "TXT", "+bufsize=512", "+ignore"});
    CHECK_THAT(edns_small, Catch::Contains("flags: qr aa tc rd ra;"));
    CHECK_THAT(edns_small, Catch::Contains("ANSWER: 0,"));
    CHECK_THAT(edns_small, Catch::Contains("; EDNS: version: 0"));
}

TEST_CASE("a forwarded answer larger than the link takes unfragmented comes back truncated, with the OPT record")
{
    // As for mesd's own answers: a namespace whose loopback carries at most 1280 bytes per
    // packet, and a 1.5 KB TXT answer from the upstream, which mesd fetches over TCP.
    Namespace ns("mesd-fwd-mtu");
    REQUIRE(ns.in({"/usr/sbin/ip", "link", "set", "lo", "mtu", "1280"}).exit_code == 0);
    Dir dir;
    Dnsmasq upstream(dir.path, ns.exec, 5353, 24);
    MesdOptions o;
    o.wrapper = ns.exec;
    o.dns_section = "  ednsUdpSize: 4096\n  forward:\n    upstreams: [\"127.0.0.1:5353\"]\n";
    Fixture f(o);
    auto cut = f.dig_out(ns, {"big.fwd.test", "TXT", "+bufsize=4096", "+ignore"});
    CHECK_THAT(cut, Catch::Contains("flags: qr aa tc rd ra;"));
    CHECK_THAT(cut, Catch::Contains("ANSWER: 0,"));
    CHECK_THAT(cut, Catch::Contains("; EDNS: version: 0"));
    auto retried = f.dig_out(ns, {"big.fwd.test", "TXT", "+bufsize=4096"});
    CHECK_THAT(retried, Catch::Contains(std::string(60, 'x')));  // the 24th string
    CHECK_THAT(retried, Catch::Contains("(TCP)"));
    // A forwarded answer that fits still arrives whole over UDP.
    auto fits = f.dig_out(ns, {"www.fwd.test", "A", "+bufsize=4096", "+ignore"});
    CHECK_THAT(fits, Catch::Contains("127.0.0.77"));
    CHECK_THAT(fits, Catch::Contains("flags: qr aa rd ra;"));
}

TEST_CASE("an upstream that never answers: the next one, then SERVFAIL within the timeout")
{
    FakeUpstream silent(nullptr);
    Dir dir;
    Dnsmasq real(dir.path);
    {
        Fixture f(forwarding({silent.port, real.port}));
        auto started = std::chrono::steady_clock::now();
        CHECK(f.short_answer("www.fwd.test") == "127.0.0.77");
        CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(2));
        CHECK_THAT(f.mesd->admin_get("/metrics"), Catch::Contains("mesd_dns_upstream_timeouts_total 1\n"));
    }
    Fixture only_silent(forwarding({silent.port}));
    auto started = std::chrono::steady_clock::now();
    auto out = only_silent.dig_out({"www.fwd.test", "A"});
    auto took = std::chrono::steady_clock::now() - started;
    CHECK_THAT(out, Catch::Contains("status: SERVFAIL"));
    CHECK(took < std::chrono::milliseconds(1500));
    CHECK_THAT(only_silent.mesd->admin_get("/metrics"), Catch::Contains("mesd_dns_upstream_failures_total 1\n"));
}

TEST_CASE("answers with the wrong ID or question are ignored")
{
    FakeUpstream spoofing([](int fd, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
        std::uint16_t id = static_cast<std::uint16_t>((q[0] << 8) | q[1]);
        auto send = [&](const std::vector<std::uint8_t>& r) {
            ::sendto(fd, r.data(), r.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
        };
        send(a_reply(q, static_cast<std::uint16_t>(id + 1), 66));  // wrong ID
        auto other = a_reply(raw_query("other.fwd.test"), id, 67);  // right ID, other question
        send(other);
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        send(a_reply(q, id, 55));  // the real answer
    });
    Fixture f(forwarding({spoofing.port}, "1s"));
    CHECK(f.short_answer("www.fwd.test") == "127.0.0.55");
    CHECK_THAT(f.mesd->admin_get("/metrics"), Catch::Contains("mesd_dns_upstream_mismatched_total 2\n"));
}

TEST_CASE("clients outside the allow list are refused")
{
    Dir dir;
    Dnsmasq upstream(dir.path);
    auto o = forwarding({upstream.port});
    o.dns_section += "    allow: [\"10.0.0.0/8\"]\n";
    Fixture f(o);
    CHECK_THAT(f.dig_out({"www.fwd.test", "A"}), Catch::Contains("status: REFUSED"));
    CHECK(f.short_answer("mes-http.mesh") == "127.242.0.1");
}

TEST_CASE("the glibc resolver of a network namespace pointed at mesd")
{
    // A namespace of our own: its loopback is private, so mesd can take port 53 there.
    std::string ns = "mesd-t" + std::to_string(::getpid());
    REQUIRE(run({"/usr/sbin/ip", "netns", "add", ns}).exit_code == 0);
    struct Cleanup {
        std::string ns;
        ~Cleanup()
        {
            run({"/usr/sbin/ip", "netns", "del", ns});
            std::filesystem::remove_all("/etc/netns/" + ns);
        }
    } cleanup{ns};
    std::vector<std::string> in_ns = {"/usr/sbin/ip", "netns", "exec", ns};
    auto up = in_ns;
    up.insert(up.end(), {"/usr/sbin/ip", "link", "set", "lo", "up"});
    REQUIRE(run(up).exit_code == 0);
    std::filesystem::create_directories("/etc/netns/" + ns);
    std::ofstream("/etc/netns/" + ns + "/resolv.conf") << "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n";

    Dir dir;
    Dnsmasq upstream(dir.path, in_ns, 5353);
    MesdOptions o;
    o.wrapper = in_ns;
    o.dns_listen = "127.0.0.1:53";
    o.dns_section = "  forward:\n    upstreams: [\"127.0.0.1:5353\"]\n";
    Fixture f(o);

    auto getent = [&](const std::string& name) {
        auto argv = in_ns;
        argv.insert(argv.end(), {"/usr/bin/getent", "hosts", name});
        return run(argv);
    };
    auto mesh = getent("mes-http.mesh");
    CHECK(mesh.exit_code == 0);
    CHECK_THAT(mesh.out, Catch::StartsWith("127.242.0.1"));
    CHECK_THAT(mesh.out, Catch::Contains("mes-http.mesh"));
    auto forwarded = getent("www.fwd.test");
    CHECK(forwarded.exit_code == 0);
    CHECK_THAT(forwarded.out, Catch::StartsWith("127.0.0.77"));
    CHECK(getent("missing.mesh").exit_code == 2);  // NXDOMAIN: not found
}

TEST_CASE("limits: TCP clients beyond tcpMaxClients are closed, upstream queries beyond maxInFlight fail fast")
{
    FakeUpstream silent(nullptr);
    MesdOptions o = forwarding({silent.port}, "2s");
    o.dns_section = "  tcpMaxClients: 2\n" + o.dns_section + "    maxInFlight: 1\n";
    Fixture f(o);
    // Each connection accepted before the next is made: with several workers each has an
    // accept queue of its own, and connections made at the same instant are accepted in no
    // set order, so "oldest" would mean nothing.
    int accepted = 0;
    auto connect = [&]() {
        int fd = tcp_connect(f.mesd->dns_port());
        ++accepted;
        CHECK(eventually([&] {
            return f.mesd->admin_get("/metrics").find("mesd_dns_tcp_connections_total " + std::to_string(accepted) + "\n") !=
                   std::string::npos;
        }, std::chrono::seconds(2)));
        return fd;
    };
    int a = connect(), b = connect(), c = connect();
    pollfd p{a, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 2000) == 1);
    std::uint8_t byte;
    CHECK(::recv(a, &byte, 1, 0) == 0);  // the third takes the place of the oldest idle one
    CHECK_THAT(f.mesd->admin_get("/metrics"), Catch::Contains("mesd_dns_tcp_evicted_total 1\n"));
    ::close(a);
    ::close(b);
    ::close(c);

    // One query waits on the silent upstream; the next cannot be forwarded and fails at once.
    Child waiting({dig, "@127.0.0.1", "-p", f.port, "+tries=1", "+time=5", "slow.example", "A"},
                  (f.dir.path / "wait.out").string());
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::chrono::steady_clock::now() < deadline &&
           f.mesd->admin_get("/metrics").find("mesd_dns_forward_in_flight 1\n") == std::string::npos)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto started = std::chrono::steady_clock::now();
    auto second = f.dig_out({"another.example", "A"});
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::milliseconds(500));
    CHECK_THAT(second, Catch::Contains("status: SERVFAIL"));
    CHECK_THAT(f.mesd->admin_get("/metrics"), Catch::Contains("mesd_dns_forward_overload_total 1\n"));
    CHECK(waiting.wait() == 0);
    std::ifstream in(f.dir.path / "wait.out");
    std::stringstream waited;
    waited << in.rdbuf();
    CHECK_THAT(waited.str(), Catch::Contains("status: SERVFAIL"));  // after the 2 s timeout
}

TEST_CASE("a TCP client that leaves before its forwarded answer, and SIGTERM with a forward in flight")
{
    FakeUpstream slow([](int fd, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        auto r = a_reply(q, static_cast<std::uint16_t>((q[0] << 8) | q[1]), 44);
        ::sendto(fd, r.data(), r.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
    });
    Fixture f(forwarding({slow.port}, "2s"));
    {
        int fd = tcp_connect(f.mesd->dns_port());
        auto stream = framed({raw_query("gone.example")});
        REQUIRE(::send(fd, stream.data(), stream.size(), 0) == static_cast<ssize_t>(stream.size()));
        ::close(fd);  // gone before the upstream answers
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    CHECK(f.short_answer("later.example") == "127.0.0.44");
    CHECK(f.short_answer("mes-http.mesh") == "127.242.0.1");

    // A query waiting upstream when SIGTERM arrives is still answered, then mesd exits 0.
    Child waiting({dig, "@127.0.0.1", "-p", f.port, "+tries=1", "+time=3", "+tcp", "inflight.example", "A", "+short"},
                  (f.dir.path / "inflight.out").string());
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::chrono::steady_clock::now() < deadline &&
           f.mesd->admin_get("/metrics").find("mesd_dns_forward_in_flight 1\n") == std::string::npos)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(f.mesd->stop() == 0);
    CHECK(waiting.wait() == 0);
    std::ifstream in(f.dir.path / "inflight.out");
    std::stringstream got;
    got << in.rdbuf();
    CHECK(got.str() == "127.0.0.44\n");
}

TEST_CASE("UDP: a burst of 200 queries from one socket gets 200 answers, each to its query")
{
    Fixture f;
    int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    int size = 1 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(f.mesd->dns_port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // More than several batches' worth, sent before reading anything; hits, NXDOMAIN and a
    // name the general path answers (the apex SOA) mixed, each with its own ID.
    // (200 fit in the socket buffers of both sides even if mesd reads none until the last.)
    constexpr int count = 200;
    const std::vector<std::string> names = {"mes-http.mesh", "nothing.mesh", "mesh"};
    for (int i = 0; i < count; ++i) {
        auto q = raw_query(names[static_cast<std::size_t>(i % 3)]);
        if (i % 3 == 2) q[q.size() - 3] = 6;  // SOA
        q[0] = static_cast<std::uint8_t>(i >> 8);
        q[1] = static_cast<std::uint8_t>(i & 0xff);
        REQUIRE(::sendto(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr*>(&addr), sizeof addr) ==
                static_cast<ssize_t>(q.size()));
    }
    std::set<int> ids;
    int wrong = 0;
    std::vector<std::uint8_t> reply(4096);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (ids.size() < count && std::chrono::steady_clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 1000) != 1) break;
        auto n = ::recv(fd, reply.data(), reply.size(), 0);
        if (n < 12) continue;
        int id = reply[0] << 8 | reply[1];
        ids.insert(id);
        int expect_rcode = id % 3 == 1 ? 3 : 0;
        int expect_answers = id % 3 == 1 ? 0 : 1;
        if ((reply[3] & 0x0f) != expect_rcode || reply[7] != expect_answers) ++wrong;
    }
    ::close(fd);
    CHECK(ids.size() == count);
    CHECK(wrong == 0);
}

TEST_CASE("TCP: twenty queries in one write get twenty answers")
{
    Fixture f;
    int fd = tcp_connect(f.mesd->dns_port());
    std::vector<std::vector<std::uint8_t>> queries;
    for (int i = 0; i < 20; ++i) queries.push_back(raw_query(i % 2 ? "mes-http.mesh" : "nothing.mesh"));
    auto stream = framed(queries);
    REQUIRE(::send(fd, stream.data(), stream.size(), 0) == static_cast<ssize_t>(stream.size()));
    auto rcodes = read_replies(fd, 20);
    REQUIRE(rcodes.size() == 20);
    for (int i = 0; i < 20; ++i) CHECK(rcodes[static_cast<std::size_t>(i)] == (i % 2 ? 0 : 3));  // in order
    ::close(fd);
}
