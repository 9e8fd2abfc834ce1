// `mesctl get mes --admin` and `mesctl inspect --admin`: the running mesd's live state read
// through its admin endpoint (/status.json, /config), and a line on stderr when the admin
// endpoint cannot be had and the store is shown instead.
#include "cmd/live.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <string>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

const std::string dig = "/usr/bin/dig";

const std::string resources =
    "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

std::string mes(const std::string& name, int port, int endpoint_port)
{
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(port) +
           "}\n  endpoints:\n  - {address: 127.0.0.1, port: " + std::to_string(endpoint_port) + "}\n";
}

}  // namespace

TEST_CASE("mesctl live: a page of /status.json is read and drawn as a row")
{
    auto page = cmd::live_mes_page(R"({"node": {}, "mes": {"total": 250, "page": 2, "pages": 3, "perPage": 100,
        "items": [{"mesh": "default", "name": "api", "vips": ["127.242.0.1", "fd00::1"], "hostnames": ["api.mesh"],
                   "port": 80, "protocol": "tcp", "conditions": "Generated", "live": true, "active": 1, "total": 9,
                   "endpoints": [{"address": "10.0.0.1:443", "health": "healthy"}, {"address": "b:1", "health": "ejected"}]},
                  7,
                  {"mesh": "default", "name": "quiet", "port": null, "live": false, "endpoints": []}]}})");
    REQUIRE(page);
    CHECK(page->total == 250);
    CHECK(page->page == 2);
    CHECK(page->pages == 3);
    REQUIRE(page->items.size() == 2);
    CHECK(cmd::live_mes_row(page->items[0]) ==
          std::vector<std::string>{"default", "api", "127.242.0.1,fd00::1", "api.mesh", "80", "tcp",
                                   "10.0.0.1:443=healthy,b:1=ejected", "1/9", "Generated"});
    CHECK(cmd::live_mes_row(page->items[1]) ==
          std::vector<std::string>{"default", "quiet", "<none>", "<none>", "any", "", "<none>", "-", ""});
    // Key order is the daemon's.
    CHECK_THAT(cmd::live_value(page->items[0]).json(), Catch::StartsWith("{\n  \"mesh\": \"default\",\n  \"name\": \"api\","));

    CHECK(cmd::live_mes_page("nope").error() == "not valid JSON");
    CHECK(cmd::live_mes_page("{\"services\": []}").error() == "no \"mes\" in it");
    CHECK(cmd::live_mes_page("{\"mes\": {\"items\": 3}}").error() == "\"mes.items\" is not a list");
}

TEST_CASE("mesctl get and inspect with --admin read the running mesd and say when they fall back")
{
    int workers = GENERATE(1, 4);
    DYNAMIC_SECTION("workers " << workers)
    {
        TempDir dir;
        MesdOptions options;
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n  connectTimeout: 1s\n";
        options.extra_args = {"--workers", std::to_string(workers)};
        Mesd mesd(dir.path / "mesd", options);
        auto mesctl = [&](std::vector<std::string> args) {
            args.insert(args.begin(), {MESCTL_PATH, "--config", mesd.config()});
            return run(args);
        };
        int dead = free_tcp_port();
        dir.write("in.yaml", resources + mes("live-api", 7466, dead) + mes("live-other", 7467, dead));
        REQUIRE(mesctl({"apply", "-f", (dir.path / "in.yaml").string()}).exit_code == 0);
        std::string vip;
        REQUIRE(eventually([&] {
            vip = run({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), "live-api.mesh", "+short"}).out;
            while (!vip.empty() && vip.back() == '\n') vip.pop_back();
            return !vip.empty();
        }));
        CHECK(echoed(vip, 7466, "", 3s).empty());  // the endpoint refuses: it is failing now
        const std::string admin = "127.0.0.1:" + std::to_string(mesd.admin_port());
        const std::string endpoint = "127.0.0.1:" + std::to_string(dead);

        // The table: the daemon's health of each endpoint and its connections.
        RunResult table;
        REQUIRE(eventually([&] {
            table = mesctl({"get", "mes", "--admin", admin});
            return table.out.find(endpoint + "=failing") != std::string::npos ||
                   table.out.find(endpoint + "=ejected") != std::string::npos;
        }));
        INFO(table.out << table.err);
        CHECK(table.exit_code == 0);
        CHECK(table.err.empty());
        CHECK_THAT(table.out, Catch::StartsWith("MESH"));
        CHECK_THAT(table.out, Catch::Contains("CONNECTIONS"));
        CHECK_THAT(table.out, Catch::Contains("live-api"));
        CHECK_THAT(table.out, Catch::Contains("live-other"));
        CHECK_THAT(table.out, Catch::Contains(vip));
        CHECK_THAT(table.out, Catch::Contains("live-api.mesh"));
        CHECK_THAT(table.out, Catch::Contains("0/1"));  // none open, one carried (and failed)

        auto one = mesctl({"get", "mes", "live-api", "--admin", admin, "-o", "json"});
        REQUIRE(one.exit_code == 0);
        auto doc = nlohmann::json::parse(one.out);
        CHECK(doc["name"] == "live-api");
        CHECK(doc["vips"][0] == vip);
        CHECK(doc["live"] == true);
        CHECK(doc["endpoints"][0]["address"] == endpoint);
        CHECK(doc["endpoints"][0].contains("lastFailure"));
        auto yaml = mesctl({"get", "mes", "--admin", admin, "-o", "yaml"});
        CHECK(yaml.exit_code == 0);
        CHECK_THAT(yaml.out, Catch::Contains("total: 2"));
        auto missing = mesctl({"get", "mes", "nope", "--admin", admin});
        CHECK(missing.exit_code == 1);
        CHECK_THAT(missing.err, Catch::Contains("default/nope not served by mesd at " + admin));
        CHECK(mesctl({"get", "secrets", "--admin", admin}).exit_code == 2);

        // The admin endpoint gone: the store, and a line on stderr saying so.
        int closed = free_tcp_port();
        const std::string gone = "127.0.0.1:" + std::to_string(closed);
        const std::string store = (dir.path / "mesd").string();
        auto fallback = mesctl({"get", "mes", "--admin", gone});
        INFO(fallback.out << fallback.err);
        CHECK(fallback.exit_code == 0);
        CHECK_THAT(fallback.err, Catch::StartsWith("mesctl: admin " + gone + " unreachable (connection refused); showing the store at "));
        CHECK_THAT(fallback.out, Catch::Contains("live-api"));
        CHECK_THAT(fallback.out, Catch::Contains("CONDITIONS"));
        CHECK(fallback.out.find("CONNECTIONS") == std::string::npos);

        auto inspected = mesctl({"inspect", "live-api", "--admin", gone});
        CHECK(inspected.exit_code == 0);
        CHECK_THAT(inspected.err, Catch::StartsWith("mesctl: admin " + gone + " unreachable (connection refused); showing the store at "));
        CHECK_THAT(inspected.out, Catch::Contains("MeshExternalService default/live-api"));
        auto live = mesctl({"inspect", "live-api", "--admin", admin});
        CHECK(live.exit_code == 0);
        CHECK(live.err.empty());
        CHECK_THAT(live.out, Catch::Contains("  live state: from mesd at " + admin + "\n"));
    }
}
