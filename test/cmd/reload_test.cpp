// SIGHUP reloads the configuration file of the real mesd: TTLs, the log level, the forward
// upstreams and allow list, the proxy's timeouts and access log change live; a changed
// listen address is named as needing a restart and the old listener stays; a bad file
// changes nothing and every error is logged at its place. Run with MESD_WORKERS=1 and 4.
#include "test/support/access_log.hpp"
#include "test/support/dns.hpp"

#include <catch2/catch.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <regex>
#include <string>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

std::size_t count_of(const std::string& text, const std::string& what)
{
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

std::size_t reloads_logged(const Mesd& mesd)
{
    auto log = mesd.log();
    return count_of(log, "msg=\"configuration reloaded\"") + count_of(log, "msg=\"configuration not reloaded");
}

// Sends SIGHUP and waits until mesd has said how the reload went.
void hangup(const Mesd& mesd)
{
    auto before = reloads_logged(mesd);
    REQUIRE(::kill(mesd.pid(), SIGHUP) == 0);
    REQUIRE(eventually([&] { return reloads_logged(mesd) > before; }));
}

// The configuration file with `from` replaced by `to` (which must be there).
void edit(const Mesd& mesd, const std::string& from, const std::string& to)
{
    auto text = file_text(mesd.config());
    auto at = text.find(from);
    INFO(text);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);
    std::ofstream(mesd.config(), std::ios::trunc) << text;
}

void append(const Mesd& mesd, const std::string& more)
{
    std::ofstream(mesd.config(), std::ios::app) << more;
}

// The TTL of the A answer for `name`, or -1.
int ttl_of(const Fixture& f, const std::string& name)
{
    auto out = f.dig_out({name, "A", "+noall", "+answer", "+notcp"});
    std::smatch m;
    std::regex re(std::regex_replace(name, std::regex(R"(\.)"), R"(\.)") + R"(\.\s+(\d+)\s+IN\s+A\s)");
    return std::regex_search(out, m, re) ? std::stoi(m[1]) : -1;
}

std::string metric_line(const Mesd& mesd, const std::string& result)
{
    auto metrics = mesd.admin_get("/metrics");
    std::smatch m;
    std::regex re("mesd_config_reloads_total\\{result=\"" + result + "\"\\} (\\d+)");
    return std::regex_search(metrics, m, re) ? std::string(m[1]) : "absent";
}

// /config with its white space taken out (no value the tests look for holds any).
std::string config_of(const Mesd& mesd)
{
    auto text = mesd.admin_get("/config");
    std::erase_if(text, [](char c) { return c == ' ' || c == '\n' || c == '\r'; });
    return text;
}

// An upstream answering every A question with 127.0.0.`octet`.
struct Answering {
    FakeUpstream upstream;
    explicit Answering(std::uint8_t octet)
        : upstream([octet](int fd, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
              auto r = a_reply(q, static_cast<std::uint16_t>((q[0] << 8) | q[1]), octet);
              ::sendto(fd, r.data(), r.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
          })
    {
    }
    int port() const { return upstream.port; }
};

// True when the peer closed `fd` within `within` (EOF or a reset).
bool closed_within(int fd, std::chrono::milliseconds within)
{
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(within.count())) != 1) return false;
    char buf[16];
    return ::recv(fd, buf, sizeof buf, MSG_DONTWAIT) <= 0;
}

}  // namespace

TEST_CASE("reload: dns.ttl and log.level change on SIGHUP and /config and the counter follow")
{
    Fixture f;
    REQUIRE(ttl_of(f, "mes-http.mesh") == 30);
    // At info, a store change is not logged.
    f.dir.write("resources/more.yaml", "type: MeshExternalService\nname: reload-one\nspec:\n  match: {port: 80}\n"
                                       "  endpoints: [{address: 127.0.0.1, port: 80}]\n");
    REQUIRE(eventually([&] { return f.short_answer("reload-one.mesh") != ""; }));
    CHECK(count_of(f.mesd->log(), "level=debug") == 0);

    edit(*f.mesd, "dns:\n", "log:\n  level: debug\ndns:\n  ttl: 7s\n  negativeTtl: 3s\n");
    hangup(*f.mesd);
    CHECK(ttl_of(f, "mes-http.mesh") == 7);
    auto log = f.mesd->log();
    CHECK_THAT(log, Catch::Contains("msg=\"configuration reloaded\"") && Catch::Contains("dns.ttl") &&
                        Catch::Contains("log.level") && Catch::Contains("dns.negativeTtl"));
    // At debug it is.
    f.dir.write("resources/more2.yaml", "type: MeshExternalService\nname: reload-two\nspec:\n  match: {port: 80}\n"
                                        "  endpoints: [{address: 127.0.0.1, port: 80}]\n");
    CHECK(eventually([&] { return count_of(f.mesd->log(), "msg=\"store changed\"") > 0; }));

    auto config = config_of(*f.mesd);
    CHECK_THAT(config, Catch::Contains("\"ttl\":\"7s\"") && Catch::Contains("\"negativeTtl\":\"3s\"") &&
                           Catch::Contains("\"logLevel\":\"debug\"") && Catch::Contains("\"reloads\":1"));
    CHECK(metric_line(*f.mesd, "ok") == "1");
    CHECK(metric_line(*f.mesd, "failed") == "0");
}

TEST_CASE("reload: forwarding moves to the new upstreams and follows the new allow list")
{
    Answering first(1), second(2);
    Fixture f(forwarding({first.port()}));
    CHECK(f.short_answer("reload-fwd.test") == "127.0.0.1");

    edit(*f.mesd, "127.0.0.1:" + std::to_string(first.port()), "127.0.0.1:" + std::to_string(second.port()));
    hangup(*f.mesd);
    CHECK_THAT(f.mesd->log(), Catch::Contains("dns.forward.upstreams"));
    CHECK(f.short_answer("reload-fwd2.test") == "127.0.0.2");
    CHECK_THAT(config_of(*f.mesd), Catch::Contains("\"upstreams\":[\"127.0.0.1:" + std::to_string(second.port()) + "\"]"));

    // Loopback no longer allowed to forward: refused, over UDP and over TCP.
    edit(*f.mesd, "    upstreams:", "    allow: [\"192.0.2.0/24\"]\n    upstreams:");
    hangup(*f.mesd);
    CHECK_THAT(f.dig_out({"reload-fwd3.test", "A", "+notcp"}), Catch::Contains("status: REFUSED"));
    CHECK_THAT(f.dig_out({"reload-fwd4.test", "A", "+tcp"}), Catch::Contains("status: REFUSED"));
    // mesd's own names are still answered.
    CHECK(f.short_answer("mes-http.mesh") != "");
    CHECK(metric_line(*f.mesd, "ok") == "2");
}

TEST_CASE("reload: a bad file keeps the running configuration and names every error at its place")
{
    Fixture f;
    auto original = file_text(f.mesd->config());
    auto lines = static_cast<int>(count_of(original, "\n"));

    SECTION("a syntax error")
    {
        append(*f.mesd, "log:\n  level: debug\ndns: [unclosed\n");
        hangup(*f.mesd);
        auto log = f.mesd->log();
        CHECK_THAT(log, Catch::Contains("msg=\"configuration not reloaded; the running configuration stays\""));
        std::smatch m;
        CHECK(std::regex_search(log, m, std::regex(std::regex_replace(f.mesd->config(), std::regex(R"([.])"), R"(\.)") +
                                                   ":\\d+:\\d+: ")));
    }
    SECTION("validation errors")
    {
        // Each wrong in its own way, at a known line.
        append(*f.mesd, "log:\n  level: loud\nproxy:\n  connectTimeout: soon\n");
        hangup(*f.mesd);
        auto log = f.mesd->log();
        CHECK_THAT(log, Catch::Contains("msg=\"configuration not reloaded; the running configuration stays\"") &&
                            Catch::Contains("errors=2"));
        CHECK_THAT(log, Catch::Contains(f.mesd->config() + ":" + std::to_string(lines + 2) + ":") &&
                            Catch::Contains(f.mesd->config() + ":" + std::to_string(lines + 4) + ":"));
        CHECK_THAT(log, Catch::Contains("log.level") && Catch::Contains("proxy.connectTimeout"));
    }
    // Nothing changed: still info, still 30 s.
    CHECK(ttl_of(f, "mes-http.mesh") == 30);
    CHECK(count_of(f.mesd->log(), "level=debug") == 0);
    CHECK(metric_line(*f.mesd, "failed") == "1");
    CHECK(metric_line(*f.mesd, "ok") == "0");
    CHECK_THAT(config_of(*f.mesd), Catch::Contains("\"failedReloads\":1") && Catch::Contains("\"logLevel\":\"info\""));

    // Fixed, it loads.
    std::ofstream(f.mesd->config(), std::ios::trunc) << original << "dnsExtra: x\n";
    hangup(*f.mesd);
    CHECK(metric_line(*f.mesd, "failed") == "2");
    std::ofstream(f.mesd->config(), std::ios::trunc) << original;
    hangup(*f.mesd);
    CHECK(metric_line(*f.mesd, "ok") == "1");
}

TEST_CASE("reload: a changed listen address needs a restart and the old listener stays")
{
    Fixture f;
    int other = free_dual_port();
    edit(*f.mesd, "listen: [\"127.0.0.1:0\"]", "listen: [\"127.0.0.1:" + std::to_string(other) + "\"]\n  ttl: 9s");
    hangup(*f.mesd);
    auto log = f.mesd->log();
    CHECK_THAT(log, Catch::Contains("msg=\"configuration change needs a restart; the running value stays\" key=dns.listen"));
    CHECK_THAT(log, Catch::Contains(std::to_string(other)));
    // The rest of the file is taken; the old port still answers, the new one is not bound.
    CHECK(ttl_of(f, "mes-http.mesh") == 9);
    auto out = output_of({dig, "@127.0.0.1", "-p", std::to_string(other), "+tries=1", "+time=1", "mes-http.mesh", "A"});
    CHECK_THAT(out, !Catch::Contains("status: NOERROR"));
}

TEST_CASE("reload: proxy timeouts apply to new connections and the access log moves")
{
    TempDir dir;
    EchoBackend echo;
    dir.write("resources/all.yaml",
              "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
              "  template: \"{{ .Name }}.mesh\"\n---\ntype: MeshExternalService\nname: reload-echo\nspec:\n"
              "  match: {port: 9871}\n  endpoints: [{address: 127.0.0.1, port: " + std::to_string(echo.port) + "}]\n");
    auto first_log = (dir.path / "first.log").string(), second_log = (dir.path / "second.log").string();
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  idleTimeout: 1h\n  accessLog: {path: " + first_log + "}\n";
    Mesd mesd(dir.path / "mesd", options);
    REQUIRE(eventually([&] { return accepting("127.242.0.1", 9871); }));
    // One line in the first log for that probe.
    REQUIRE(eventually([&] { return whole_lines(file_text(first_log)).size() == 1; }));

    int before = connect_to("127.242.0.1", 9871);
    REQUIRE(before >= 0);
    edit(mesd, "idleTimeout: 1h\n  accessLog: {path: " + first_log + "}",
         "idleTimeout: 400ms\n  accessLog: {path: " + second_log + ", format: json}");
    hangup(mesd);
    CHECK_THAT(mesd.log(), Catch::Contains("proxy.idleTimeout") && Catch::Contains("proxy.accessLog.path") &&
                               Catch::Contains("proxy.accessLog.format"));

    int after = connect_to("127.242.0.1", 9871);
    REQUIRE(after >= 0);
    CHECK(closed_within(after, 3s));
    // The connection made before keeps the timeout it started with.
    CHECK_FALSE(closed_within(before, 500ms));
    ::close(after);
    ::close(before);

    // Its line went to the new file, as JSON, and none more to the old one.
    REQUIRE(eventually([&] { return whole_lines(file_text(second_log)).size() >= 1; }));
    bool idle = false;
    for (const auto& line : whole_lines(file_text(second_log))) {
        auto fields = parse_json_line(line);
        REQUIRE(fields);
        if (fields->count("reason") && fields->at("reason") == "idle_timeout") idle = true;
    }
    CHECK(idle);
    CHECK(whole_lines(file_text(first_log)).size() == 1);
    CHECK_THAT(config_of(mesd), Catch::Contains("\"idleTimeout\":\"400ms\"") && Catch::Contains(second_log));
}

TEST_CASE("reload: with no configuration file SIGHUP reopens logs only and says so")
{
    TempDir dir;
    auto log_path = (dir.path / "mesd.log").string();
    Child child({MESD_PATH, "--data-dir", (dir.path / "data").string(), "--dns-listen", "127.0.0.1:0", "--admin-listen",
                 "127.0.0.1:0"},
                (dir.path / "mesd.out").string(), log_path);
    REQUIRE(eventually([&] { return file_text(log_path).find("msg=ready") != std::string::npos; }, 20s));
    REQUIRE(::kill(child.pid(), SIGHUP) == 0);
    CHECK(eventually([&] { return file_text(log_path).find("no configuration file: nothing to reload") != std::string::npos; }));
    CHECK_THAT(file_text(log_path), Catch::Contains("config=none"));
    child.signal(SIGTERM);
    CHECK(child.wait() == 0);
}

TEST_CASE("reload: a rate limit set by SIGHUP limits answers from then on")
{
    Fixture f;
    auto answered = [&](int n) {
        int got = 0;
        for (int i = 0; i < n; ++i)
            if (!udp_exchange(f.mesd->dns_port(), raw_query("mes-http.mesh"), 100ms).empty()) ++got;
        return got;
    };
    REQUIRE(answered(20) == 20);
    edit(*f.mesd, "dns:\n", "dns:\n  rateLimit:\n    responsesPerSecond: 2\n    burst: 2\n    slip: 0\n"
                            "    exempt: [\"192.0.2.0/24\"]\n");
    hangup(*f.mesd);
    CHECK_THAT(f.mesd->log(), Catch::Contains("dns.rateLimit.responsesPerSecond"));
    // Each worker takes the new limiter on its own loop: soon after the reload is logged.
    CHECK(eventually([&] { return answered(20) <= 6; }, 10s));
    CHECK_THAT(f.mesd->admin_get("/metrics"), !Catch::Contains("mesd_dns_rate_limited_dropped_total 0\n"));
}
