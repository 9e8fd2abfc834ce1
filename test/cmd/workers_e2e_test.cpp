// mesd with several workers, end to end: the kernel spreads queries and connections over
// them, answers and connections go on through store changes, affinity pins them, and
// SIGTERM drains every one.
#include "test/support/dns.hpp"
#include "test/support/mesd.hpp"
#include "test/support/metrics.hpp"
#include "test/support/net.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <thread>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

const std::string generator =
    "type: HostnameGenerator\nname: example\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

std::string mes(const std::string& name, int port, int endpoint_port)
{
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(port) +
           "}\n  endpoints: [{address: 127.0.0.1, port: " + std::to_string(endpoint_port) + "}]\n";
}

// The A record of `name` in a reply, as text; empty when there is none.
std::string a_record(const std::vector<std::uint8_t>& reply)
{
    if (reply.size() < 16 || (reply[3] & 0x0f) != 0 || reply[7] == 0) return "";
    // The last 4 bytes of a one-answer A reply with no additional section are the address.
    auto n = reply.size();
    return std::to_string(reply[n - 4]) + "." + std::to_string(reply[n - 3]) + "." + std::to_string(reply[n - 2]) + "." +
           std::to_string(reply[n - 1]);
}

// One query from a fresh socket (a new source port each time, so that the kernel's
// SO_REUSEPORT hash spreads them over the workers); the address answered, or "" after `wait`.
std::string ask(int port, const std::string& name, std::chrono::milliseconds wait = 1000ms)
{
    return a_record(udp_exchange(port, raw_query(name), wait));
}

std::map<int, double> per_worker_queries(const std::string& metrics)
{
    std::map<int, double> out;
    std::regex re(R"re(mesd_dns_worker_queries_total\{worker="(\d+)"\} (\d+))re");
    for (auto it = std::sregex_iterator(metrics.begin(), metrics.end(), re); it != std::sregex_iterator(); ++it)
        out[std::stoi((*it)[1])] = std::stod((*it)[2]);
    return out;
}

std::string body(const std::string& http) { return http.substr(http.find("\r\n\r\n") + 4); }

struct WorkersFixture {
    TempDir dir;
    std::unique_ptr<Mesd> mesd;

    explicit WorkersFixture(const std::string& resources, std::vector<std::string> args = {"--workers", "4"},
                            std::string extra_config = "")
    {
        dir.write("resources/all.yaml", resources);
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_args = std::move(args);
        options.extra_config = std::move(extra_config);
        mesd = std::make_unique<Mesd>(dir.path / "mesd", options);
    }
    void write_resources(const std::string& resources)
    {
        // Written beside, then renamed: the conf dir never shows half a file.
        dir.write("staging.yaml", resources);
        std::filesystem::rename(dir.path / "staging.yaml", dir.path / "resources" / "all.yaml");
    }
};


}  // namespace

TEST_CASE("workers: four workers share the DNS port and more than one answers")
{
    WorkersFixture f(generator + mes("alpha", 80, 1) + mes("beta", 80, 1));
    int port = f.mesd->dns_port();
    auto alpha = ask(port, "alpha.mesh");
    REQUIRE(alpha.starts_with("127.242."));
    int answered = 0;
    for (int i = 0; i < 200; ++i) answered += ask(port, i % 2 ? "alpha.mesh" : "beta.mesh").starts_with("127.242.") ? 1 : 0;
    CHECK(answered == 200);
    // Over TCP too: each worker accepts on its own socket of the same port.
    for (int i = 0; i < 8; ++i)
        CHECK(output_of({kdig, "@127.0.0.1", "-p", std::to_string(port), "+tcp", "+short", "alpha.mesh"}) == alpha + "\n");

    auto metrics = f.mesd->admin_get("/metrics");
    CHECK(metric(metrics, "mesd_workers") == 4);
    auto spread = per_worker_queries(metrics);
    REQUIRE(spread.size() == 4);
    double total = 0;
    int busy = 0;
    for (auto [worker, n] : spread) {
        total += n;
        busy += n > 0 ? 1 : 0;
    }
    CHECK(busy >= 2);  // 201 source ports over 4 sockets: all on one would be 4^-200
    // The summed counters count every query once, whichever worker took it.
    CHECK(total == 201 + 8);
    CHECK(metric(metrics, "mesd_dns_queries_total{qtype=\"A\"}") == 201 + 8);
    CHECK_THAT(body(f.mesd->admin_get("/config")), Catch::Contains("\"workers\": 4"));
    CHECK_THAT(f.mesd->log(), Catch::Contains("msg=workers count=4"));
}

TEST_CASE("workers: store changes under query load lose no answer on any worker")
{
    WorkersFixture f(generator + mes("steady", 80, 1));
    int port = f.mesd->dns_port();
    auto steady = ask(port, "steady.mesh");
    REQUIRE(steady.starts_with("127.242."));
    std::atomic<bool> stop{false};
    std::atomic<int> sent{0}, lost{0}, wrong{0};
    std::thread load([&] {
        auto until = std::chrono::steady_clock::now() + 8s;  // bounded whatever happens below
        while (!stop && std::chrono::steady_clock::now() < until) {
            auto got = ask(port, "steady.mesh");
            ++sent;
            if (got.empty()) ++lost;
            else if (got != steady) ++wrong;
        }
    });
    // Three changes while the queries flow: each new name is answered by every worker once
    // the index moves (50 fresh source ports each), and the steady name never misses.
    std::string resources = generator + mes("steady", 80, 1);
    for (int round = 0; round < 3; ++round) {
        std::string name = "added-" + std::to_string(round);
        resources += mes(name, 80, 1);
        f.write_resources(resources);
        REQUIRE(eventually([&] { return !ask(port, name + ".mesh", 200ms).empty(); }, 10s));
        int answered = 0;
        for (int i = 0; i < 50; ++i) answered += ask(port, name + ".mesh").empty() ? 0 : 1;
        CHECK(answered == 50);
    }
    stop = true;
    load.join();
    CHECK(sent > 50);
    CHECK(lost == 0);
    CHECK(wrong == 0);
}

TEST_CASE("workers: proxied connections go on through route changes and SIGTERM drains every worker")
{
    int backend_port = free_tcp_port();
    Child backend({"/usr/bin/socat", "TCP-LISTEN:" + std::to_string(backend_port) + ",bind=127.0.0.1,fork,reuseaddr",
                   "EXEC:cat"});
    REQUIRE(eventually([&] { return accepting("127.0.0.1", backend_port); }));
    WorkersFixture f(generator + mes("echo", 4252, backend_port));
    auto vip = ask(f.mesd->dns_port(), "echo.mesh");
    REQUIRE(vip.starts_with("127.242."));
    REQUIRE(eventually([&] { return echoed(vip, 4252, "hello\n") == "hello\n"; }));

    // A connection held open across the changes.
    int held = connect_to(vip, 4252);
    REQUIRE(held >= 0);
    std::atomic<bool> stop{false};
    std::atomic<int> made{0}, failed{0};
    std::thread load([&] {
        auto until = std::chrono::steady_clock::now() + 8s;
        while (!stop && std::chrono::steady_clock::now() < until) {
            ++made;
            if (echoed(vip, 4252, "ping\n") != "ping\n") ++failed;
        }
    });
    std::string resources = generator + mes("echo", 4252, backend_port);
    for (int round = 0; round < 3; ++round) {
        resources += mes("other-" + std::to_string(round), 80, backend_port);
        f.write_resources(resources);
        REQUIRE(eventually([&] { return !ask(f.mesd->dns_port(), "other-" + std::to_string(round) + ".mesh", 200ms).empty(); },
                           10s));
        std::this_thread::sleep_for(300ms);  // the proxy takes the routes after the index
    }
    stop = true;
    load.join();
    CHECK(made > 20);
    CHECK(failed == 0);
    std::string text = "still here\n";
    REQUIRE(::send(held, text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size()));
    char buf[64] = {};
    pollfd p{held, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 3000) == 1);
    CHECK(std::string(buf, static_cast<std::size_t>(::recv(held, buf, sizeof buf, 0))) == text);

    // Totals across workers: every connection made above, counted once.
    auto metrics = f.mesd->admin_get("/metrics");
    CHECK(metric(metrics, "mesd_proxy_connections_total") >= made + 2);
    double by_worker = 0;
    int busy = 0;
    for (int w = 0; w < 4; ++w) {
        double n = metric(metrics, "mesd_proxy_worker_connections_total{worker=\"" + std::to_string(w) + "\"}");
        by_worker += n;
        busy += n > 0 ? 1 : 0;
    }
    CHECK(by_worker == metric(metrics, "mesd_proxy_connections_total"));
    CHECK(busy >= 2);  // the fewest-connections choice spreads them
    CHECK(metric(metrics, "mesd_proxy_connections_active") >= 1);  // the one held open

    // SIGTERM with a connection still open on some worker: every worker stops, mesd exits 0.
    CHECK(f.mesd->stop() == 0);
    ::close(held);
    auto log = f.mesd->log();
    CHECK_THAT(log, Catch::Contains("msg=\"listeners closed, in-flight queries finished\""));
    CHECK_THAT(log, Catch::Contains("msg=\"listeners and connections closed\""));
    CHECK_THAT(log, Catch::Contains("msg=stopped"));
}

TEST_CASE("workers: workerAffinity auto pins each worker to its own CPU")
{
    auto allowed = [] {
        cpu_set_t set;
        CPU_ZERO(&set);
        sched_getaffinity(0, sizeof set, &set);
        std::vector<int> out;
        for (int c = 0; c < CPU_SETSIZE; ++c)
            if (CPU_ISSET(c, &set)) out.push_back(c);
        return out;
    }();
    WorkersFixture f(generator + mes("alpha", 80, 1), {"--workers", "2"}, "workerAffinity: auto\n");
    std::set<std::string> pinned;
    for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(f.mesd->pid()) + "/task")) {
        std::string name = file_text((task.path() / "comm").string());
        if (!name.starts_with("mesd-w")) continue;
        std::ifstream status(task.path() / "status");
        std::string line;
        while (std::getline(status, line))
            if (line.starts_with("Cpus_allowed_list:")) pinned.insert(name.substr(0, name.find('\n')) + "=" + line.substr(line.find_first_not_of(" \t", 18)));
    }
    REQUIRE(pinned.size() == 2);
    CHECK(pinned.count("mesd-w0=" + std::to_string(allowed[0])) == 1);
    CHECK(pinned.count("mesd-w1=" + std::to_string(allowed[1 % allowed.size()])) == 1);
}

TEST_CASE("workers: the default is one per CPU mesd may run on, and --workers 1 starts no thread")
{
    auto cpus = std::thread::hardware_concurrency();
    {
        WorkersFixture f(generator + mes("alpha", 80, 1), {"--workers", "0"});
        CHECK_THAT(f.mesd->log(), Catch::Contains("msg=workers count=" + std::to_string(std::max(1u, cpus))));
    }
    WorkersFixture one(generator + mes("alpha", 80, 1), {"--workers", "1"});
    CHECK_THAT(one.mesd->log(), Catch::Contains("msg=workers count=1"));
    int threads = 0;
    for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(one.mesd->pid()) + "/task"))
        threads += file_text((task.path() / "comm").string()).starts_with("mesd-w") ? 1 : 0;
    CHECK(threads == 0);
    CHECK(ask(one.mesd->dns_port(), "alpha.mesh").starts_with("127.242."));
}

TEST_CASE("workers: --workers and MESD_WORKERS refuse what is not a count")
{
    auto bad = run({MESD_PATH, "--workers", "many"});
    CHECK(bad.exit_code == 2);
    CHECK_THAT(bad.err, Catch::Contains("--workers many: must be a number from 0 to 64"));
    CHECK(run({MESD_PATH, "--workers", "65"}).exit_code == 2);
    CHECK(run({"/usr/bin/env", "MESD_WORKERS=-3", MESD_PATH}).exit_code == 2);
    CHECK_THAT(run({"/usr/bin/env", "MESD_WORKERS=-3", MESD_PATH}).err, Catch::Contains("MESD_WORKERS"));
}

TEST_CASE("workers: a second mesd on the same ports is refused instead of sharing the first one's traffic")
{
    int dns_port = free_dual_port();
    int redirect_port = free_tcp_port();
    TempDir dir;
    MesdOptions options;
    options.dns_listen = "127.0.0.1:" + std::to_string(dns_port);
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_args = {"--workers", "2"};
    options.extra_config = "proxy:\n  mode: redirect\n  redirectListen: 127.0.0.1:" + std::to_string(redirect_port) + "\n";
    Mesd first(dir.path / "first", options);

    // The same ports from another store: with SO_REUSEPORT alone the kernel would let it in
    // and hand it a share of the queries and connections.
    auto config = [&](int dns) {
        return dir.write("second-" + std::to_string(dns) + ".yaml",
                         "dataDir: " + (dir.path / "second-data").string() +
                             "\nvip:\n  ipv4: 127.242.0.0/16\nadmin:\n  listen: 127.0.0.1:0\n"
                             "dns:\n  listen: [\"127.0.0.1:" + std::to_string(dns) + "\"]\n  forward:\n    enabled: false\n" +
                             options.extra_config);
    };
    auto both = run({"/usr/bin/timeout", "10", MESD_PATH, "--config", config(dns_port), "--workers", "2"});
    CHECK(both.exit_code == 1);
    CHECK_THAT(both.err, Catch::Contains("dns.listen 127.0.0.1:" + std::to_string(dns_port) + " (udp): Address already in use"));
    int other_dns = free_dual_port();
    auto redirect = run({"/usr/bin/timeout", "10", MESD_PATH, "--config", config(other_dns), "--workers", "2"});
    CHECK(redirect.exit_code == 1);
    CHECK_THAT(redirect.err,
               Catch::Contains("proxy.redirectListen 127.0.0.1:" + std::to_string(redirect_port) + " (tcp): Address already in use"));
    // The first one still answers alone.
    CHECK(first.admin_get("/ready").find("200 OK") != std::string::npos);
}
