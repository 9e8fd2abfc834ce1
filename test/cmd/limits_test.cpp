// The limits that protect the rest of mesd, through the real binary: descriptors shared out
// from a low RLIMIT_NOFILE (admin connections capped, the proxy kept to its share, so that
// /ready, DNS over TCP and proxying go on under floods), and core dumps off by default.
#include "proxy/accept.hpp"
#include "test/support/dns.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>
#include <uv.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

const std::vector<std::string> nofile_256 = {"/usr/bin/prlimit", "--nofile=256:256", "--"};

// A socket that listens and never accepts: the kernel completes connections into its
// backlog, so a proxied connection to it stays open on both sides.
struct SilentBackend {
    int fd = -1;
    int port = 0;
    SilentBackend()
    {
        fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(fd, 4096) == 0);
        socklen_t len = sizeof addr;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
        port = ntohs(addr.sin_port);
    }
    ~SilentBackend() { ::close(fd); }
};

// Sockets closed at the end of the test.
struct Sockets {
    std::vector<int> fds;
    ~Sockets()
    {
        for (int fd : fds) ::close(fd);
    }
};

std::string mes(const std::string& name, int port, int endpoint_port)
{
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(port) +
           ", protocol: tcp}\n  endpoints: [{address: 127.0.0.1, port: " + std::to_string(endpoint_port) + "}]\n";
}

struct LimitsFixture {
    TempDir dir;
    std::unique_ptr<Mesd> mesd;

    LimitsFixture(const std::string& resources, std::vector<std::string> wrapper, const std::string& proxy_lines = "")
    {
        dir.write("resources/all.yaml", "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
                                        "  template: \"{{ .Name }}.mesh\"\n" + resources);
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n  connectTimeout: 2s\n" + proxy_lines;
        options.wrapper = std::move(wrapper);
        mesd = std::make_unique<Mesd>(dir.path / "mesd", options);
    }
    int status(const std::string& path) const
    {
        auto r = mesd->admin_get(path);
        return r.rfind("HTTP/1.1 ", 0) == 0 ? std::stoi(r.substr(9, 3)) : -1;
    }
    long long metric(const std::string& name) const
    {
        auto text = mesd->admin_get("/metrics");
        auto at = text.find("\n" + name + " ");
        if (at == std::string::npos) return -1;
        return std::stoll(text.substr(at + name.size() + 2));
    }
    // A number from the "descriptors shared out" line of the log.
    long long shared(const std::string& key) const
    {
        std::smatch m;
        auto text = mesd->log();
        if (!std::regex_search(text, m, std::regex("msg=\"descriptors shared out\".* " + key + "=(\\d+)"))) return -1;
        return std::stoll(m[1]);
    }
    std::size_t open_fds() const
    {
        std::size_t n = 0;
        for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(mesd->pid()) + "/fd"))
            ++n;
        return n;
    }
    // One DNS query over TCP, answered NOERROR.
    bool tcp_answers(const std::string& name) const
    {
        int fd = tcp_connect(mesd->dns_port());
        auto stream = framed({raw_query(name)});
        bool sent = ::send(fd, stream.data(), stream.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(stream.size());
        auto rcodes = read_replies(fd, 1);
        ::close(fd);
        return sent && rcodes == std::vector<int>{0};
    }
};


}  // namespace

TEST_CASE("limits: under ulimit -n 256 300 idle admin connections leave DNS over TCP the proxy and /ready working")
{
    int echo_port = free_tcp_port();
    Child echo_backend({"/usr/bin/socat", "TCP-LISTEN:" + std::to_string(echo_port) + ",bind=127.0.0.1,fork,reuseaddr", "EXEC:cat"});
    REQUIRE(eventually([&] { return accepting("127.0.0.1", echo_port); }));
    LimitsFixture f(mes("echo", 4242, echo_port), nofile_256);

    // The shares fit in 256 with room for both kinds of client.
    auto proxy_share = f.shared("proxy_connections"), dns_share = f.shared("dns_tcp_clients");
    CHECK(proxy_share > 0);
    CHECK(dns_share > 0);
    CHECK(2 * proxy_share + dns_share + 16 < 256);

    Sockets idle;
    for (int i = 0; i < 300; ++i) {
        int fd = connect_to("127.0.0.1", f.mesd->admin_port());
        REQUIRE(fd >= 0);
        idle.fds.push_back(fd);
    }
    // Every newcomer past 16 closed the oldest idle one.
    REQUIRE(eventually([&] { return f.metric("mesd_admin_connections_evicted_total") >= 300 - 16; }, 10s));
    CHECK(f.open_fds() < 200);

    CHECK(f.status("/ready") == 200);
    CHECK(f.status("/metrics") == 200);
    CHECK(f.tcp_answers("echo.mesh"));
    CHECK(echoed("127.242.0.1", 4242, "through the proxy\n") == "through the proxy\n");
    CHECK(f.metric("mesd_admin_accept_errors_total") == 0);
    CHECK(f.metric("mesd_dns_tcp_accept_errors_total") == 0);
}

TEST_CASE("limits: a proxy flood beyond the descriptor budget leaves /ready DNS over TCP and the admin endpoint answering")
{
    SilentBackend backend;
    LimitsFixture f(mes("sink", 4343, backend.port), nofile_256);
    auto budget = f.shared("proxy_connections");
    REQUIRE(budget > 0);
    REQUIRE(budget < 128);

    // Twice the budget and more, all held open: the proxy carries its share and resets the rest.
    Sockets flood;
    auto stop = std::chrono::steady_clock::now() + 15s;
    for (int i = 0; i < 300 && std::chrono::steady_clock::now() < stop; ++i) {
        int fd = connect_to("127.242.0.1", 4343);
        if (fd >= 0) flood.fds.push_back(fd);
    }
    REQUIRE(eventually([&] { return f.metric("mesd_proxy_connections_refused_total") >= 300 - budget; }, 10s));
    CHECK(f.metric("mesd_proxy_connections_active") <= budget);
    CHECK(f.open_fds() < 256);

    CHECK(f.status("/ready") == 200);
    CHECK(f.status("/metrics") == 200);
    CHECK(f.tcp_answers("sink.mesh"));
    CHECK(f.metric("mesd_proxy_accept_errors_total") == 0);
}

TEST_CASE("limits: proxy.maxConnections above the descriptor budget is lowered with a warning")
{
    SilentBackend backend;
    LimitsFixture f(mes("sink", 4344, backend.port), nofile_256, "  maxConnections: 50000\n");
    auto budget = f.shared("proxy_connections");
    CHECK(budget > 0);
    CHECK(budget < 128);
    auto log = f.mesd->log();
    CHECK(log.find("level=warn") != std::string::npos);
    CHECK(log.find("proxy.maxConnections; lowered\" maxConnections=50000 now=" + std::to_string(budget)) != std::string::npos);
}

TEST_CASE("limits: with the limit this test runs under the proxy gets what is left at two descriptors a connection")
{
    // mesd raises its soft limit to the hard one; the fixed reserve is 64, plus 4 listeners
    // (DNS UDP and TCP, admin, redirect), the workers' own, and 16 admin connections; DNS TCP
    // keeps its 1024.
    rlimit nofile{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &nofile) == 0);
    REQUIRE(nofile.rlim_max != RLIM_INFINITY);
    REQUIRE(nofile.rlim_max > 4096);
    SilentBackend backend;
    LimitsFixture f(mes("sink", 4345, backend.port), {});
    // With workers, each beyond one loop holds 12 more: 8, 3 per DNS address, 1 redirect.
    auto log = f.mesd->log();
    auto at = log.find("msg=workers count=");
    REQUIRE(at != std::string::npos);
    long long workers = std::stoll(log.substr(at + 18));
    long long per_worker = workers > 1 ? workers * 12 : 0;
    long long expected =
        std::min<long long>(100000, (static_cast<long long>(nofile.rlim_max) - 64 - 4 - per_worker - 16 - 1024) / 2);
    CHECK(f.shared("dns_tcp_clients") == 1024);
    CHECK(f.shared("proxy_connections") == expected);
    CHECK(f.mesd->log().find("lowered") == std::string::npos);
}

namespace {

// mesd as an unprivileged user (65534 when the test runs as root, else the test's own), so
// that /proc shows whether it may be dumped: the kernel makes a non-dumpable process's
// /proc/PID files root's.
struct Unprivileged {
    TempDir dir;
    std::unique_ptr<Mesd> mesd;
    uid_t uid = ::getuid() == 0 ? 65534 : ::getuid();
    explicit Unprivileged(bool allow_core_dumps)
    {
        std::filesystem::create_directories(dir.path / "mesd");
        std::filesystem::permissions(dir.path, std::filesystem::perms::all);
        std::filesystem::permissions(dir.path / "mesd", std::filesystem::perms::all);
        MesdOptions options;
        options.dns_section = "  forward:\n    enabled: false\n";
        if (::getuid() == 0) options.wrapper = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"};
        if (allow_core_dumps) options.wrapper.insert(options.wrapper.end(), {"/bin/sh", "-c", "exec \"$0\" \"$@\" --allow-core-dumps"});
        mesd = std::make_unique<Mesd>(dir.path / "mesd", options);
    }
    uid_t proc_owner(const std::string& file) const
    {
        struct stat st {};
        REQUIRE(::stat(("/proc/" + std::to_string(mesd->pid()) + "/" + file).c_str(), &st) == 0);
        return st.st_uid;
    }
    std::string core_limit() const
    {
        std::ifstream in("/proc/" + std::to_string(mesd->pid()) + "/limits");
        std::string line;
        while (std::getline(in, line))
            if (line.rfind("Max core file size", 0) == 0) return line;
        return "";
    }
};

}  // namespace

TEST_CASE("limits: core dumps are off by default and --allow-core-dumps turns them on")
{
    SECTION("default")
    {
        Unprivileged u(false);
        REQUIRE(u.uid != 0);
        CHECK(u.proc_owner("environ") == 0);
        CHECK(u.proc_owner("mem") == 0);
        CHECK(std::regex_search(u.core_limit(), std::regex(R"(^Max core file size\s+0\s+0\s)")));
        CHECK(u.mesd->stop() == 0);
    }
    SECTION("allowed")
    {
        Unprivileged u(true);
        CHECK(u.proc_owner("environ") == u.uid);
        CHECK(u.proc_owner("mem") == u.uid);
        CHECK(u.mesd->log().find("core dumps allowed") != std::string::npos);
        CHECK(u.mesd->stop() == 0);
    }
}

// The guard alone, on a libuv loop in this process: the descriptor limit lowered so that
// accept fails with EMFILE, and libuv's own spare descriptor taken away (as when another
// thread took the descriptor it freed), so that the error reaches the connection callback.
// Without the guard, libuv would call accept again at once, for ever.
TEST_CASE("limits: an accept that fails for want of descriptors is shed and counted and accepting pauses")
{
    uv_loop_t loop{};
    REQUIRE(uv_loop_init(&loop) == 0);
    struct Listener {
        uv_tcp_t tcp{};
        proxy::AcceptGuard guard;
        int accepted = 0, served = 0, callbacks = 0;
    } listener;
    uv_tcp_init(&loop, &listener.tcp);
    listener.tcp.data = &listener;
    sockaddr_in addr{};
    uv_ip4_addr("127.0.0.1", 0, &addr);
    REQUIRE(uv_tcp_bind(&listener.tcp, reinterpret_cast<const sockaddr*>(&addr), 0) == 0);
    REQUIRE(uv_listen(reinterpret_cast<uv_stream_t*>(&listener.tcp), 64, [](uv_stream_t* s, int status) {
                auto* l = static_cast<Listener*>(s->data);
                if (++l->callbacks > 1000) std::abort();  // the spin the guard prevents
                if (status < 0) {
                    l->guard.on_error(s, status);
                    return;
                }
                auto* client = new uv_tcp_t;
                uv_tcp_init(s->loop, client);
                if (uv_accept(s, reinterpret_cast<uv_stream_t*>(client)) == 0) {
                    ++l->accepted;
                    if (l->guard.serving(s)) ++l->served;
                }
                uv_close(reinterpret_cast<uv_handle_t*>(client), [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
            }) == 0);
    int len = sizeof addr;
    uv_tcp_getsockname(&listener.tcp, reinterpret_cast<sockaddr*>(&addr), &len);
    int port = ntohs(addr.sin_port);

    Sockets clients;
    for (int i = 0; i < 3; ++i) clients.fds.push_back(connect_to("127.0.0.1", port));
    if (loop.emfile_fd >= 0) {
        ::close(loop.emfile_fd);
        loop.emfile_fd = -1;
    }
    // No descriptor above the highest open one.
    int highest = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd"))
        highest = std::max(highest, std::stoi(e.path().filename().string()));
    rlimit saved{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
    rlimit low = saved;
    low.rlim_cur = static_cast<rlim_t>(highest + 1);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    Sockets fillers;  // and none free below it
    for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) fillers.fds.push_back(fd);
    for (int i = 0; i < 5; ++i) uv_run(&loop, UV_RUN_NOWAIT);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &saved) == 0);
    for (int fd : fillers.fds) ::close(fd);
    fillers.fds.clear();

    CHECK(listener.guard.errors() >= 1);
    CHECK(listener.guard.shed() >= 3);  // the three pending connections, closed unserved
    CHECK(listener.accepted == 0);
    // Within the pause a newcomer is accepted and closed unserved; after it, served.
    clients.fds.push_back(connect_to("127.0.0.1", port));
    for (int i = 0; i < 5 && listener.accepted < 1; ++i) uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(listener.accepted == 1);
    CHECK(listener.served == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(proxy::AcceptGuard::pause_ms + 20));
    uv_update_time(&loop);
    clients.fds.push_back(connect_to("127.0.0.1", port));
    for (int i = 0; i < 5 && listener.accepted < 2; ++i) uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(listener.accepted == 2);
    CHECK(listener.served == 1);

    uv_close(reinterpret_cast<uv_handle_t*>(&listener.tcp), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
}
