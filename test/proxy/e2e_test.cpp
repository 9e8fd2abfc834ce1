// The running mesd carrying connections to real backends (socat, nginx, a DNS server that
// names them) for real clients (nc, socat, curl), on loopback or in a network namespace.
#include "conf/conf.hpp"
#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/text.hpp"
#include "test/support/netns.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string socat = "/usr/bin/socat";
const std::string nc = "/usr/bin/nc";
const std::string curl = "/usr/bin/curl";
const std::string dig = "/usr/bin/dig";
const std::string sh = "/bin/sh";
const std::string ip = "/usr/sbin/ip";

sockaddr_in address(const std::string& host, int port)
{
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    ::inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
    return addr;
}

// A TCP socket listening on 127.0.0.1 (a port the kernel picks) with `backlog`, and its port.
std::pair<int, int> listening_socket(int backlog)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    auto addr = address("127.0.0.1", 0);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd, backlog) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    return {fd, ntohs(addr.sin_port)};
}

struct Reply {
    std::string data;
    int error = 0;  // errno of the read that ended it; 0 for a clean EOF
    bool timed_out = false;
};

// Reads until EOF, an error or `wait` without data.
Reply read_all(int fd, std::chrono::milliseconds wait = 5s)
{
    Reply r;
    char buf[65536];
    while (true) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) {
            r.timed_out = true;
            return r;
        }
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            r.data.append(buf, static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0) r.error = errno;
        return r;
    }
}

// Connects, sends `input`, shuts down the sending side and reads the whole reply.
Reply exchange(const std::string& host, int port, const std::string& input, std::chrono::milliseconds wait = 5s)
{
    int fd = connect_to(host, port);
    if (fd < 0) return Reply{"", errno, false};
    if (!input.empty()) (void)!::send(fd, input.data(), input.size(), MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
    auto r = read_all(fd, wait);
    ::close(fd);
    return r;
}

// socat listening on HOST:PORT (or a unix path), running `action` for each connection.
struct Backend {
    std::unique_ptr<Child> child;
    std::string host;
    int port = 0;

    Backend(const std::string& h, int p, const std::string& action, std::vector<std::string> wrapper = {})
        : host(h), port(p)
    {
        auto argv = wrapper;
        argv.insert(argv.end(), {socat, "TCP-LISTEN:" + std::to_string(port) + ",bind=" + host + ",fork,reuseaddr", action});
        child = std::make_unique<Child>(argv);
        if (wrapper.empty()) {
            REQUIRE(eventually([&] { return accepting(host, port); }));
        } else {
            std::this_thread::sleep_for(300ms);
        }
    }
    Backend(const std::string& h, const std::string& action) : Backend(h, free_tcp_port(), action) {}
};

struct UnixBackend {
    std::unique_ptr<Child> child;
    std::string path;
    UnixBackend(std::string p, const std::string& action) : path(std::move(p))
    {
        child = std::make_unique<Child>(std::vector<std::string>{socat, "UNIX-LISTEN:" + path + ",fork", action});
        REQUIRE(eventually([&] { return std::filesystem::exists(path); }));
    }
};

const std::string generator =
    "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

std::string mes(const std::string& name, std::optional<int> port, const std::string& endpoints,
                const std::string& protocol = "tcp")
{
    std::string match = port ? "{port: " + std::to_string(*port) + ", protocol: " + protocol + "}" : "{protocol: " + protocol + "}";
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: " + match + "\n  endpoints: " + endpoints + "\n";
}

std::string ep(const std::string& host, int port, int priority = 0)
{
    return "{address: " + host + ", port: " + std::to_string(port) + ", priority: " + std::to_string(priority) + "}";
}

struct Fixture {
    Dir dir;
    std::unique_ptr<Mesd> mesd;

    // `resources` go into a --conf-dir; `proxy` lines under `proxy:`.
    explicit Fixture(const std::string& resources, const std::string& proxy = "", MesdOptions options = {})
    {
        dir.write("resources/all.yaml", generator + resources);
        options.conf_dir = (dir.path / "resources").string();
        if (options.dns_section.empty()) options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config +=
            "proxy:\n" + (proxy.find("connectTimeout") == std::string::npos ? std::string("  connectTimeout: 2s\n") : "") + proxy;
        mesd = std::make_unique<Mesd>(dir.path / "mesd", options);
    }
    std::string vip(const std::string& name) const
    {
        return trim(output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd->dns_port()), name + ".mesh", "+short",
                               "+tries=1", "+time=2"}));
    }
    std::string config() const
    {
        auto r = mesd->admin_get("/config");
        return r.substr(r.find("\r\n\r\n") + 4);
    }
    std::string metrics() const { return mesd->admin_get("/metrics"); }
    // The value of one metric line ("name{labels}"), or -1.
    long long metric(const std::string& series) const
    {
        auto text = metrics();
        auto at = text.find("\n" + series + " ");
        if (at == std::string::npos) return -1;
        return std::stoll(text.substr(at + series.size() + 2));
    }
    RunResult mesctl(std::vector<std::string> args) const
    {
        args.insert(args.begin(), {MESCTL_PATH, "--config", mesd->config()});
        return run(args);
    }
    long rss_kib() const
    {
        std::ifstream in("/proc/" + std::to_string(mesd->pid()) + "/status");
        std::string line;
        while (std::getline(in, line))
            if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
        return -1;
    }
    std::size_t open_fds() const
    {
        std::size_t n = 0;
        for ([[maybe_unused]] const auto& e :
             std::filesystem::directory_iterator("/proc/" + std::to_string(mesd->pid()) + "/fd"))
            ++n;
        return n;
    }
};

std::string series(const std::string& metric, const std::string& name, const std::string& endpoint = "")
{
    std::string s = metric + "{mesh=\"default\",name=\"" + name + "\"";
    if (!endpoint.empty()) s += ",endpoint=\"" + endpoint + "\"";
    return s + "}";
}

// A network namespace set up as the README's redirect mode asks: the pool routed (so that
// connects reach the nat table) and redirected to 127.0.0.1:15001, except mesd's own
// connections (marked 0x4d45).
void route_pool_to_redirect_listener(const Namespace& netns)
{
    REQUIRE(netns.in({ip, "route", "add", "242.0.0.0/8", "dev", "lo", "src", "127.0.0.1"}).exit_code == 0);
    REQUIRE(netns.in({"/usr/sbin/iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "242.0.0.0/8", "-m", "mark",
                      "!", "--mark", "0x4d45", "-j", "REDIRECT", "--to-ports", "15001"})
                .exit_code == 0);
}

// mesd in `netns` in redirect mode on that listener, its resources from `dir`/resources.
MesdOptions redirect_mesd_options(const Namespace& netns, const Dir& dir)
{
    MesdOptions options;
    options.wrapper = netns.exec;
    options.vip_section = "  ipv4: 242.0.0.0/8\n";
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  mode: redirect\n  redirectListen: 127.0.0.1:15001\n  upstreamMark: 0x4d45\n";
    return options;
}

}  // namespace

TEST_CASE("nc and socat echo through an IP endpoint and a unix socket endpoint, curl reaches nginx")
{
    Dir work;
    Backend echo("127.0.0.1", "EXEC:cat");
    UnixBackend unix_echo((work.path / "echo.sock").string(), "EXEC:cat");

    // nginx on loopback with its files, logs and pid in the test's directory.
    int web_port = free_tcp_port();
    work.write("www/hello.txt", "hello from nginx\n");
    work.write("nginx.conf", nginx_config(work.path, "    listen 127.0.0.1:" + std::to_string(web_port) + ";\n    root " +
                                                         (work.path / "www").string() + ";\n"));
    Child nginx({"/usr/sbin/nginx", "-c", (work.path / "nginx.conf").string(), "-e", (work.path / "nginx.err").string()});
    REQUIRE(eventually([&] { return accepting("127.0.0.1", web_port); }));

    Fixture f(mes("echo", 4242, "[" + ep("127.0.0.1", echo.port) + "]") +
              mes("sock", 4243, "[{address: unix://" + (work.path / "echo.sock").string() + "}]") +
              mes("web", 8080, "[" + ep("127.0.0.1", web_port) + "]", "http"));
    auto echo_vip = f.vip("echo"), sock_vip = f.vip("sock"), web_vip = f.vip("web");
    REQUIRE(echo_vip == "127.242.0.1");

    SECTION("nc")
    {
        auto r = run({nc, "-N", "-w", "5", echo_vip, "4242"}, "hello through mesd\n");
        CHECK(r.out == "hello through mesd\n");
        r = run({nc, "-N", "-w", "5", sock_vip, "4243"}, "hello over a unix socket\n");
        CHECK(r.out == "hello over a unix socket\n");
    }
    SECTION("socat")
    {
        auto r = run({socat, "-t", "5", "-", "TCP:" + echo_vip + ":4242"}, "line one\nline two\n");
        CHECK(r.out == "line one\nline two\n");
    }
    SECTION("curl")
    {
        auto r = run({curl, "-sS", "--max-time", "5", "http://" + web_vip + ":8080/hello.txt"});
        CHECK(r.out == "hello from nginx\n");
        // A keep-alive connection carrying several requests.
        r = run({curl, "-sS", "--max-time", "5", "http://" + web_vip + ":8080/hello.txt",
                 "http://" + web_vip + ":8080/hello.txt", "http://" + web_vip + ":8080/missing"});
        CHECK(r.out.find("hello from nginx\nhello from nginx\n") == 0);
        CHECK(r.out.find("404 Not Found") != std::string::npos);
    }
    CHECK(eventually([&] { return f.metric(series("mesd_mes_connections_active", "echo")) == 0; }));
    CHECK(f.metric("mesd_proxy_connections_active") >= 0);
    auto total = f.metric(series("mesd_mes_connections_total", "echo")) + f.metric(series("mesd_mes_connections_total", "sock")) +
                 f.metric(series("mesd_mes_connections_total", "web"));
    CHECK(total >= 1);
}

TEST_CASE("a 1 GiB upload and a 256 MiB download keep their checksums")
{
    // The backend hashes what it receives until EOF and sends the hash back (half-close on
    // the way); the other backend sends a known stream.
    const std::string stream = "openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f "
                               "-iv 00000000000000000000000000000000 -in /dev/zero 2>/dev/null";
    Backend hasher("127.0.0.1", "SYSTEM:sha256sum");
    Backend source("127.0.0.1", "SYSTEM:'" + stream + " | head -c 268435456'");
    Fixture f(mes("up", 5001, "[" + ep("127.0.0.1", hasher.port) + "]") +
              mes("down", 5002, "[" + ep("127.0.0.1", source.port) + "]"));

    auto expected_up = run({sh, "-c", stream + " | head -c 1073741824 | sha256sum"}).out;
    auto through_up = run({sh, "-c", stream + " | head -c 1073741824 | " + nc + " -N " + f.vip("up") + " 5001"});
    CHECK(expected_up.size() > 64);
    CHECK(through_up.out == expected_up);

    auto expected_down = run({sh, "-c", stream + " | head -c 268435456 | sha256sum"}).out;
    auto through_down = run({sh, "-c", nc + " -d " + f.vip("down") + " 5002 | sha256sum"});
    CHECK(through_down.out == expected_down);

    CHECK(f.metric(series("mesd_mes_bytes_sent_total", "up")) == 1073741824);
    CHECK(f.metric(series("mesd_mes_bytes_received_total", "down")) == 268435456);
}

TEST_CASE("half-close passes through in both directions")
{
    // wc -c answers only once it has seen EOF: the client's shutdown must reach it, and the
    // answer must still come back over the half-open connection.
    Backend counter("127.0.0.1", "SYSTEM:'wc -c'");
    Fixture f(mes("count", 6001, "[" + ep("127.0.0.1", counter.port) + "]"));
    auto r = run({nc, "-N", "-w", "5", f.vip("count"), "6001"}, std::string(123457, 'x'));
    CHECK(trim(r.out) == "123457");
    auto direct = exchange(f.vip("count"), 6001, "abc");
    CHECK(trim(direct.data) == "3");
    CHECK(direct.error == 0);
    CHECK_FALSE(direct.timed_out);
}

TEST_CASE("a reset on one side reaches the other")
{
    // A backend that accepts, reads a little and closes with SO_LINGER 0 (an RST).
    auto [listener, port] = listening_socket(8);
    std::jthread resetter([listener] {
        int c = ::accept(listener, nullptr, nullptr);
        if (c < 0) return;
        char buf[16];
        (void)!::recv(c, buf, sizeof buf, 0);
        linger l{1, 0};
        ::setsockopt(c, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        ::close(c);
    });
    Fixture f(mes("rst", 6002, "[" + ep("127.0.0.1", port) + "]"));
    int fd = connect_to(f.vip("rst"), 6002);
    REQUIRE(fd >= 0);
    REQUIRE(::send(fd, "x", 1, MSG_NOSIGNAL) == 1);
    auto r = read_all(fd, 5s);
    ::close(fd);
    CHECK_FALSE(r.timed_out);
    CHECK(r.error == ECONNRESET);
    ::close(listener);
}

TEST_CASE("a client that stops reading keeps mesd's memory bounded, and the flow resumes")
{
    Backend flood("127.0.0.1", "SYSTEM:'cat /dev/zero'");
    Fixture f(mes("flood", 6003, "[" + ep("127.0.0.1", flood.port) + "]"));
    long before = f.rss_kib();
    int fd = connect_to(f.vip("flood"), 6003);
    REQUIRE(fd >= 0);
    int small = 64 * 1024;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    std::this_thread::sleep_for(3s);  // the backend would send gigabytes in this time
    long during = f.rss_kib();
    auto carried = f.metric(series("mesd_mes_bytes_received_total", "flood"));
    INFO("RSS before " << before << " KiB, while stalled " << during << " KiB, carried " << carried << " bytes");
    CHECK(during - before < 8 * 1024);
    CHECK(carried < 64ll * 1024 * 1024);  // socket buffers and one watermark, not the flood

    // Reading again lets it flow.
    std::size_t got = 0;
    char buf[65536];
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (got < (64u << 20) && std::chrono::steady_clock::now() < deadline) {
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    ::close(fd);
    CHECK(got >= (64u << 20));
    CHECK(f.rss_kib() - before < 8 * 1024);
}

TEST_CASE("priorities, failover to the next endpoint and round robin")
{
    Backend a("127.0.0.1", "SYSTEM:'echo a'");
    Backend b("127.0.0.1", "SYSTEM:'echo b'");
    Backend c("127.0.0.1", "SYSTEM:'echo c'");
    int down = free_tcp_port();  // nothing listens here
    Fixture f(mes("prio", 7001, "[" + ep("127.0.0.1", down, 0) + ", " + ep("127.0.0.1", a.port, 1) + ", " +
                                    ep("127.0.0.1", c.port, 2) + "]") +
              mes("rr", 7002, "[" + ep("127.0.0.1", a.port) + ", " + ep("127.0.0.1", b.port) + "]"));
    auto prio = f.vip("prio"), rr = f.vip("rr");

    // The lowest priority is down: every connection still lands on priority 1, never 2.
    for (int i = 0; i < 4; ++i) CHECK(trim(exchange(prio, 7001, "").data) == "a");
    CHECK(f.metric(series("mesd_mes_endpoint_connect_failures_total", "prio", "127.0.0.1:" + std::to_string(down))) >= 1);

    // Round robin inside one priority.
    std::vector<std::string> seen;
    for (int i = 0; i < 6; ++i) seen.push_back(trim(exchange(rr, 7002, "").data));
    CHECK(seen == std::vector<std::string>{"a", "b", "a", "b", "a", "b"});
}

TEST_CASE("an endpoint that keeps failing is ejected, then comes back after its backoff")
{
    Backend spare("127.0.0.1", "SYSTEM:'echo spare'");
    int port = free_tcp_port();
    Fixture f(mes("flaky", 7003, "[" + ep("127.0.0.1", port, 0) + ", " + ep("127.0.0.1", spare.port, 1) + "]"),
              "  ejectAfter: 2\n  ejectBase: 2s\n  ejectMax: 10s\n");
    auto vip = f.vip("flaky");
    std::string label = "127.0.0.1:" + std::to_string(port);
    for (int i = 0; i < 2; ++i) CHECK(trim(exchange(vip, 7003, "").data) == "spare");
    CHECK(f.metric(series("mesd_mes_endpoint_ejections_total", "flaky", label)) == 1);
    CHECK(f.metric(series("mesd_mes_endpoint_healthy", "flaky", label)) == 0);
    CHECK(f.config().find("\"health\": \"ejected\"") != std::string::npos);

    // Back up; while ejected it is not tried, afterwards it is preferred again.
    Backend primary("127.0.0.1", port, "SYSTEM:'echo primary'");
    CHECK(trim(exchange(vip, 7003, "").data) == "spare");
    auto failures = f.metric(series("mesd_mes_endpoint_connect_failures_total", "flaky", label));
    CHECK(eventually([&] { return trim(exchange(vip, 7003, "").data) == "primary"; }, 5s));
    CHECK(f.metric(series("mesd_mes_endpoint_connect_failures_total", "flaky", label)) == failures);
    CHECK(f.metric(series("mesd_mes_endpoint_healthy", "flaky", label)) == 1);
}

TEST_CASE("when no endpoint can be reached the client is reset at once")
{
    int port1 = free_tcp_port(), port2 = free_tcp_port();
    Fixture f(mes("dead", 7004, "[" + ep("127.0.0.1", port1) + ", " + ep("127.0.0.1", port2) + "]"));
    auto start = std::chrono::steady_clock::now();
    // Nothing is sent: a send racing the reset would consume the error the read checks.
    int fd = connect_to(f.vip("dead"), 7004);
    REQUIRE(fd >= 0);
    auto r = read_all(fd, 5s);
    ::close(fd);
    auto took = std::chrono::steady_clock::now() - start;
    CHECK(r.data.empty());
    CHECK(r.error == ECONNRESET);
    CHECK(took < 1s);
    CHECK(f.metric(series("mesd_mes_connections_failed_total", "dead")) == 1);
    // connectAttempts (3) spent: both endpoints, then the first again.
    auto failures = f.metric(series("mesd_mes_endpoint_connect_failures_total", "dead", "127.0.0.1:" + std::to_string(port1))) +
                    f.metric(series("mesd_mes_endpoint_connect_failures_total", "dead", "127.0.0.1:" + std::to_string(port2)));
    CHECK(failures == 3);
}

TEST_CASE("a connect that times out moves on to the next endpoint")
{
    // A listener whose backlog is full never completes a handshake: connects to it hang.
    auto [hole, hole_port] = listening_socket(0);
    auto addr = address("127.0.0.1", hole_port);
    std::vector<int> fillers;
    for (int i = 0; i < 8; ++i) {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        ::fcntl(fd, F_SETFL, O_NONBLOCK);
        (void)!::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        fillers.push_back(fd);
    }
    Backend ok("127.0.0.1", "SYSTEM:'echo ok'");
    Fixture f(mes("slow", 7005, "[" + ep("127.0.0.1", hole_port, 0) + ", " + ep("127.0.0.1", ok.port, 1) + "]"),
              "  connectTimeout: 1s\n");
    auto start = std::chrono::steady_clock::now();
    auto r = exchange(f.vip("slow"), 7005, "", 10s);
    auto took = std::chrono::steady_clock::now() - start;
    CHECK(trim(r.data) == "ok");
    CHECK(took >= 900ms);
    CHECK(took < 5s);
    for (int fd : fillers) ::close(fd);
    ::close(hole);
}

TEST_CASE("connection limits reset the connections over them")
{
    Backend hold("127.0.0.1", "EXEC:cat");
    Fixture f(mes("limited", 7006, "[" + ep("127.0.0.1", hold.port) + "]") +
                  mes("other", 7007, "[" + ep("127.0.0.1", hold.port) + "]"),
              "  maxConnectionsPerService: 2\n  maxConnections: 3\n");
    auto limited = f.vip("limited"), other = f.vip("other");
    int c1 = connect_to(limited, 7006), c2 = connect_to(limited, 7006);
    REQUIRE(c1 >= 0);
    REQUIRE(c2 >= 0);
    CHECK(eventually([&] { return f.metric(series("mesd_mes_connections_active", "limited")) == 2; }));
    // A third to the same MES is over its limit.
    auto r = exchange(limited, 7006, "");
    CHECK(r.error == ECONNRESET);
    CHECK(f.metric(series("mesd_mes_connections_refused_total", "limited")) == 1);
    // Another MES still has room under the global limit of 3, then that is full too.
    int c3 = connect_to(other, 7007);
    REQUIRE(c3 >= 0);
    CHECK(eventually([&] { return f.metric("mesd_proxy_connections_active") == 3; }));
    CHECK(exchange(other, 7007, "").error == ECONNRESET);
    // The ones inside the limits work.
    REQUIRE(::send(c1, "ping\n", 5, MSG_NOSIGNAL) == 5);
    char buf[8] = {};
    CHECK(::recv(c1, buf, sizeof buf, 0) == 5);
    for (int fd : {c1, c2, c3}) ::close(fd);
    CHECK(eventually([&] { return f.metric("mesd_proxy_connections_active") == 0; }));
    CHECK(trim(exchange(limited, 7006, "again\n").data) == "again");
}

TEST_CASE("a MES added and removed while connections are open")
{
    Backend echo("127.0.0.1", "EXEC:cat");
    Fixture f(mes("first", 7008, "[" + ep("127.0.0.1", echo.port) + "]"));
    auto first = f.vip("first");
    int open = connect_to(first, 7008);
    REQUIRE(open >= 0);

    // Added: listening within a second of the apply.
    f.dir.write("more.yaml", mes("second", 7009, "[" + ep("127.0.0.1", echo.port) + "]").substr(4));
    REQUIRE(f.mesctl({"apply", "-f", (f.dir.path / "more.yaml").string()}).exit_code == 0);
    std::string second;
    REQUIRE(eventually([&] { return (second = f.vip("second")) == "127.242.0.2"; }, 1500ms));
    CHECK(eventually([&] { return trim(exchange(second, 7009, "new\n").data) == "new"; }, 1500ms));

    // Removed: no new connections, the open one carries on.
    REQUIRE(f.mesctl({"delete", "mes", "second"}).exit_code == 0);
    CHECK(eventually([&] {
        int fd = connect_to(second, 7009);
        if (fd >= 0) ::close(fd);
        return fd < 0;
    }, 1500ms));
    // The conf-dir does not name "first" any more either once it is rewritten.
    f.dir.write("resources/all.yaml", generator);
    CHECK(eventually([&] {
        int fd = connect_to(first, 7008);
        if (fd >= 0) ::close(fd);
        return fd < 0;
    }, 3s));
    REQUIRE(::send(open, "still here\n", 11, MSG_NOSIGNAL) == 11);
    char buf[32] = {};
    CHECK(::recv(open, buf, sizeof buf, 0) == 11);
    CHECK(std::string(buf) == "still here\n");
    ::close(open);
}

TEST_CASE("a DNS-named endpoint follows its record, resolved through a real DNS server")
{
    Dir work;
    int port = free_tcp_port();
    Backend eleven("127.0.0.11", port, "SYSTEM:'echo eleven'");
    Backend twelve("127.0.0.12", port, "SYSTEM:'echo twelve'");
    auto hosts = work.write("hosts", "127.0.0.11 backend.ext.test\n");
    int dns_port = free_dual_port();  // dnsmasq binds TCP on it too
    Child dnsmasq({"/usr/sbin/dnsmasq", "-k", "--user=root", "--listen-address=127.0.0.1", "--bind-interfaces",
                   "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--local-ttl=1",
                   "--addn-hosts=" + hosts, "--port=" + std::to_string(dns_port)},
                  (work.path / "dnsmasq.out").string(), (work.path / "dnsmasq.err").string());
    auto lookup = [&] {
        return trim(output_of({dig, "@127.0.0.1", "-p", std::to_string(dns_port), "backend.ext.test", "+short",
                               "+tries=1", "+time=1"}));
    };
    REQUIRE(eventually([&] { return lookup() == "127.0.0.11"; }));

    Fixture f(mes("named", 7010, "[{address: backend.ext.test, port: " + std::to_string(port) + "}]") +
                  mes("unresolvable", 7011, "[{address: nothing.ext.test, port: " + std::to_string(port) + "}]"),
              "  resolvers: [\"127.0.0.1:" + std::to_string(dns_port) + "\"]\n  dnsMinTtl: 1s\n  resolveTimeout: 1s\n");
    auto vip = f.vip("named");
    CHECK(trim(exchange(vip, 7010, "").data) == "eleven");
    CHECK(f.config().find("\"127.0.0.11\"") != std::string::npos);

    // The record changes; within its TTL (1 s) and a refresh, new connections follow it.
    std::ofstream(hosts) << "127.0.0.12 backend.ext.test\n";
    dnsmasq.signal(SIGHUP);
    REQUIRE(eventually([&] { return lookup() == "127.0.0.12"; }));
    CHECK(eventually([&] { return trim(exchange(vip, 7010, "").data) == "twelve"; }, 5s));

    // A name with a dead address among its records: each attempt takes another address,
    // so every client gets through.
    std::ofstream(hosts) << "127.0.0.13 backend.ext.test\n127.0.0.12 backend.ext.test\n";
    dnsmasq.signal(SIGHUP);
    REQUIRE(eventually([&] { return lookup().find("127.0.0.13") != std::string::npos; }));
    std::this_thread::sleep_for(2500ms);  // the proxy's copy expires (TTL 1 s) and is asked again
    for (int i = 0; i < 6; ++i) CHECK(trim(exchange(vip, 7010, "").data) == "twelve");
    CHECK(f.config().find("\"127.0.0.13\"") != std::string::npos);

    // A name that does not resolve fails its own MES only, at once.
    auto r = exchange(f.vip("unresolvable"), 7011, "");
    CHECK(r.error == ECONNRESET);
    CHECK(f.config().find("\"health\": \"unresolved\"") != std::string::npos);
    CHECK(trim(exchange(vip, 7010, "").data) == "twelve");
}

TEST_CASE("a silent connection is closed after the idle timeout")
{
    Backend echo("127.0.0.1", "EXEC:cat");
    Fixture f(mes("idle", 7012, "[" + ep("127.0.0.1", echo.port) + "]"), "  idleTimeout: 1s\n");
    int fd = connect_to(f.vip("idle"), 7012);
    REQUIRE(fd >= 0);
    // Activity keeps it open past the timeout.
    for (int i = 0; i < 3; ++i) {
        std::this_thread::sleep_for(500ms);
        REQUIRE(::send(fd, "x", 1, MSG_NOSIGNAL) == 1);
        char c = 0;
        REQUIRE(::recv(fd, &c, 1, 0) == 1);
    }
    auto start = std::chrono::steady_clock::now();
    auto r = read_all(fd, 5s);
    auto took = std::chrono::steady_clock::now() - start;
    CHECK_FALSE(r.timed_out);
    CHECK(took >= 800ms);
    CHECK(took < 3s);
    ::close(fd);
}

TEST_CASE("in bind mode a MES without match.port is reported, and others are unaffected")
{
    Backend echo("127.0.0.1", "EXEC:cat");
    Fixture f(mes("anyport", std::nullopt, "[" + ep("127.0.0.1", echo.port) + "]") +
              mes("fine", 7013, "[" + ep("127.0.0.1", echo.port) + "]"));
    CHECK(eventually([&] { return f.mesd->log().find("msg=\"not listening\" mesh=default name=anyport") != std::string::npos; }));
    CHECK(f.config().find("match.port is not set") != std::string::npos);
    CHECK(trim(exchange(f.vip("fine"), 7013, "fine\n").data) == "fine");
}

TEST_CASE("many short connections leave no handles or memory behind")
{
    Backend hello("127.0.0.1", "SYSTEM:'echo hi'");
    Backend echo("127.0.0.1", "EXEC:cat");
    Fixture f(mes("short", 7014, "[" + ep("127.0.0.1", echo.port) + "]"));
    auto vip = f.vip("short");
    // Until `count` connections are done or `d` has passed (socat forks a cat for each, which
    // a loaded machine makes slow).
    auto run_for = [&](std::chrono::seconds d, int count = 1 << 30) {
        int done = 0;
        auto deadline = std::chrono::steady_clock::now() + d;
        while (done < count && std::chrono::steady_clock::now() < deadline) {
            int fd = connect_to(vip, 7014);
            if (fd < 0) continue;
            (void)!::send(fd, "x", 1, MSG_NOSIGNAL);
            ::shutdown(fd, SHUT_WR);
            char c;
            while (::recv(fd, &c, 1, 0) > 0) {
            }
            ::close(fd);
            ++done;
        }
        return done;
    };
    run_for(2s);  // warm up: pools and allocator reach their size
    CHECK(eventually([&] { return f.metric("mesd_proxy_connections_active") == 0; }));
    auto fds = f.open_fds();
    long rss = f.rss_kib();
    int n = run_for(20s, 300);
    INFO(n << " connections; RSS " << rss << " -> " << f.rss_kib() << " KiB");
    CHECK(n == 300);
    CHECK(eventually([&] { return f.metric("mesd_proxy_connections_active") == 0; }));
    // No more than before (a leak would add one per connection); with workers the first count
    // may have caught a closed connection's descriptor on its way out of a worker's loop.
    CHECK(eventually([&] { return f.open_fds() <= fds; }));
    CHECK(f.rss_kib() - rss < 2048);
}

TEST_CASE("redirect mode in a network namespace with the README's iptables rules, match.port omitted")
{
    Namespace netns("mesd-redirect");
    const auto& in_ns = netns.exec;
    auto ns_run = [&](std::vector<std::string> argv) { return netns.in(std::move(argv)); };
    route_pool_to_redirect_listener(netns);

    Dir dir;
    int web_port = 8765;
    auto responder = dir.write("respond.sh", "#!/bin/sh\nwhile IFS= read -r l; do case \"$l\" in \"$(printf '\\r')\"|\"\") break;; esac; done\nprintf 'HTTP/1.0 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\nhello\\n'\n");
    std::filesystem::permissions(responder, std::filesystem::perms::owner_all);
    Backend web("127.0.0.1", web_port, "SYSTEM:" + responder, in_ns);
    dir.write("resources/all.yaml", generator + mes("anywhere", std::nullopt, "[{address: 127.0.0.1}]"));
    Mesd mesd(dir.path / "mesd", redirect_mesd_options(netns, dir));
    CHECK(mesd.log().find("mode=redirect") != std::string::npos);

    // The endpoint has no port: the port dialled (8765) is used.
    auto r = ns_run({curl, "-sS", "--max-time", "5", "http://242.0.0.1:" + std::to_string(web_port) + "/"});
    CHECK(r.out == "hello\n");
    // A VIP no MES holds is reset, and counted.
    r = ns_run({curl, "-sS", "--max-time", "5", "http://242.0.0.99:" + std::to_string(web_port) + "/"});
    CHECK(r.exit_code != 0);
    auto metrics = ns_run({curl, "-sS", "--max-time", "5", "http://127.0.0.1:" + std::to_string(mesd.admin_port()) + "/metrics"}).out;
    CHECK(metrics.find("\nmesd_proxy_unrouted_total 1\n") != std::string::npos);
    CHECK(metrics.find("mesd_mes_connections_total{mesh=\"default\",name=\"anywhere\"} 1\n") != std::string::npos);
}

TEST_CASE("redirect mode: a MES's route is read when a connection first needs it, then follows changes and deletion")
{
    Namespace netns("mesd-redirect-lazy");
    const auto& in_ns = netns.exec;
    auto ns_run = [&](std::vector<std::string> argv, const std::string& input = {}) { return netns.in(std::move(argv), input); };
    route_pool_to_redirect_listener(netns);
    // Each reads the client's line before answering: a backend that closes with the line still
    // unread sends a reset, which can reach mesd before its answer does and discard it.
    Backend first("127.0.0.1", 9101, "SYSTEM:read line; echo first", in_ns);
    Backend second("127.0.0.1", 9102, "SYSTEM:read line; echo second", in_ns);

    Dir dir;
    auto ca = make_ca("mesd test CA");
    auto resources = [&](const std::string& echo_endpoint) {
        // `locked` originates TLS trusting the CA in a Secret.
        dir.write("resources/all.yaml",
                  generator + mes("echo", 7000, "[" + echo_endpoint + "]") + mes("quiet", 7000, "[" + ep("127.0.0.1", 9101) + "]") +
                      mes("locked", 7000, "[" + ep("127.0.0.1", 9101) + "]") +
                      "  tls:\n    enabled: true\n    verification:\n      caCert: {secret: backend-ca}\n"
                      "---\ntype: Secret\nname: backend-ca\nmesh: default\ndata: " + conf::base64_encode(ca.cert_pem) + "\n");
    };
    resources(ep("127.0.0.1", 9101));
    Mesd mesd(dir.path / "mesd", redirect_mesd_options(netns, dir));
    auto admin = [&](const std::string& path) {
        return ns_run({curl, "-sS", "--max-time", "5", "http://127.0.0.1:" + std::to_string(mesd.admin_port()) + path}).out;
    };
    auto vip_of = [&](const std::string& name) {
        return trim(ns_run({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), name + ".mesh", "+short"}).out);
    };
    auto talk = [&](const std::string& name) { return trim(ns_run({nc, "-N", "-w", "3", vip_of(name), "7000"}, "\n").out); };
    REQUIRE(admin("/ready") == "ready\n");

    // Nothing is held for a MES until a connection needs it.
    CHECK(admin("/config").find("\"services\": []") != std::string::npos);
    CHECK(mesd.log().find("TLS settings unusable") == std::string::npos);
    CHECK(talk("echo") == "first");
    auto config = admin("/config");
    CHECK(config.find("\"name\": \"echo\",\n      \"listeners\"") != std::string::npos);
    CHECK(config.find("\"name\": \"quiet\",\n      \"listeners\"") == std::string::npos);
    // Another port of the VIP is no route of it (match.port is 7000).
    CHECK(trim(ns_run({nc, "-N", "-w", "3", vip_of("echo"), "7001"}, "\n").out).empty());
    CHECK(admin("/metrics").find("\nmesd_proxy_unrouted_total 1\n") != std::string::npos);

    // The TLS settings are checked when the MES is first used: its Secret is gone, so it
    // refuses connections, and says why.
    REQUIRE(run({MESCTL_PATH, "--config", mesd.config(), "delete", "secret", "backend-ca", "--force"}).exit_code == 0);
    CHECK(talk("locked").empty());
    CHECK(eventually([&] { return mesd.log().find("msg=\"TLS settings unusable; refusing connections\" mesh=default name=locked") != std::string::npos; }));
    CHECK(admin("/config").find("\"tlsError\": \"tls.verification.caCert: Secret backend-ca not found\"") != std::string::npos);

    // A changed endpoint applies to the next connection; counters carry over.
    resources(ep("127.0.0.1", 9102));
    CHECK(eventually([&] { return talk("echo") == "second"; }, 5s));
    CHECK(admin("/metrics").find("mesd_mes_connections_total{mesh=\"default\",name=\"echo\"} ") != std::string::npos);

    // Deleted: forgotten, and its VIP no longer routed.
    std::string echo_vip = vip_of("echo");
    dir.write("resources/all.yaml", generator + mes("quiet", 7000, "[" + ep("127.0.0.1", 9101) + "]"));
    CHECK(eventually([&] { return admin("/config").find("\"name\": \"echo\"") == std::string::npos; }, 5s));
    CHECK(trim(ns_run({nc, "-N", "-w", "3", echo_vip, "7000"}, "\n").out).empty());
    CHECK(admin("/metrics").find("\nmesd_proxy_unrouted_total 2\n") != std::string::npos);
    CHECK(talk("quiet") == "first");
}

TEST_CASE("bind mode on 242.0.0.0/8: not listening until the README's local route exists, then listening by itself")
{
    Namespace netns("mesd-bind");
    const auto& in_ns = netns.exec;
    auto ns_run = [&](std::vector<std::string> argv, const std::string& input = {}) { return netns.in(std::move(argv), input); };
    Backend echo("127.0.0.1", 9007, "EXEC:cat", in_ns);
    Dir dir;
    dir.write("resources/all.yaml", generator + mes("echo", 4242, "[" + ep("127.0.0.1", 9007) + "]"));
    MesdOptions options;
    options.wrapper = in_ns;
    options.vip_section = "  ipv4: 242.0.0.0/8\n";
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);
    auto config = [&] {
        return ns_run({curl, "-sS", "--max-time", "5", "http://127.0.0.1:" + std::to_string(mesd.admin_port()) + "/config"}).out;
    };
    CHECK(eventually([&] { return mesd.log().find("msg=\"not listening\" mesh=default name=echo") != std::string::npos; }));
    CHECK(config().find("ip route add local 242.0.0.0/8 dev lo") != std::string::npos);

    REQUIRE(ns_run({ip, "route", "add", "local", "242.0.0.0/8", "dev", "lo"}).exit_code == 0);
    CHECK(eventually([&] { return ns_run({nc, "-N", "-w", "2", "242.0.0.1", "4242"}, "ping\n").out == "ping\n"; }, 8s));
    CHECK(config().find("listenError") == std::string::npos);
}

TEST_CASE("protocol http: curl's requests reach nginx with the endpoint's hostname as Host, bodies intact")
{
    Dir work;
    int web_port = free_tcp_port();
    work.write("www/big", std::string(3 << 20, 'z'));
    work.write("nginx.conf",
               nginx_config(work.path,
                            "    listen 127.0.0.1:" + std::to_string(web_port) + ";\n    root " + (work.path / "www").string() +
                                ";\n    location /host { return 200 \"host=$http_host\\n\"; }\n"
                                "    location /upload { client_body_in_single_buffer on; return 200 \"host=$http_host "
                                "length=$content_length\\n\"; }\n",
                            "  client_max_body_size 16m;\n"));
    Child nginx({"/usr/sbin/nginx", "-c", (work.path / "nginx.conf").string(), "-e", (work.path / "nginx.err").string()});
    REQUIRE(eventually([&] { return accepting("127.0.0.1", web_port); }));
    auto hosts = work.write("hosts", "127.0.0.1 web.ext.test\n");
    int dns_port = free_tcp_port();
    Child dnsmasq({"/usr/sbin/dnsmasq", "-k", "--user=root", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                   "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--addn-hosts=" + hosts,
                   "--port=" + std::to_string(dns_port)},
                  (work.path / "dnsmasq.out").string(), (work.path / "dnsmasq.err").string());
    REQUIRE(eventually([&] {
        return trim(output_of({dig, "@127.0.0.1", "-p", std::to_string(dns_port), "web.ext.test", "+short", "+tries=1",
                               "+time=1"})) == "127.0.0.1";
    }));

    std::string endpoint = "[{address: web.ext.test, port: " + std::to_string(web_port) + "}]";
    Fixture f(mes("web", 8090, endpoint, "http") + mes("raw", 8091, endpoint, "tcp"),
              "  resolvers: [\"127.0.0.1:" + std::to_string(dns_port) + "\"]\n");
    auto web = f.vip("web"), raw = f.vip("raw");

    // Rewritten for protocol http, left alone for tcp.
    CHECK(run({curl, "-sS", "--max-time", "5", "http://" + web + ":8090/host"}).out == "host=web.ext.test\n");
    CHECK(run({curl, "-sS", "--max-time", "5", "http://" + raw + ":8091/host"}).out == "host=" + raw + ":8091\n");

    // Keep-alive: several requests on one connection, a body with Content-Length, a chunked
    // one, one with Expect: 100-continue, and a large download between them.
    auto upload = work.write("upload", std::string(2 << 20, 'u'));
    auto r = run({curl, "-sS", "--max-time", "10", "http://" + web + ":8090/host", "--next", "-d", "@" + upload,
                  "http://" + web + ":8090/upload", "--next", "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + upload,
                  "http://" + web + ":8090/upload", "--next", "-H", "Expect: 100-continue", "--data-binary", "@" + upload,
                  "http://" + web + ":8090/upload", "--next", "-o", "/dev/null", "-w", "big=%{size_download}\\n",
                  "http://" + web + ":8090/big", "--next", "http://" + web + ":8090/host"});
    std::vector<std::string> lines;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    REQUIRE(lines.size() == 6);
    CHECK(lines[0] == "host=web.ext.test");
    CHECK(lines[1] == "host=web.ext.test length=2097152");
    CHECK(lines[2].starts_with("host=web.ext.test length="));  // chunked: nginx reports what it has read
    CHECK(lines[3] == "host=web.ext.test length=2097152");
    CHECK(lines[4] == "big=3145728");
    CHECK(lines[5] == "host=web.ext.test");
    CHECK(f.metric(series("mesd_mes_connections_total", "web")) == 2);  // curl kept one connection for the six

    // Not HTTP: a 400, then the connection ends.
    auto bad = exchange(web, 8090, "HELLO THERE\r\n\r\n");
    CHECK(bad.data.starts_with("HTTP/1.1 400 Bad Request\r\n"));
}
