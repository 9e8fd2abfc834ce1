// `mesctl inspect --admin`: the running mesd's view of a MES (endpoint health, failures,
// per-address state when the daemon reports it) after the store's, and one line saying why
// not when the admin endpoint is not given or does not answer. The JSON reading is tested
// alone first, then through the real mesd and mesctl.
#include "cmd/live.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

std::string joined(const std::vector<std::string>& lines)
{
    std::string out;
    for (const auto& l : lines) out += l + "\n";
    return out;
}

const std::string socat = "/usr/bin/socat";
const std::string dig = "/usr/bin/dig";

}  // namespace

TEST_CASE("live lines: health and failures of each endpoint, per-address keys when present")
{
    const std::string body = R"({
      "generation": 3, "workers": 4,
      "services": [
        {"mesh": "default", "name": "other", "listeners": [], "active": 0, "total": 0, "endpoints": []},
        {"mesh": "default", "name": "api", "listeners": ["127.242.0.1:80"], "active": 1, "total": 7,
         "endpoints": [
           {"address": "10.0.0.1:443", "priority": 0, "health": "healthy", "connectFailures": 0, "ejections": 0},
           {"address": "api.ext.test:443", "priority": 1, "health": "failing", "consecutiveFailures": 2,
            "connectFailures": 5, "handshakeFailures": 1, "ejections": 1,
            "lastFailure": "2026-11-27T19:40:00Z", "lastFailureReason": "connection refused",
            "resolved": ["10.0.0.7", "10.0.0.8"],
            "addresses": [
              {"address": "10.0.0.7:443", "state": "ejected", "consecutiveFailures": 3, "connectFailures": 4,
               "handshakeFailures": 0, "ejections": 1, "lastFailure": 1764272400, "lastFailureReason": "timed out"},
              {"address": "10.0.0.8:443", "state": "healthy"}
            ],
            "somethingNew": {"nested": [1, 2, 3]}}
         ]}
      ]})";
    auto lines = cmd::live_lines(body, "default", "api");
    REQUIRE(lines);
    CHECK(joined(*lines) ==
          "  listeners:   127.242.0.1:80\n"
          "  connections: active 1, total 7\n"
          "  health:      10.0.0.1:443: healthy (connect failures 0, ejections 0)\n"
          "  health:      api.ext.test:443(p1): failing (failures in a row 2, connect failures 5, handshake failures 1, "
          "ejections 1)\n"
          "               last failure 2026-11-27T19:40:00Z: connection refused\n"
          "               resolved: 10.0.0.7, 10.0.0.8\n"
          "               address 10.0.0.7:443: ejected (failures in a row 3, connect failures 4, handshake failures 0, "
          "ejections 1)\n"
          "                 last failure 1764272400: timed out\n"
          "               address 10.0.0.8:443: healthy\n");

    auto none = cmd::live_lines(body, "default", "missing");
    REQUIRE(none);
    CHECK(none->empty());
    auto other_mesh = cmd::live_lines(body, "prod", "api");
    REQUIRE(other_mesh);
    CHECK(other_mesh->empty());
    auto empty = cmd::live_lines(body, "default", "other");
    REQUIRE(empty);
    CHECK(joined(*empty) == "  connections: active 0, total 0\n  health:      no endpoints\n");
}

TEST_CASE("live lines: what is not /config's JSON is refused with a reason")
{
    CHECK(cmd::live_lines("", "default", "api").error() == "not valid JSON");
    CHECK(cmd::live_lines("{\"services\": [", "default", "api").error() == "not valid JSON");
    CHECK(cmd::live_lines("[1]", "default", "api").error() == "not a JSON object");
    CHECK(cmd::live_lines("{\"zones\": []}", "default", "api").error() == "no proxy in it (no \"services\")");
    CHECK(cmd::live_lines("{\"services\": 3}", "default", "api").error() == "\"services\" is not a list");
    // Deep nesting is refused before the (recursive) parser sees it; brackets in strings do not count.
    std::string deep = "{\"services\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
    CHECK(cmd::live_lines(deep, "default", "api").error() == "JSON nested more than 64 levels deep");
    std::string brackets_in_string = "{\"services\": [], \"x\": \"" + std::string(1000, '[') + "\\\"\"}";
    auto ok = cmd::live_lines(brackets_in_string, "default", "api");
    REQUIRE(ok);
    CHECK(ok->empty());
    // Wrong types in a service or an endpoint are skipped, not fatal.
    auto odd = cmd::live_lines(R"({"services": [{"mesh": "default", "name": "api", "listeners": [1, "a:1"],
        "endpoints": [7, {"address": 5, "health": ["x"], "addresses": [3]}]}]})",
                               "default", "api");
    REQUIRE(odd);
    CHECK(joined(*odd) == "  listeners:   a:1\n  health:      5: unknown\n");
}

TEST_CASE("http_get: refused, not HOST:PORT, and a server that says nothing")
{
    int port = free_tcp_port();
    auto refused = cmd::http_get("127.0.0.1:" + std::to_string(port), "/config");
    REQUIRE_FALSE(refused);
    CHECK(refused.error() == "connection refused");
    CHECK(cmd::http_get("127.0.0.1", "/config").error() == "not HOST:PORT");
    CHECK(cmd::http_get("127.0.0.1:99999", "/config").error() == "not HOST:PORT");
    CHECK(cmd::http_get("[::1", "/config").error() == "not HOST:PORT");

    // A listener that accepts and never answers: the timeout ends it.
    auto listener = [] {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(fd, 4) == 0);
        socklen_t len = sizeof addr;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
        return std::pair{fd, "127.0.0.1:" + std::to_string(ntohs(addr.sin_port))};
    };
    auto [fd, at] = listener();
    auto start = std::chrono::steady_clock::now();
    auto silent = cmd::http_get(at, "/config", 300ms);
    CHECK(std::chrono::steady_clock::now() - start < 2s);
    REQUIRE_FALSE(silent);
    CHECK(silent.error() == "timed out reading the reply");
    ::close(fd);

    // A server that answers and keeps the connection open: Content-Length ends the body.
    std::tie(fd, at) = listener();
    auto serve = [fd = fd](std::string reply) {
        return std::thread([fd, reply] {
            int c = ::accept(fd, nullptr, nullptr);
            if (c < 0) return;
            char buf[1024];
            (void)!::recv(c, buf, sizeof buf, 0);
            (void)!::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
            pollfd p{c, POLLIN, 0};
            ::poll(&p, 1, 3000);  // open until the client closes
            ::close(c);
        });
    };
    auto server = serve("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 13\r\n\r\n{\"zones\": []}");
    start = std::chrono::steady_clock::now();
    auto body = cmd::http_get(at, "/config", 2s);
    CHECK(std::chrono::steady_clock::now() - start < 1s);
    server.join();
    REQUIRE(body);
    CHECK(*body == "{\"zones\": []}");
    server = serve("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    auto missing = cmd::http_get(at, "/config", 2s);
    server.join();
    REQUIRE_FALSE(missing);
    CHECK(missing.error() == "HTTP 404");
    ::close(fd);
}

TEST_CASE("mesctl inspect --admin shows the running mesd's health of each endpoint")
{
    int workers = GENERATE(1, 4);
    DYNAMIC_SECTION("workers " << workers)
    {
        TempDir dir;
        int port = free_tcp_port();
        Child backend({socat, "TCP-LISTEN:" + std::to_string(port) + ",bind=127.0.0.1,fork,reuseaddr", "SYSTEM:'echo up'"});
        REQUIRE(eventually([&] { return accepting("127.0.0.1", port); }));
        int dead = free_tcp_port();
        dir.write("resources/all.yaml",
                  "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
                  "  template: \"{{ .Name }}.mesh\"\n---\n"
                  "type: MeshExternalService\nname: api\nspec:\n  match: {port: 7201}\n  endpoints:\n"
                  "  - {address: 127.0.0.1, port: " + std::to_string(dead) + "}\n"
                  "  - {address: 127.0.0.1, port: " + std::to_string(port) + "}\n");
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n  connectTimeout: 2s\n  ejectAfter: 100\n";
        options.extra_args = {"--workers", std::to_string(workers)};
        Mesd mesd(dir.path / "mesd", options);
        auto vip = output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), "api.mesh", "+short"});
        while (!vip.empty() && vip.back() == '\n') vip.pop_back();
        // Round robin: in four connections the dead endpoint is tried, fails, and the next one carries it.
        for (int i = 0; i < 4; ++i) CHECK(echoed(vip, 7201, "") == "up\n");

        auto mesctl = [&](std::vector<std::string> args) {
            args.insert(args.begin(), {MESCTL_PATH, "--config", mesd.config()});
            return run(args);
        };
        std::string admin = "127.0.0.1:" + std::to_string(mesd.admin_port());
        auto live = mesctl({"inspect", "api", "--admin", admin});
        INFO(live.out << live.err);
        REQUIRE(live.exit_code == 0);
        CHECK_THAT(live.out, Catch::Contains("MeshExternalService default/api"));  // the store's view is still there
        CHECK_THAT(live.out, Catch::Contains("  live state: from mesd at " + admin + "\n"));
        CHECK_THAT(live.out, Catch::Contains("  connections: active 0, total 4\n"));
        CHECK_THAT(live.out, Catch::Contains("  health:      127.0.0.1:" + std::to_string(port) + ": healthy (failures in a row 0, connect failures 0"));
        CHECK_THAT(live.out, Catch::Contains("  health:      127.0.0.1:" + std::to_string(dead) + ": failing"));
        CHECK_THAT(live.out, Catch::Matches("[\\s\\S]*127\\.0\\.0\\.1:" + std::to_string(dead) +
                                            ": failing \\([^)]*connect failures [1-9][\\s\\S]*"));

        auto offline = mesctl({"inspect", "api"});
        REQUIRE(offline.exit_code == 0);
        CHECK_THAT(offline.out, Catch::Contains("MeshExternalService default/api"));
        CHECK_THAT(offline.out, Catch::Contains("  live state: not available (no --admin)\n"));
        CHECK_THAT(offline.out, !Catch::Contains("health:"));

        int closed = free_tcp_port();
        auto refused = mesctl({"inspect", "api", "--admin", "127.0.0.1:" + std::to_string(closed)});
        REQUIRE(refused.exit_code == 0);
        CHECK_THAT(refused.out, Catch::Contains("  live state: not available (admin at 127.0.0.1:" + std::to_string(closed) +
                                                ": connection refused)\n"));

        CHECK(mesctl({"inspect", "api", "--admin"}).exit_code == 2);
    }
}
