// Endpoint health: the per-address bookkeeping of balancer.cpp, and through the running mesd
// a DNS name with a black-holed address, TLS failures as events and counts, and active
// health checks (proxy.healthCheck, the label mesd.io/health-check).
#include "conf/conf.hpp"
#include "proxy/detail/balancer.hpp"
#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/text.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string socat = "/usr/bin/socat";
const std::string openssl = "/usr/bin/openssl";
const std::string dig = "/usr/bin/dig";
const std::string iptables = "/usr/sbin/iptables";

vip::Address addr(const std::string& text) { return *vip::Address::parse(text); }

// Connects, shuts the sending side and reads what comes back until EOF (or `wait` of quiet).
std::string fetch(const std::string& host, int port, std::chrono::milliseconds wait = 5s)
{
    return trim(echoed(host, port, "", wait));
}

// socat on HOST:PORT answering each connection with `word`.
struct Backend {
    std::unique_ptr<Child> child;
    Backend(const std::string& host, int port, const std::string& word)
    {
        child = std::make_unique<Child>(std::vector<std::string>{
            socat, "TCP-LISTEN:" + std::to_string(port) + ",bind=" + host + ",fork,reuseaddr", "SYSTEM:'echo " + word + "'"});
        REQUIRE(eventually([&] { return accepting(host, port); }));
    }
};

// openssl s_server with -rev on 127.0.0.1:`port`.
struct TlsServer {
    std::unique_ptr<Child> child;
    TlsServer(const Dir& dir, const std::string& name, const KeyPair& leaf, int port)
    {
        auto cert = dir.write(name + ".crt", leaf.cert_pem);
        auto key = dir.write(name + ".key", leaf.key_pem);
        child = std::make_unique<Child>(std::vector<std::string>{openssl, "s_server", "-accept", "127.0.0.1:" + std::to_string(port),
                                                                 "-cert", cert, "-key", key, "-rev", "-quiet"},
                                        (dir.path / (name + ".out")).string(), (dir.path / (name + ".err")).string());
        REQUIRE(eventually([&] { return accepting("127.0.0.1", port); }));
    }
};

// An iptables rule on loopback, removed whatever happens to the test.
struct DropRule {
    std::vector<std::string> spec;
    explicit DropRule(std::vector<std::string> s) : spec(std::move(s))
    {
        auto argv = std::vector<std::string>{iptables, "-w", "-I", "OUTPUT"};
        argv.insert(argv.end(), spec.begin(), spec.end());
        REQUIRE(run(argv).exit_code == 0);
    }
    ~DropRule()
    {
        auto argv = std::vector<std::string>{iptables, "-w", "-D", "OUTPUT"};
        argv.insert(argv.end(), spec.begin(), spec.end());
        (void)run(argv);
    }
};

const std::string generator =
    "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

std::string mes(const std::string& name, int port, const std::string& endpoints, const std::string& more = "")
{
    return "---\ntype: MeshExternalService\nname: " + name + "\n" + more + "spec:\n  match: {port: " + std::to_string(port) +
           "}\n  endpoints: " + endpoints + "\n";
}

std::string ep(const std::string& host, int port)
{
    return "{address: " + host + ", port: " + std::to_string(port) + "}";
}

std::string list(const std::string& one) { return "[" + one + "]"; }

struct Fixture {
    Dir dir;
    std::unique_ptr<Mesd> mesd;
    Fixture(const std::string& resources, const std::string& proxy)
    {
        dir.write("resources/all.yaml", generator + resources);
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n" + proxy;
        mesd = std::make_unique<Mesd>(dir.path / "mesd", options);
    }
    std::string vip(const std::string& name) const
    {
        return trim(output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd->dns_port()), name + ".mesh", "+short", "+tries=1",
                               "+time=2"}));
    }
    std::string config() const
    {
        auto r = mesd->admin_get("/config");
        return r.substr(r.find("\r\n\r\n") + 4);
    }
    // The /config text of one MES's service: from its name to the next service.
    std::string service(const std::string& name) const
    {
        auto text = config();
        auto at = text.find("\"name\": \"" + name + "\"", text.find("\"services\":"));
        if (at == std::string::npos) return {};
        auto end = text.find("\"mesh\":", at);
        return text.substr(at, end == std::string::npos ? std::string::npos : end - at);
    }
    // The /config text of one address of a DNS name (from "address": "A" to the next one).
    std::string address_entry(const std::string& name, const std::string& address) const
    {
        auto text = service(name);
        auto at = text.find("\"address\": \"" + address + "\"");
        if (at == std::string::npos) return {};
        auto end = text.find("\"address\":", at + 1);
        return text.substr(at, end == std::string::npos ? std::string::npos : end - at);
    }
    long long metric(const std::string& series) const
    {
        auto text = mesd->admin_get("/metrics");
        auto at = text.find("\n" + series + " ");
        if (at == std::string::npos) return -1;
        return std::stoll(text.substr(at + series.size() + 2));
    }
    std::size_t log_count(const std::string& needle) const
    {
        auto log = mesd->log();
        std::size_t n = 0;
        for (auto at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1)) ++n;
        return n;
    }
};

}  // namespace

// ---- the bookkeeping -----------------------------------------------------------------------

TEST_CASE("health: an address of a DNS name is ejected alone and the others are chosen")
{
    proxy::Health h;
    std::vector<vip::Address> addrs = {addr("127.0.0.21"), addr("127.0.0.22"), addr("127.0.0.23")};
    h.reconcile(addrs);
    REQUIRE(h.addresses.size() == 3);
    proxy::HealthPolicy p;
    p.eject_after = 2;
    p.eject_base_ms = 5000;
    proxy::HealthSubject who{"default", "web", "backend.test:80", addrs[2], 80};
    std::vector<proxy::Options::Event> events;
    std::uint64_t now = 1'000'000;
    auto none = [](const vip::Address&) { return false; };

    proxy::record_failure_of(h, addrs[2], p, proxy::FailureKind::connect, "connect timed out", now, 1, who, events);
    REQUIRE(events.size() == 1);
    CHECK(events[0].level == proxy::Options::Event::Level::warn);
    CHECK(events[0].message == "endpoint failing");
    CHECK(h.addresses[addrs[2]].usable(now));  // one failure: not yet ejected
    proxy::record_failure_of(h, addrs[2], p, proxy::FailureKind::connect, "connect timed out", now, 2, who, events);
    REQUIRE(events.size() == 2);
    CHECK(events[1].message == "endpoint ejected");
    std::map<std::string, std::string> fields(events[1].fields.begin(), events[1].fields.end());
    CHECK(fields["address"] == "127.0.0.23:80");
    CHECK(fields["failures"] == "2");
    CHECK(fields["for"] == "5s");
    CHECK(fields["reason"] == "connect timed out");
    CHECK(h.addresses[addrs[2]].ejected(now));
    CHECK(h.addresses[addrs[2]].ejections == 1);
    CHECK(h.addresses[addrs[2]].connect_failures == 2);
    CHECK(h.addresses[addrs[0]].connect_failures == 0);  // its siblings keep their own counts

    // Twenty picks: never the ejected address, the others in turn.
    std::map<std::string, int> chosen;
    for (int i = 0; i < 20; ++i) ++chosen[proxy::pick_address(h, addrs, now, none, none)->to_string()];
    CHECK(chosen["127.0.0.23"] == 0);
    CHECK(chosen["127.0.0.21"] == 10);
    CHECK(chosen["127.0.0.22"] == 10);
    CHECK(proxy::target_usable(h, true, now));

    // Every address ejected: the name is not usable, but an address is still given (panic).
    proxy::record_failure_of(h, addrs[0], p, proxy::FailureKind::connect, "x", now, 3, who, events);
    proxy::record_failure_of(h, addrs[0], p, proxy::FailureKind::handshake, "y", now, 4, who, events);
    proxy::record_failure_of(h, addrs[1], p, proxy::FailureKind::connect, "x", now, 5, who, events);
    proxy::record_failure_of(h, addrs[1], p, proxy::FailureKind::connect, "x", now, 6, who, events);
    CHECK_FALSE(proxy::target_usable(h, true, now));
    CHECK(proxy::pick_address(h, addrs, now, none, none).has_value());
    CHECK(h.addresses[addrs[0]].handshake_failures == 1);
    CHECK(h.addresses[addrs[0]].last_failure_reason == "y");
    CHECK(h.addresses[addrs[0]].last_failure == 4);
    // Once the ejection is over, the address is chosen again.
    CHECK(proxy::target_usable(h, true, now + 5000));
    // An address tried by this connection is passed over while another is left.
    auto tried = [&](const vip::Address& a) { return a == addrs[0]; };
    for (int i = 0; i < 4; ++i) CHECK(*proxy::pick_address(h, addrs, now + 5000, tried, none) != addrs[0]);
    // Hopeless everywhere: nothing.
    auto all = [](const vip::Address&) { return true; };
    CHECK_FALSE(proxy::pick_address(h, addrs, now, all, all).has_value());
}

TEST_CASE("health: addresses that leave a name drop their health and those that stay keep it")
{
    proxy::Health h;
    auto a = addr("127.0.0.21"), b = addr("127.0.0.22"), c = addr("127.0.0.23");
    h.reconcile({a, b});
    proxy::HealthPolicy p;
    p.eject_after = 1;
    std::vector<proxy::Options::Event> events;
    proxy::HealthSubject who{"default", "web", "backend.test:80", a, 80};
    proxy::record_failure_of(h, a, p, proxy::FailureKind::connect, "refused", 100, 1, who, events);
    proxy::record_failure_of(h, b, p, proxy::FailureKind::handshake, "bad certificate", 100, 1, who, events);
    h.reconcile({b, c});
    CHECK_FALSE(h.addresses.contains(a));
    CHECK(h.addresses.at(b).ejected(100));  // stays ejected
    CHECK(h.addresses.at(c).usable(100));   // new: healthy
    CHECK(h.gone_connect_failures == 1);    // the name's totals do not go down
    CHECK(h.gone_ejections == 1);
    // A result for an address that has left is not recorded.
    events.clear();
    proxy::record_failure_of(h, a, p, proxy::FailureKind::connect, "refused", 100, 1, who, events);
    CHECK(events.empty());
    CHECK_FALSE(h.addresses.contains(a));
}

TEST_CASE("health: an address missing from one loop's answer keeps its ejection until no answer has had it for a while")
{
    proxy::Health h;
    auto a = addr("127.0.0.31"), b = addr("127.0.0.32");
    const std::uint64_t grace = proxy::Health::absent_grace_ms;
    h.reconcile({a, b}, 1000, grace);
    proxy::HealthPolicy p;
    p.eject_after = 1;
    std::vector<proxy::Options::Event> events;
    proxy::HealthSubject who{"default", "web", "backend.test:80", a, 80};
    proxy::record_failure_of(h, a, p, proxy::FailureKind::connect, "refused", 1000, 1, who, events);
    REQUIRE(h.addresses.at(a).ejected(1001));
    // Another loop, or a name answering a subset, says only b: a keeps its ejection.
    h.reconcile({b}, 2000, grace);
    REQUIRE(h.addresses.contains(a));
    CHECK(h.addresses.at(a).ejected(2001));
    // No answer has had a for longer than the grace: it goes.
    h.reconcile({b}, 2000 + grace + 1, grace);
    CHECK_FALSE(h.addresses.contains(a));
    CHECK(h.addresses.contains(b));
}

TEST_CASE("health: what active checks concluded is forgotten when checks are turned off for the endpoint")
{
    proxy::Health h;
    auto a = addr("127.0.0.41");
    h.reconcile({a});
    h.self.check_down = true;
    h.self.checks_failed_in_row = 3;
    h.addresses.at(a).check_down = true;
    h.addresses.at(a).checks_failed_in_row = 5;
    REQUIRE_FALSE(h.self.usable(0));
    h.forget_checks();
    CHECK(h.self.usable(0));
    CHECK(h.addresses.at(a).usable(0));
    CHECK(h.addresses.at(a).checks_failed_in_row == 0);
}

TEST_CASE("health: a failing endpoint is reported once until it succeeds, then again")
{
    proxy::AddressHealth h;
    proxy::HealthPolicy p;
    p.eject_after = 100;
    proxy::HealthSubject who{"default", "web", "10.0.0.1:443", std::nullopt, 443};
    std::vector<proxy::Options::Event> events;
    for (int i = 0; i < 5; ++i) proxy::record_failure(h, p, proxy::FailureKind::handshake, "certificate verify failed", 1, 1, who, events);
    REQUIRE(events.size() == 1);
    CHECK(events[0].message == "endpoint failing");
    proxy::record_success(h, who, events);
    proxy::record_success(h, who, events);
    REQUIRE(events.size() == 2);
    CHECK(events[1].message == "endpoint healthy again");
    CHECK(events[1].level == proxy::Options::Event::Level::info);
    proxy::record_failure(h, p, proxy::FailureKind::connect, "refused", 1, 1, who, events);
    REQUIRE(events.size() == 3);
    CHECK(events[2].message == "endpoint failing");
    CHECK(h.handshake_failures == 5);
    CHECK(h.connect_failures == 1);
}

TEST_CASE("health: active checks take an address out after unhealthyThreshold and back after healthyThreshold")
{
    proxy::AddressHealth h;
    proxy::HealthPolicy p;
    p.unhealthy_threshold = 3;
    p.healthy_threshold = 2;
    proxy::HealthSubject who{"default", "web", "10.0.0.1:443", std::nullopt, 443};
    std::vector<proxy::Options::Event> events;
    proxy::record_check(h, p, false, "connection refused", 1, who, events);
    proxy::record_check(h, p, false, "connection refused", 2, who, events);
    CHECK(h.usable(0));
    proxy::record_check(h, p, true, "", 3, who, events);  // a pass breaks the run
    for (int i = 0; i < 2; ++i) proxy::record_check(h, p, false, "connection refused", 4, who, events);
    CHECK(h.usable(0));
    CHECK(events.empty());
    proxy::record_check(h, p, false, "connection refused", 5, who, events);
    CHECK_FALSE(h.usable(0));
    REQUIRE(events.size() == 1);
    CHECK(events[0].message == "endpoint fails its health checks");
    CHECK(events[0].level == proxy::Options::Event::Level::warn);
    proxy::record_check(h, p, true, "", 6, who, events);
    CHECK_FALSE(h.usable(0));
    proxy::record_check(h, p, true, "", 7, who, events);
    CHECK(h.usable(0));
    REQUIRE(events.size() == 2);
    CHECK(events[1].message == "endpoint passes its health checks again");
    CHECK(h.checks_passed == 3);
    CHECK(h.checks_failed == 5);
    CHECK(h.last_check == 7);
}

TEST_CASE("health: failure times are written as RFC 3339 UTC")
{
    CHECK(proxy::rfc3339(0).empty());
    CHECK(proxy::rfc3339(1700000000123) == "2023-11-14T22:13:20.123Z");
}

TEST_CASE("health: proxy.healthCheck is read with its defaults and its errors have a place")
{
    auto off = conf::load_config_text("proxy:\n  connectAttempts: 2\n", "m.yaml");
    REQUIRE(off.ok());
    CHECK_FALSE(off.config.proxy.health_check.enabled);
    auto on = conf::load_config_text("proxy:\n  healthCheck:\n    interval: 3s\n    unhealthyThreshold: 5\n", "m.yaml");
    REQUIRE(on.ok());
    CHECK(on.config.proxy.health_check.enabled);  // an interval turns checks on
    CHECK(on.config.proxy.health_check.interval == std::chrono::seconds(3));
    CHECK(on.config.proxy.health_check.timeout == std::chrono::seconds(2));
    CHECK(on.config.proxy.health_check.unhealthy_threshold == 5);
    CHECK(on.config.proxy.health_check.healthy_threshold == 2);
    auto kept = conf::load_config_text("proxy:\n  healthCheck: {enabled: false, interval: 3s}\n", "m.yaml");
    REQUIRE(kept.ok());
    CHECK_FALSE(kept.config.proxy.health_check.enabled);  // for the MES labelled "true" only
    auto plain = conf::load_config_text("proxy:\n  healthCheck: {enabled: true}\n", "m.yaml");
    REQUIRE(plain.ok());
    CHECK(plain.config.proxy.health_check.enabled);
    CHECK(plain.config.proxy.health_check.interval == std::chrono::seconds(10));

    auto bad = conf::load_config_text("proxy:\n  healthCheck:\n    interval: soon\n    healthyThreshold: 0\n    color: red\n", "m.yaml");
    std::vector<std::string> lines;
    for (const auto& e : bad.errors) lines.push_back(e.format());
    REQUIRE(lines.size() >= 2);
    CHECK(lines[0] == "m.yaml:3:15: proxy.healthCheck.interval: must be a duration such as 500ms, 30s, 5m or 1h, got \"soon\"");
    CHECK(lines[1] == "m.yaml:4:23: proxy.healthCheck.healthyThreshold: must be between 1 and 100");
    auto order = conf::load_config_text("proxy:\n  healthCheck: {interval: 1s, timeout: 2s}\n", "m.yaml");
    REQUIRE(order.errors.size() == 1);
    CHECK_THAT(order.errors[0].format(), Catch::StartsWith("m.yaml:2:16: proxy.healthCheck.timeout: must not be above"));
}

// ---- through the running mesd ---------------------------------------------------------------

TEST_CASE("health: a black-holed address of a DNS name is ejected alone and later connections go straight to the others")
{
    Dir work;
    int port = free_tcp_port();
    Backend one("127.0.77.21", port, "twentyone");
    Backend two("127.0.77.22", port, "twentytwo");
    // SYNs to the third address vanish, as behind a firewall that drops them.
    DropRule drop({"-o", "lo", "-d", "127.0.77.23", "-p", "tcp", "--dport", std::to_string(port), "-j", "DROP"});
    auto hosts = work.write("hosts", "127.0.77.21 backend.health.test\n127.0.77.22 backend.health.test\n"
                                     "127.0.77.23 backend.health.test\n");
    int dns_port = free_dual_port();
    Child dnsmasq({"/usr/sbin/dnsmasq", "-k", "--user=root", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                   "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--local-ttl=60", "--addn-hosts=" + hosts,
                   "--port=" + std::to_string(dns_port)},
                  (work.path / "dnsmasq.out").string(), (work.path / "dnsmasq.err").string());
    REQUIRE(eventually([&] {
        return output_of({dig, "@127.0.0.1", "-p", std::to_string(dns_port), "backend.health.test", "+short", "+tries=1", "+time=1"})
                   .find("127.0.77.23") != std::string::npos;
    }));
    Fixture f(mes("blackholed", 7301, list(ep("backend.health.test", port))),
              "  connectTimeout: 1s\n  ejectAfter: 1\n  ejectBase: 60s\n  resolvers: [\"127.0.0.1:" + std::to_string(dns_port) + "\"]\n");
    auto vip = f.vip("blackholed");
    auto timed = [&](std::string& got) {
        auto start = std::chrono::steady_clock::now();
        got = fetch(vip, 7301);
        return std::chrono::steady_clock::now() - start;
    };
    // The first round meets every address once: one connection stalls a connect timeout,
    // then gets through on another address.
    int stalls = 0;
    for (int i = 0; i < 3; ++i) {
        std::string got;
        if (timed(got) > 800ms) ++stalls;
        CHECK((got == "twentyone" || got == "twentytwo"));
    }
    CHECK(stalls == 1);
    auto entry = f.address_entry("blackholed", "127.0.77.23:" + std::to_string(port));
    CHECK_THAT(entry, Catch::Contains("\"state\": \"ejected\""));
    CHECK_THAT(entry, Catch::Contains("\"lastFailureReason\": \"connect timed out\""));
    CHECK_THAT(f.address_entry("blackholed", "127.0.77.21:" + std::to_string(port)), Catch::Contains("\"state\": \"healthy\""));
    auto service = f.service("blackholed");
    CHECK_THAT(service, Catch::Contains("\"health\": \"failing\""));  // partly: one address of three
    CHECK_THAT(service, Catch::Contains("\"resolved\""));
    // From now on no connection waits: the ejected address is passed over.
    std::map<std::string, int> answers;
    for (int i = 0; i < 9; ++i) {
        std::string got;
        CHECK(timed(got) < 700ms);
        ++answers[got];
    }
    CHECK(answers["twentyone"] + answers["twentytwo"] == 9);
    CHECK(answers["twentyone"] >= 3);
    CHECK(answers["twentytwo"] >= 3);
    CHECK(eventually([&] {
        return f.log_count("msg=\"endpoint ejected\" mesh=default name=blackholed endpoint=backend.health.test:" + std::to_string(port) +
                           " address=127.0.77.23:" + std::to_string(port) + " failures=1 for=60s reason=\"connect timed out\"") == 1;
    }));
}

TEST_CASE("health: a TLS failure is logged at each turn to failing and back, counted apart, and not retried on the same endpoint")
{
    Dir dir;
    auto ca = make_ca("mesd test CA");
    auto other_ca = make_ca("someone else's CA");
    auto leaf = make_leaf(ca, "api.test", {"DNS:api.test", "IP:127.0.0.1"});
    auto stranger = make_leaf(other_ca, "api.test", {"DNS:api.test", "IP:127.0.0.1"});
    int flip_port = free_tcp_port();
    int bad_port = free_tcp_port();
    int good_port = free_tcp_port();
    auto bad = std::make_unique<TlsServer>(dir, "bad", stranger, flip_port);
    TlsServer always_bad(dir, "always-bad", stranger, bad_port);
    TlsServer always_good(dir, "always-good", leaf, good_port);
    const std::string tls = "  tls:\n    enabled: true\n    verification:\n      caCert:\n        inlineString: |\n" + indent(ca.cert_pem, 10);
    const std::string checked = "labels:\n  mesd.io/health-check: \"true\"\n";
    Fixture f(mes("flip", 7311, list(ep("127.0.0.1", flip_port))) + tls +
                  mes("bad-checked", 7312, list(ep("127.0.0.1", bad_port)), checked) + tls +
                  mes("good-checked", 7313, list(ep("127.0.0.1", good_port)), checked) + tls,
              "  connectTimeout: 2s\n  ejectAfter: 100\n  connectAttempts: 3\n"
              "  healthCheck: {enabled: false, interval: 300ms, timeout: 250ms, unhealthyThreshold: 2}\n");
    auto vip = f.vip("flip");
    const std::string endpoint = "127.0.0.1:" + std::to_string(flip_port);
    const std::string failing = "msg=\"endpoint failing\" mesh=default name=flip endpoint=" + endpoint + " kind=handshake "
                                "reason=\"certificate verify failed";
    CHECK(say(vip, 7311, "hello\n").empty());
    CHECK(say(vip, 7311, "hello\n").empty());
    // A certificate that does not verify is tried once per client, not connectAttempts times.
    auto service = f.service("flip");
    CHECK_THAT(service, Catch::Contains("\"handshakeFailures\": 2"));
    CHECK_THAT(service, Catch::Contains("\"connectFailures\": 0"));
    CHECK_THAT(service, Catch::Contains("\"lastFailureReason\": \"certificate verify failed"));
    CHECK(std::regex_search(service, std::regex("\"lastFailure\": \"\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z\"")));
    CHECK_THAT(service, !Catch::Contains("\"check\""));  // no label, checks off
    CHECK(f.metric("mesd_mes_endpoint_handshake_failures_total{mesh=\"default\",name=\"flip\",endpoint=\"" + endpoint + "\"}") == 2);
    CHECK(eventually([&] { return f.log_count(failing) == 1; }));  // once for the two clients

    // The endpoint is fixed: back to healthy, logged; broken again: logged again.
    bad.reset();
    auto good = std::make_unique<TlsServer>(dir, "good", leaf, flip_port);
    CHECK(say(vip, 7311, "hello\n") == "olleh\n");
    CHECK(eventually([&] { return f.log_count("msg=\"endpoint healthy again\" mesh=default name=flip endpoint=" + endpoint) == 1; }));
    good.reset();
    bad = std::make_unique<TlsServer>(dir, "bad-again", stranger, flip_port);
    CHECK(say(vip, 7311, "hello\n").empty());
    CHECK(eventually([&] { return f.log_count(failing) == 2; }));

    // Active checks with the handshake, for the MES labelled so: a certificate that does not
    // verify fails them, a good one passes.
    CHECK(eventually([&] { return f.service("bad-checked").find("\"health\": \"unhealthy\"") != std::string::npos; }, 5s));
    auto bad_checked = f.service("bad-checked");
    CHECK_THAT(bad_checked, Catch::Contains("\"state\": \"failing\""));
    CHECK_THAT(bad_checked, Catch::Contains("\"connectFailures\": 0"));  // no client went there
    CHECK(eventually([&] {
        return f.log_count("msg=\"endpoint fails its health checks\" mesh=default name=bad-checked endpoint=127.0.0.1:" +
                           std::to_string(bad_port) + " checks=2 reason=\"certificate verify failed") == 1;
    }));
    CHECK(eventually([&] { return f.service("good-checked").find("\"state\": \"passing\"") != std::string::npos; }));
    CHECK_THAT(f.service("good-checked"), Catch::Contains("\"health\": \"healthy\""));
    CHECK(f.metric("mesd_mes_endpoint_health_checks_total{mesh=\"default\",name=\"good-checked\",endpoint=\"127.0.0.1:" +
                   std::to_string(good_port) + "\",result=\"failed\"}") == 0);
}

TEST_CASE("health: active checks mark a backend that goes away before any client comes, and bring it back")
{
    int p1 = free_tcp_port(), p2 = free_tcp_port(), dead = free_tcp_port();
    Backend one("127.0.0.1", p1, "one");
    auto two = std::make_unique<Backend>("127.0.0.1", p2, "two");
    Fixture f(mes("checked", 7321, "[" + ep("127.0.0.1", p1) + ", " + ep("127.0.0.1", p2) + "]") +
                  mes("unchecked", 7322, "[" + ep("127.0.0.1", dead) + "]", "labels:\n  mesd.io/health-check: \"false\"\n"),
              "  healthCheck: {interval: 200ms, timeout: 150ms, unhealthyThreshold: 2, healthyThreshold: 2}\n");
    const std::string second = "127.0.0.1:" + std::to_string(p2);
    auto checks = [&](const std::string& name, const std::string& endpoint, const std::string& result) {
        return f.metric("mesd_mes_endpoint_health_checks_total{mesh=\"default\",name=\"" + name + "\",endpoint=\"" + endpoint +
                        "\",result=\"" + result + "\"}");
    };
    REQUIRE(eventually([&] { return checks("checked", second, "passed") >= 1; }));
    two.reset();
    CHECK(eventually([&] { return f.address_entry("checked", second).find("\"health\": \"unhealthy\"") != std::string::npos; }));
    CHECK(f.metric("mesd_mes_connections_total{mesh=\"default\",name=\"checked\"}") == 0);  // no client yet
    CHECK(eventually([&] {
        return f.log_count("msg=\"endpoint fails its health checks\" mesh=default name=checked endpoint=" + second + " checks=2") == 1;
    }));
    // Clients go to the other endpoint only: none tries the one that fails its checks.
    auto vip = f.vip("checked");
    for (int i = 0; i < 4; ++i) CHECK(fetch(vip, 7321) == "one");
    CHECK_THAT(f.address_entry("checked", second), Catch::Contains("\"connectFailures\": 0"));

    two = std::make_unique<Backend>("127.0.0.1", p2, "two");
    CHECK(eventually([&] {
        return f.log_count("msg=\"endpoint passes its health checks again\" mesh=default name=checked endpoint=" + second) == 1;
    }));
    std::map<std::string, int> answers;
    for (int i = 0; i < 4; ++i) ++answers[fetch(vip, 7321)];
    CHECK(answers["one"] == 2);
    CHECK(answers["two"] == 2);

    // The MES labelled off is never checked.
    CHECK(checks("unchecked", "127.0.0.1:" + std::to_string(dead), "failed") == -1);
    CHECK_THAT(f.service("unchecked"), !Catch::Contains("\"check\""));
    CHECK_THAT(f.service("unchecked"), Catch::Contains("\"health\": \"healthy\""));
}
