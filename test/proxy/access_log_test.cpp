// The access log and the per-address endpoint figures, through the running mesd: a line per
// connection (plain, TLS, failed, refused) in logfmt and JSON, the file reopened on SIGHUP,
// and the /metrics series per endpoint address.
#include "proxy/detail/access_log.hpp"
#include "proxy/detail/endpoint_stats.hpp"
#include "test/support/access_log.hpp"
#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/metrics.hpp"
#include "test/support/net.hpp"
#include "test/support/text.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <sstream>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string openssl = "/usr/bin/openssl";
const std::string dig = "/usr/bin/dig";

const std::string generator =
    "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

// openssl s_server with -rev: each line comes back reversed.
struct TlsServer {
    int port = free_tcp_port();
    std::unique_ptr<Child> child;
    TlsServer(const Dir& dir, const KeyPair& leaf)
    {
        auto cert = dir.write("server.crt", leaf.cert_pem);
        auto key = dir.write("server.key", leaf.key_pem);
        child = std::make_unique<Child>(std::vector<std::string>{openssl, "s_server", "-accept", "127.0.0.1:" + std::to_string(port),
                                                                 "-cert", cert, "-key", key, "-rev", "-quiet"},
                                        (dir.path / "server.out").string(), (dir.path / "server.err").string());
        REQUIRE(eventually([&] { return accepting("127.0.0.1", port); }));
    }
};

std::string mes(const std::string& name, int match_port, const std::string& endpoints, const std::string& more = "")
{
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(match_port) +
           "}\n  endpoints: " + endpoints + "\n" + more;
}

std::string ep(int port) { return "{address: 127.0.0.1, port: " + std::to_string(port) + "}"; }

struct Setup {
    Dir dir;
    KeyPair ca = make_ca("access log CA");
    KeyPair leaf = make_leaf(ca, "api.test", {"DNS:api.test", "IP:127.0.0.1"});
    EchoBackend echo;
    TlsServer tls{dir, leaf};
    int down_port = free_tcp_port();  // nothing listens
    std::unique_ptr<Mesd> mesd;

    // `access_log`: the value of proxy.accessLog, @DIR@ standing for the test's directory.
    // Each test case listens on ports of its own (`base` to base + 2): ctest may run two at once.
    int base;

    Setup(std::string access_log, int base_port, const std::string& proxy_more = "") : base(base_port)
    {
        if (auto at = access_log.find("@DIR@"); at != std::string::npos) access_log.replace(at, 5, dir.path.string());
        std::string resources = generator + mes("plain", base, "[" + ep(echo.port) + "]") +
                                mes("secure", base + 1, "[" + ep(tls.port) + "]",
                                    "  tls:\n    enabled: true\n    verification:\n      serverName: api.test\n"
                                    "      caCert:\n        inlineString: |\n" +
                                        indent(ca.cert_pem, 10)) +
                                mes("down", base + 2, "[" + ep(down_port) + "]");
        dir.write("resources/all.yaml", resources);
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n  connectTimeout: 2s\n  connectAttempts: 2\n  ejectAfter: 100\n" + proxy_more +
                               "  accessLog: " + access_log + "\n";
        mesd = std::make_unique<Mesd>(dir.path / "mesd", options);
    }
    std::string vip(const std::string& name) const
    {
        auto out = output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd->dns_port()), name + ".mesh", "+short"});
        while (!out.empty() && out.back() == '\n') out.pop_back();
        return out;
    }
};

// The parsed lines of `path`, once there are at least `n` (within 5 s).
std::vector<Fields> lines_of(const std::string& path, std::size_t n, bool json)
{
    std::vector<Fields> out;
    eventually([&] { return whole_lines(file_text(path)).size() >= n; });
    for (const auto& line : whole_lines(file_text(path))) {
        INFO(line);
        auto f = json ? parse_json_line(line) : parse_logfmt(line);
        REQUIRE(f);
        out.push_back(*f);
    }
    return out;
}

const Fields* find(const std::vector<Fields>& lines, const std::string& name, const std::string& reason)
{
    for (const auto& l : lines)
        if (l.count("name") && l.at("name") == name && l.at("reason") == reason) return &l;
    return nullptr;
}

std::string field(const Fields* f, const std::string& key) { return f && f->count(key) ? f->at(key) : "<absent>"; }

// The checks both formats share: plain, TLS and failed connections.
void check_common(const std::vector<Fields>& lines, const Setup& s)
{
    const std::regex time_re(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)");
    const std::regex client_re(R"(127\.0\.0\.1:\d+)");

    auto* plain = find(lines, "plain", "client_closed");
    REQUIRE(plain);
    CHECK(std::regex_match(field(plain, "time"), time_re));
    CHECK(std::regex_match(field(plain, "client"), client_re));
    CHECK(field(plain, "mesh") == "default");
    CHECK(field(plain, "vip") == s.vip("plain") + ":" + std::to_string(s.base));
    CHECK(field(plain, "endpoint") == "127.0.0.1:" + std::to_string(s.echo.port));
    CHECK(field(plain, "address") == "127.0.0.1:" + std::to_string(s.echo.port));
    CHECK(field(plain, "bytes_up") == "6");
    CHECK(field(plain, "bytes_down") == "6");
    CHECK(field(plain, "attempts") == "1");
    CHECK(std::stoi(field(plain, "connect_ms")) >= 0);
    CHECK(std::stoi(field(plain, "total_ms")) >= std::stoi(field(plain, "connect_ms")));
    CHECK(field(plain, "tls_version") == "<absent>");

    auto* secure = find(lines, "secure", "client_closed");
    REQUIRE(secure);
    CHECK(field(secure, "vip") == s.vip("secure") + ":" + std::to_string(s.base + 1));
    CHECK(field(secure, "address") == "127.0.0.1:" + std::to_string(s.tls.port));
    CHECK(field(secure, "tls_version") == "TLSv1.3");
    CHECK_THAT(field(secure, "tls_cipher"), Catch::StartsWith("TLS_"));
    CHECK(field(secure, "tls_resumed") == "false");
    CHECK(std::stoi(field(secure, "tls_ms")) >= 0);
    CHECK(field(secure, "bytes_up") == "10");
    CHECK(field(secure, "bytes_down") == "10");

    auto* down = find(lines, "down", "connect_failed");
    REQUIRE(down);
    CHECK(field(down, "attempts") == "2");
    CHECK(field(down, "bytes_up") == "0");
    CHECK(field(down, "address") == "<absent>");  // never connected
    CHECK(field(down, "connect_ms") == "<absent>");
}

}  // namespace

TEST_CASE("access log in logfmt: plain and TLS connections, a failed connect and refused ones, each with why it ended")
{
    Setup s("{path: @DIR@/access.log, format: logfmt}", 9660, "  maxConnectionsPerService: 2\n");
    auto log_path = (s.dir.path / "access.log").string();
    CHECK(echoed(s.vip("plain"), s.base, "hello\n") == "hello\n");
    CHECK(say(s.vip("secure"), s.base + 1, "hello tls\n") == "slt olleh\n");
    CHECK(say(s.vip("down"), s.base + 2, "anyone?\n").empty());
    // Two connections held open fill plain's limit: the third is refused.
    int a = connect_to(s.vip("plain"), s.base), b = connect_to(s.vip("plain"), s.base);
    REQUIRE((a >= 0 && b >= 0));
    for (int fd : {a, b}) {
        (void)!::send(fd, "x", 1, MSG_NOSIGNAL);
        char c = 0;
        pollfd p{fd, POLLIN, 0};
        REQUIRE(::poll(&p, 1, 3000) == 1);
        REQUIRE(::recv(fd, &c, 1, 0) == 1);  // carried: counted against the limit
    }
    CHECK(say(s.vip("plain"), s.base, "refused?\n").empty());
    ::close(a);
    ::close(b);

    auto lines = lines_of(log_path, 6, false);
    CHECK(lines.size() == 6);
    check_common(lines, s);
    auto* refused = find(lines, "plain", "refused_limit");
    REQUIRE(refused);
    CHECK(field(refused, "vip") == s.vip("plain") + ":" + std::to_string(s.base));
    CHECK_THAT(field(refused, "client"), Catch::StartsWith("127.0.0.1:"));
    CHECK(field(refused, "attempts") == "0");
    CHECK(field(refused, "endpoint") == "<absent>");
    std::size_t held = 0;
    for (const auto& l : lines)
        if (l.at("name") == "plain" && l.at("reason") == "client_closed" && l.at("bytes_up") == "1") ++held;
    CHECK(held == 2);

    // The same connections in the metrics: the TLS handshake histogram counted one.
    auto metrics = s.mesd->admin_get("/metrics");
    auto labels = "{mesh=\"default\",name=\"secure\",endpoint=\"127.0.0.1:" + std::to_string(s.tls.port) + "\",address=\"127.0.0.1:" +
                  std::to_string(s.tls.port) + "\"}";
    CHECK(metric(metrics, "mesd_mes_endpoint_tls_handshake_seconds_count" + labels) == 1);
    CHECK(metric(metrics, "mesd_mes_endpoint_connect_seconds_count" + labels) == 1);
    CHECK(metric(metrics, "mesd_mes_endpoint_bytes_sent_total" + labels) == 10);
    CHECK(metric(metrics, "mesd_proxy_access_log_write_errors_total") == 0);
}

TEST_CASE("access log in JSON on stdout: every line a valid object with the same fields")
{
    Setup s("{path: stdout, format: json}", 9670);
    CHECK(echoed(s.vip("plain"), s.base, "hello\n") == "hello\n");
    CHECK(say(s.vip("secure"), s.base + 1, "hello tls\n") == "slt olleh\n");
    CHECK(say(s.vip("down"), s.base + 2, "anyone?\n").empty());
    auto lines = lines_of((s.dir.path / "mesd" / "mesd.out").string(), 3, true);
    CHECK(lines.size() == 3);
    check_common(lines, s);
}

TEST_CASE("access log: SIGHUP reopens the file after logrotate renamed it")
{
    Dir dir;
    EchoBackend echo;
    dir.write("resources/all.yaml", generator + mes("plain", 9610, "[" + ep(echo.port) + "]"));
    auto log_path = (dir.path / "access.log").string();
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  accessLog: {path: " + log_path + "}\n";
    Mesd mesd(dir.path / "mesd", options);

    CHECK(echoed("127.242.0.1", 9610, "one\n") == "one\n");
    REQUIRE(eventually([&] { return whole_lines(file_text(log_path)).size() == 1; }));
    std::filesystem::rename(log_path, log_path + ".1");
    // Renamed, not yet signalled: mesd still writes to the file it has open.
    CHECK(echoed("127.242.0.1", 9610, "two!\n") == "two!\n");
    REQUIRE(eventually([&] { return whole_lines(file_text(log_path + ".1")).size() == 2; }));
    CHECK_FALSE(std::filesystem::exists(log_path));

    REQUIRE(::kill(mesd.pid(), SIGHUP) == 0);
    REQUIRE(eventually([&] { return mesd.log().find("msg=SIGHUP") != std::string::npos; }));
    CHECK(echoed("127.242.0.1", 9610, "three\n") == "three\n");
    REQUIRE(eventually([&] { return whole_lines(file_text(log_path)).size() == 1; }));
    auto fresh = parse_logfmt(whole_lines(file_text(log_path))[0]);
    REQUIRE(fresh);
    CHECK(fresh->at("bytes_up") == "6");
    CHECK(whole_lines(file_text(log_path + ".1")).size() == 2);  // nothing more to the old one
    CHECK(mesd.log().find("level=error") == std::string::npos);
}

TEST_CASE("endpoint figures per address: connections, bytes and connect latency of two endpoints")
{
    Dir dir;
    EchoBackend first, second;
    dir.write("resources/all.yaml", generator + mes("pair", 9620, "[" + ep(first.port) + ", " + ep(second.port) + "]"));
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);  // no access log: the figures are kept all the same

    // Round robin: three connections each, 5 bytes each way per connection.
    for (int i = 0; i < 6; ++i) CHECK(echoed("127.242.0.1", 9620, "1234\n") == "1234\n");
    int held = connect_to("127.242.0.1", 9620);  // the seventh, open while the metrics are read
    REQUIRE(held >= 0);
    (void)!::send(held, "x", 1, MSG_NOSIGNAL);
    char c = 0;
    pollfd p{held, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 3000) == 1);
    REQUIRE(::recv(held, &c, 1, 0) == 1);

    auto metrics = mesd.admin_get("/metrics");
    auto labels = [](int port) {
        auto a = "127.0.0.1:" + std::to_string(port);
        return "{mesh=\"default\",name=\"pair\",endpoint=\"" + a + "\",address=\"" + a + "\"}";
    };
    CHECK(metric(metrics, "mesd_mes_endpoint_connect_seconds_count" + labels(first.port)) == 4);  // the held one went first
    CHECK(metric(metrics, "mesd_mes_endpoint_connect_seconds_count" + labels(second.port)) == 3);
    CHECK(metric(metrics, "mesd_mes_endpoint_connections_active" + labels(first.port)) == 1);
    CHECK(metric(metrics, "mesd_mes_endpoint_connections_active" + labels(second.port)) == 0);
    CHECK(metric(metrics, "mesd_mes_endpoint_bytes_sent_total" + labels(first.port)) == 16);
    CHECK(metric(metrics, "mesd_mes_endpoint_bytes_received_total" + labels(first.port)) == 16);
    CHECK(metric(metrics, "mesd_mes_endpoint_bytes_sent_total" + labels(second.port)) == 15);
    CHECK(metric(metrics, "mesd_mes_endpoint_bytes_received_total" + labels(second.port)) == 15);
    // The buckets are cumulative and end at the count; loopback connects take under 10 s.
    auto bucket = [&](int port, const std::string& le) {
        auto l = labels(port);
        l.insert(l.size() - 1, ",le=\"" + le + "\"");
        return metric(metrics, "mesd_mes_endpoint_connect_seconds_bucket" + l);
    };
    CHECK(bucket(second.port, "+Inf") == 3);
    CHECK(bucket(second.port, "10") == 3);
    CHECK(bucket(second.port, "0.001") <= bucket(second.port, "0.1"));
    CHECK(metrics.find("# TYPE mesd_mes_endpoint_connect_seconds histogram") != std::string::npos);
    // No TLS here: the handshake histogram has series at zero.
    CHECK(metric(metrics, "mesd_mes_endpoint_tls_handshake_seconds_count" + labels(second.port)) == 0);
    ::close(held);
    CHECK(eventually([&] {
        return metric(mesd.admin_get("/metrics"), "mesd_mes_endpoint_connections_active" + labels(first.port)) == 0;
    }));
}

TEST_CASE("access log lines: logfmt quotes and JSON escapes what could forge a line")
{
    proxy::detail::AccessRecord r;
    r.start_ms = 1'700'000'000'123;
    r.client = "127.0.0.1:4000";
    r.mesh = "default";
    r.name = "api";
    r.endpoint = "unix:///run/a b\"c.sock";
    r.address = std::string("/run/a b\"c\n\x1b[2J\xff.sock");
    r.bytes_up = 1;
    r.total_ms = 2;
    r.attempts = 1;
    r.reason = proxy::detail::end_reason::client_closed;

    std::string logfmt;
    proxy::detail::format_access(logfmt, r, proxy::detail::AccessFormat::logfmt);
    CHECK(logfmt.find('\n') == logfmt.size() - 1);
    CHECK(logfmt.find('\x1b') == std::string::npos);
    CHECK_THAT(logfmt, Catch::StartsWith("time=2023-11-14T22:13:20.123Z client=127.0.0.1:4000 mesh=default name=api "
                                         "endpoint=\"unix:///run/a b\\\"c.sock\" address="));
    CHECK_THAT(logfmt, Catch::EndsWith(" bytes_up=1 bytes_down=0 total_ms=2 attempts=1 reason=client_closed\n"));
    auto parsed = parse_logfmt(logfmt.substr(0, logfmt.size() - 1));
    REQUIRE(parsed);
    CHECK(parsed->at("endpoint") == "unix:///run/a b\"c.sock");

    std::string json;
    proxy::detail::format_access(json, r, proxy::detail::AccessFormat::json);
    CHECK(json.find('\n') == json.size() - 1);
    auto obj = parse_json_line(json.substr(0, json.size() - 1));
    REQUIRE(obj);
    CHECK(obj->at("endpoint") == "unix:///run/a b\"c.sock");
    CHECK(obj->at("time") == "2023-11-14T22:13:20.123Z");
    CHECK(obj->at("bytes_up") == "1");
    CHECK(obj->at("reason") == "client_closed");
    CHECK(obj->count("vip") == 0);  // unknown: left out
    CHECK(obj->at("address").find('\x1b') == std::string::npos);
    CHECK_THAT(obj->at("address"), Catch::Contains("\\xff"));
}

TEST_CASE("access log: an endpoint that closes first and a connection left idle say so")
{
    Dir dir;
    // Says hello and closes at once.
    int port = free_tcp_port();
    Child greeter({"/usr/bin/socat", "TCP-LISTEN:" + std::to_string(port) + ",bind=127.0.0.1,fork,reuseaddr", "SYSTEM:echo hello"});
    REQUIRE(eventually([&] { return accepting("127.0.0.1", port); }));
    EchoBackend echo;
    dir.write("resources/all.yaml", generator + mes("greeter", 9630, "[" + ep(port) + "]") + mes("quiet", 9631, "[" + ep(echo.port) + "]"));
    auto log_path = (dir.path / "access.log").string();
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  idleTimeout: 300ms\n  accessLog: {path: " + log_path + ", format: json}\n";
    Mesd mesd(dir.path / "mesd", options);
    auto vip = [&](const std::string& name) {
        auto out = output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), name + ".mesh", "+short"});
        while (!out.empty() && out.back() == '\n') out.pop_back();
        return out;
    };

    int fd = connect_to(vip("greeter"), 9630);
    REQUIRE(fd >= 0);
    std::string got;
    char buf[64];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) got.append(buf, static_cast<std::size_t>(n));  // until its FIN
    CHECK(got == "hello\n");
    ::close(fd);
    int idle = connect_to(vip("quiet"), 9631);
    REQUIRE(idle >= 0);
    pollfd p{idle, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 5000) == 1);  // closed by mesd after 300 ms of nothing
    ::close(idle);

    auto lines = lines_of(log_path, 2, true);
    auto* greeted = find(lines, "greeter", "endpoint_closed");
    REQUIRE(greeted);
    CHECK(field(greeted, "bytes_down") == "6");
    auto* quiet = find(lines, "quiet", "idle_timeout");
    REQUIRE(quiet);
    // The idle timer counts from the loop's cached clock, which may lag by a millisecond.
    CHECK(std::stoi(field(quiet, "total_ms")) >= 295);
}

TEST_CASE("endpoint figures are bounded: 16 addresses per endpoint and a global cap, the rest as other")
{
    using proxy::detail::EndpointStatsTable;
    std::atomic<std::size_t> global{0};
    {
        EndpointStatsTable table;
        for (int i = 0; i < 20; ++i) table.get("api.example:443", "10.0.0." + std::to_string(i) + ":443", global);
        auto again = table.get("api.example:443", "10.0.0.3:443", global);
        CHECK(again->address == "10.0.0.3:443");
        auto folded = table.get("api.example:443", "10.0.0.19:443", global);
        CHECK(folded->address == "other");
        CHECK(table.get("api.example:443", "10.0.0.18:443", global) == folded);
        CHECK(table.all().size() == 17);
        CHECK(global == 16);
        // Another endpoint has its own 16.
        CHECK(table.get("10.1.0.1:80", "10.1.0.1:80", global)->address == "10.1.0.1:80");
        CHECK(global == 17);
    }
    CHECK(global == 0);  // a MES gone gives its places back

    global = proxy::detail::max_address_series - 1;
    EndpointStatsTable table;
    CHECK(table.get("a:1", "10.0.0.1:1", global)->address == "10.0.0.1:1");
    CHECK(table.get("a:1", "10.0.0.2:1", global)->address == "other");  // the global cap
    CHECK(global == proxy::detail::max_address_series);
}
