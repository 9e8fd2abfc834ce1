// The status page (GET /) and /status.json on the admin endpoint: drawn from a document alone
// first (escaping, paging, nothing to show), then through the real mesd over HTTP with curl
// (headers, a MES applied during the test, its endpoint's failure, escaping of a stored name,
// a thousand MES) and in headless Chromium (the page renders, a screenshot is kept).
#include "cmd/status_page.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"
#include "test/support/text.hpp"

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

const std::string curl = "/usr/bin/curl";
const std::string chromium = "/usr/bin/chromium";
const std::string dig = "/usr/bin/dig";

// `curl -i` of the admin endpoint: status line, headers and body.
std::string fetch(const Mesd& mesd, const std::string& path)
{
    return run({curl, "-sS", "-i", "--max-time", "10", "http://127.0.0.1:" + std::to_string(mesd.admin_port()) + path}).out;
}

std::string body_of(const std::string& reply)
{
    auto at = reply.find("\r\n\r\n");
    return at == std::string::npos ? std::string() : reply.substr(at + 4);
}

// mesctl against the mesd's store.
RunResult mesctl(const Mesd& mesd, std::vector<std::string> args)
{
    args.insert(args.begin(), {MESCTL_PATH, "--config", mesd.config()});
    return run(args);
}

const std::string generator =
    "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

std::string mes(const std::string& name, int port, int endpoint_port, const std::string& metadata = "")
{
    return "---\ntype: MeshExternalService\nname: " + name + "\n" + metadata + "spec:\n  match: {port: " +
           std::to_string(port) + "}\n  endpoints:\n  - {address: 127.0.0.1, port: " + std::to_string(endpoint_port) + "}\n";
}

std::string artifacts_dir()
{
    std::filesystem::path dir = MESD_TEST_ARTIFACTS;
    std::filesystem::create_directories(dir);
    return dir.string();
}

}  // namespace

TEST_CASE("status page: every field of the document is HTML-escaped")
{
    nlohmann::ordered_json doc = nlohmann::ordered_json::parse(R"({
      "node": {"ready": false, "readiness": "not ready: <b>x</b>", "workers": 2, "generation": 7, "proxyMode": "bind",
               "meshes": ["default", "<m>"]},
      "cluster": {"node": "<node>", "connected": false, "endpoint": "http://<e>", "revision": 3, "lastError": "<err>"},
      "counters": {"dnsQueries": 12, "proxyConnections": 3},
      "mes": {"total": 1, "page": 1, "pages": 1, "perPage": 100, "items": [
        {"mesh": "<mesh>", "name": "<script>alert(1)</script>", "vips": ["127.242.0.9"], "hostnames": ["<h>.mesh"],
         "port": 80, "protocol": "tcp", "conditions": "<c>", "live": true, "active": 0, "total": 4,
         "listenError": "<le>", "tlsError": "<te>",
         "endpoints": [{"address": "<a>:1", "priority": 0, "health": "<script>", "consecutiveFailures": 2,
                        "lastFailure": "2026-11-27T19:40:00Z", "lastFailureReason": "refused <img src=x>"}]}]}})");
    auto html = cmd::status_html(doc);
    // The only tags are the page's own: no script at all, no injected ones.
    CHECK(html.find("<script") == std::string::npos);
    CHECK(html.find("<img") == std::string::npos);
    CHECK(html.find("<b>") == std::string::npos);
    CHECK(html.find("<m>") == std::string::npos);
    for (const char* escaped : {"&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;mesh&gt;", "&lt;h&gt;.mesh", "&lt;c&gt;",
                                "&lt;le&gt;", "&lt;te&gt;", "&lt;a&gt;:1", "refused &lt;img src=x&gt;", "&lt;node&gt;",
                                "http://&lt;e&gt;", "&lt;err&gt;", "not ready: &lt;b&gt;x&lt;/b&gt;", "&lt;m&gt;"})
        CHECK_THAT(html, Catch::Contains(escaped));
    CHECK_THAT(html, Catch::Contains("class=\"ready bad\""));
    CHECK_THAT(html, Catch::Contains("<td class=\"num\" id=\"dnsQueries\">12</td>"));
    CHECK_THAT(html, Catch::Contains("last failure 2026-11-27T19:40:00Z"));
    CHECK_THAT(html, Catch::Contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    // No load from elsewhere: no absolute URL in an attribute.
    CHECK(html.find("src=\"") == std::string::npos);
    CHECK(html.find("href=\"http") == std::string::npos);
}

TEST_CASE("status page: nothing to show and paging")
{
    nlohmann::ordered_json none = {{"node", {{"ready", true}, {"readiness", "ready"}}},
                                   {"mes", {{"total", 0}, {"page", 1}, {"pages", 1}, {"perPage", 100}, {"items", nlohmann::ordered_json::array()}}}};
    auto html = cmd::status_html(none);
    CHECK_THAT(html, Catch::Contains("id=\"no-mes\""));
    CHECK_THAT(html, Catch::Contains("class=\"ready ok\">ready<"));
    CHECK(html.find("id=\"pages\"") == std::string::npos);
    // A document lacking everything still draws.
    CHECK_THAT(cmd::status_html(nlohmann::ordered_json::object()), Catch::Contains("</html>"));

    CHECK(cmd::status_page_number(std::nullopt, 1000) == 1);
    CHECK(cmd::status_page_number("3", 1000) == 3);
    CHECK(cmd::status_page_number("11", 1000) == 10);
    CHECK(cmd::status_page_number("0", 1000) == 1);
    CHECK(cmd::status_page_number("x", 1000) == 1);
    CHECK(cmd::status_page_number("2", 0) == 1);
    CHECK(cmd::status_page_number("99999999999999999999999", 1000) == 1);
}

TEST_CASE("status page: served over HTTP with its headers and a MES applied meanwhile appears")
{
    TempDir dir;
    MesdOptions options;
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  connectTimeout: 1s\n";
    Mesd mesd(dir.path / "mesd", options);

    auto empty = fetch(mesd, "/");
    CHECK_THAT(empty, Catch::StartsWith("HTTP/1.1 200 OK\r\n"));
    CHECK_THAT(empty, Catch::Contains("\r\nContent-Type: text/html; charset=utf-8\r\n"));
    CHECK_THAT(empty, Catch::Contains("\r\nContent-Security-Policy: default-src 'none'; style-src 'unsafe-inline'"));
    CHECK_THAT(empty, Catch::Contains("\r\nX-Content-Type-Options: nosniff\r\n"));
    CHECK_THAT(empty, Catch::Contains("id=\"no-mes\""));
    CHECK_THAT(empty, Catch::Contains("class=\"ready ok\">ready<"));
    auto head = run({curl, "-sS", "-I", "--max-time", "10", "http://127.0.0.1:" + std::to_string(mesd.admin_port()) + "/"});
    CHECK_THAT(head.out, Catch::StartsWith("HTTP/1.1 200 OK\r\n"));
    CHECK(body_of(head.out).empty());
    auto post = run({curl, "-sS", "-i", "-X", "POST", "--max-time", "10",
                     "http://127.0.0.1:" + std::to_string(mesd.admin_port()) + "/"});
    CHECK_THAT(post.out, Catch::StartsWith("HTTP/1.1 405 "));
    CHECK_THAT(post.out, Catch::Contains("\r\nAllow: GET, HEAD\r\n"));

    // A MES whose endpoint refuses, and one whose stored name is markup (a name from another
    // zone is checked on its display name only).
    int dead = free_tcp_port();
    dir.write("in.yaml", generator + mes("status-api", 7461, dead) +
                             mes("<script>alert(1)</script>", 7462, dead,
                                 "labels:\n  kuma.io/origin: global\n  kuma.io/display-name: xss\n"));
    auto applied = mesctl(mesd, {"apply", "-f", (dir.path / "in.yaml").string()});
    INFO(applied.out << applied.err);
    REQUIRE(applied.exit_code == 0);
    std::string vip;
    REQUIRE(eventually([&] {
        vip = run({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), "status-api.mesh", "+short"}).out;
        while (!vip.empty() && vip.back() == '\n') vip.pop_back();
        return !vip.empty();
    }));
    // A connection to the VIP fails at the endpoint: the page shows the failure.
    CHECK(echoed(vip, 7461, "", 3s).empty());
    std::string page;
    REQUIRE(eventually([&] {
        page = fetch(mesd, "/");
        return page.find("last failure") != std::string::npos;
    }));
    CHECK_THAT(page, Catch::Contains("<td class=\"name\">status-api</td>"));
    CHECK_THAT(page, Catch::Contains("<div>" + vip + "</div>"));
    CHECK_THAT(page, Catch::Contains("<div>status-api.mesh</div>"));
    CHECK_THAT(page, Catch::Contains("127.0.0.1:" + std::to_string(dead) + "</code>"));
    CHECK_THAT(page, Catch::Contains("MeshExternalServices (2)"));
    CHECK_THAT(page, Catch::Contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    CHECK(body_of(page).find("<script") == std::string::npos);

    // The same as JSON.
    auto json_reply = fetch(mesd, "/status.json");
    CHECK_THAT(json_reply, Catch::Contains("\r\nContent-Type: application/json\r\n"));
    auto doc = nlohmann::json::parse(body_of(json_reply));
    CHECK(doc["node"]["ready"] == true);
    CHECK(doc["mes"]["total"] == 2);
    nlohmann::json api;
    for (const auto& item : doc["mes"]["items"])
        if (item["name"] == "status-api") api = item;
    REQUIRE(api.is_object());
    CHECK(api["vips"][0] == vip);
    CHECK(api["hostnames"][0] == "status-api.mesh");
    CHECK(api["port"] == 7461);
    CHECK(api["live"] == true);
    CHECK(api["endpoints"][0]["address"] == "127.0.0.1:" + std::to_string(dead));
    CHECK(api["endpoints"][0].contains("lastFailureReason"));
    CHECK(doc["counters"]["dnsQueries"].get<std::uint64_t>() >= 1);
    CHECK(doc["counters"]["proxyConnections"].get<std::uint64_t>() >= 1);
}

TEST_CASE("status page: a thousand MES are drawn a page at a time")
{
    TempDir dir;
    MesdOptions options;
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);
    std::string docs = generator;
    for (int i = 0; i < 1000; ++i) docs += mes("many-" + std::to_string(i), 7463, 9);
    dir.write("many.yaml", docs);
    auto applied = mesctl(mesd, {"apply", "-f", (dir.path / "many.yaml").string()});
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    std::string page;
    REQUIRE(eventually([&] {
        page = fetch(mesd, "/");
        return page.find("MeshExternalServices (1000)") != std::string::npos;
    }));
    CHECK(occurrences(page, "<tr class=\"mes\">") == 100);
    CHECK_THAT(page, Catch::Contains("Showing 1&ndash;100 of 1000 (page 1 of 10)"));
    CHECK_THAT(page, Catch::Contains("<a href=\"/?page=2\">next</a>"));
    CHECK(page.size() < 200 * 1024);
    auto last = fetch(mesd, "/?page=10");
    CHECK(occurrences(last, "<tr class=\"mes\">") == 100);
    CHECK_THAT(last, Catch::Contains("Showing 901&ndash;1000 of 1000"));
    CHECK_THAT(last, Catch::Contains("<a href=\"/?page=9\">previous</a>"));
    CHECK(last.find(">next</a>") == std::string::npos);
    auto json = nlohmann::json::parse(body_of(fetch(mesd, "/status.json?page=3")));
    CHECK(json["mes"]["page"] == 3);
    CHECK(json["mes"]["pages"] == 10);
    CHECK(json["mes"]["items"].size() == 100);
}

TEST_CASE("status page: headless Chromium renders it with a MES applied during the test")
{
    REQUIRE(std::filesystem::exists(chromium));
    TempDir dir;
    MesdOptions options;
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);
    dir.write("in.yaml", generator + mes("browser-api", 7464, 9));
    auto applied = mesctl(mesd, {"apply", "-f", (dir.path / "in.yaml").string()});
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    std::string vip;
    REQUIRE(eventually([&] {
        auto doc = nlohmann::json::parse(body_of(fetch(mesd, "/status.json")), nullptr, false);
        if (doc.is_discarded() || doc["mes"]["items"].empty()) return false;
        vip = doc["mes"]["items"][0]["vips"][0].get<std::string>();
        return true;
    }));

    // Only loopback: nothing of Chromium's own calling home, a profile of its own, a time bound.
    std::string url = "http://127.0.0.1:" + std::to_string(mesd.admin_port()) + "/";
    auto browser = [&](std::vector<std::string> action) {
        std::vector<std::string> argv = {"/usr/bin/timeout", "60", chromium, "--headless=new", "--no-sandbox",
                                         "--disable-gpu", "--no-first-run", "--disable-background-networking",
                                         "--disable-component-update", "--disable-sync", "--metrics-recording-only",
                                         "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
                                         "--user-data-dir=" + (dir.path / "profile").string(), "--window-size=1280,900",
                                         "--virtual-time-budget=2000"};
        argv.insert(argv.end(), action.begin(), action.end());
        argv.push_back(url);
        return run(argv, {}, {"HOME=" + dir.path.string()});
    };
    auto dom = browser({"--dump-dom"});
    INFO(dom.err);
    REQUIRE(dom.exit_code == 0);
    CHECK_THAT(dom.out, Catch::Contains("<td class=\"name\">browser-api</td>"));
    CHECK_THAT(dom.out, Catch::Contains("<div>" + vip + "</div>"));
    CHECK_THAT(dom.out, Catch::Contains("<div>browser-api.mesh</div>"));
    CHECK_THAT(dom.out, Catch::Contains("class=\"ready ok\""));

    std::string png = artifacts_dir() + "/status-page.png";
    std::filesystem::remove(png);
    auto shot = browser({"--screenshot=" + png});
    INFO(shot.err);
    REQUIRE(shot.exit_code == 0);
    REQUIRE(std::filesystem::exists(png));
    CHECK(std::filesystem::file_size(png) > 1000);
    std::ifstream in(png, std::ios::binary);
    std::string magic(8, '\0');
    in.read(magic.data(), 8);
    CHECK(magic == std::string("\x89PNG\r\n\x1a\n", 8));
}
