// proxy::Proxy carrying connections on several workers::Worker loops, driven in-process: a
// control loop on a thread of its own (as the daemon's), four workers, echo backends on
// loopback, clients with blocking sockets. Bind mode on 127.0.0.0/8 VIPs; redirect mode in
// a network namespace whose nat table sends the VIP pool to the proxy's listeners.
#include "proxy/proxy.hpp"
#include "test/support/certs.hpp"
#include "test/support/net.hpp"
#include "test/support/netns.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"
#include "workers/worker.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t worker_count = 4;

// A TCP server on 127.0.0.1 (a port the kernel picks) on a thread of its own: it greets each
// connection with `banner`, then echoes what it reads, and closes when the client does.
class EchoBackend {
public:
    explicit EchoBackend(std::string banner) : banner_(std::move(banner))
    {
        listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(listen_fd_, 1024) == 0);
        socklen_t len = sizeof addr;
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { run(); });
    }
    ~EchoBackend()
    {
        stop_ = true;
        thread_.join();
        ::close(listen_fd_);
    }
    EchoBackend(const EchoBackend&) = delete;
    EchoBackend& operator=(const EchoBackend&) = delete;

    int port() const { return port_; }
    std::uint64_t accepted() const { return accepted_; }

private:
    void run()
    {
        std::vector<int> conns;
        while (!stop_) {
            std::vector<pollfd> fds{{listen_fd_, POLLIN, 0}};
            for (int c : conns) fds.push_back({c, POLLIN, 0});
            if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
            if (fds[0].revents & POLLIN) {
                int c;
                while ((c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC)) >= 0) {
                    ++accepted_;
                    (void)!::send(c, banner_.data(), banner_.size(), MSG_NOSIGNAL);
                    conns.push_back(c);
                }
            }
            std::set<int> gone;
            for (std::size_t i = 1; i < fds.size(); ++i) {
                if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                char buf[4096];
                auto n = ::recv(fds[i].fd, buf, sizeof buf, MSG_DONTWAIT);
                if (n > 0) {
                    (void)!::send(fds[i].fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL);
                } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                    ::close(fds[i].fd);
                    gone.insert(fds[i].fd);
                }
            }
            std::erase_if(conns, [&](int c) { return gone.contains(c); });
        }
        for (int c : conns) ::close(c);
    }

    std::string banner_;
    int listen_fd_ = -1;
    int port_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<std::uint64_t> accepted_{0};
    std::thread thread_;
};

// Reads until `want` bytes came, the peer closed or reset, or `wait` passed without data.
std::string read_some(int fd, std::size_t want, std::chrono::milliseconds wait = 5s)
{
    std::string got;
    char buf[4096];
    while (got.size() < want) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) break;
        auto n = ::recv(fd, buf, std::min(sizeof buf, want - got.size()), 0);
        if (n <= 0) break;
        got.append(buf, static_cast<std::size_t>(n));
    }
    return got;
}

// Sends `line` and returns what came back of the same length.
std::string echo(int fd, const std::string& line)
{
    if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) return "";
    return read_some(fd, line.size());
}

// A connection through the proxy that got its backend's banner ("" when it got none: reset,
// closed, or nothing within the wait).
struct Client {
    int fd = -1;
    std::string banner;
    Client(const std::string& host, int port, std::chrono::milliseconds wait = 5s)
    {
        fd = connect_to(host, port);
        if (fd >= 0) banner = read_some(fd, 2, wait);
    }
    ~Client()
    {
        if (fd >= 0) ::close(fd);
    }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;
};

// One connection: the banner, one line echoed, then closed. The banner, or "" on a failure.
std::string exchange(const std::string& host, int port, const std::string& line)
{
    Client c(host, port);
    if (c.banner.size() != 2 || echo(c.fd, line) != line) return "";
    return c.banner;
}

proxy::Route route(const std::string& name, const std::string& vip_text, std::optional<int> port, const std::vector<int>& endpoint_ports)
{
    proxy::Route r;
    r.mesh = "default";
    r.name = name;
    r.ipv4 = vip::Address::parse(vip_text);
    if (port) r.port = static_cast<std::uint16_t>(*port);
    for (int p : endpoint_ports) {
        conf::Endpoint e;
        e.address = "127.0.0.1";
        e.kind = conf::AddressKind::ipv4;
        e.port = static_cast<std::uint16_t>(p);
        r.endpoints.push_back(e);
    }
    return r;
}

const proxy::ServiceStatus* service_of(const proxy::Status& st, const std::string& name)
{
    for (const auto& s : st.services)
        if (s.name == name) return &s;
    return nullptr;
}

// Waits for a thread's end for a while; a loop that never ends (a handle left open) ends
// the run, since nothing else could join it.
void join_within(std::thread& t, std::chrono::seconds wait, const char* what)
{
    auto finished = std::make_shared<std::promise<void>>();
    auto future = finished->get_future();
    std::thread joiner([&t, finished] {
        t.join();
        finished->set_value();
    });
    if (future.wait_for(wait) != std::future_status::ready) {
        std::fprintf(stderr, "%s did not end within %llds: a handle was left open on its loop\n", what,
                     static_cast<long long>(wait.count()));
        std::_Exit(1);
    }
    joiner.join();
}

// The daemon's arrangement: a control loop on a thread of its own, where the Proxy is made
// and started, and its methods called; `worker_count` workers carrying the connections.
struct Loops {
    workers::Worker control{100, std::nullopt};
    std::vector<std::unique_ptr<workers::Worker>> pool;
    std::unique_ptr<proxy::Proxy> proxy;
    std::atomic<int> done_calls{0};
    std::atomic<bool> done_on_control{false};
    bool stopped = false;

    explicit Loops(proxy::Options options)
    {
        for (std::size_t i = 0; i < worker_count; ++i) pool.push_back(std::make_unique<workers::Worker>(i, std::nullopt));
        for (auto& w : pool) options.workers.push_back(w.get());
        control.start();
        // Made and started on the control loop's thread, before any worker runs.
        auto started = call([&] {
            proxy = std::make_unique<proxy::Proxy>(control.loop(), options);
            return proxy->start();
        });
        INFO((started ? std::string() : started.error()));
        REQUIRE(started);
        for (auto& w : pool) w->start();
    }

    ~Loops()
    {
        if (!stopped) stop(false);
    }

    // Runs `fn` on the control loop's thread and returns its result.
    template <class F>
    auto call(F fn) -> decltype(fn())
    {
        using R = decltype(fn());
        auto result = std::make_shared<std::promise<R>>();
        auto future = result->get_future();
        control.post([&fn, result] {
            if constexpr (std::is_void_v<R>) {
                fn();
                result->set_value();
            } else {
                result->set_value(fn());
            }
        });
        if (future.wait_for(10s) != std::future_status::ready) {
            std::fprintf(stderr, "the control loop did not answer within 10s\n");
            std::_Exit(1);
        }
        return future.get();
    }

    proxy::Status status()
    {
        return call([&] { return proxy->status(); });
    }

    // stop(), then `done` awaited; the workers and the control loop are told to finish,
    // and must end: nothing of the proxy may be left on their loops.
    void stop(bool check = true)
    {
        stopped = true;
        auto finished = std::make_shared<std::promise<void>>();
        auto future = finished->get_future();
        call([&] {
            proxy->stop([this, finished] {
                done_on_control = control.on_thread();
                if (++done_calls == 1) finished->set_value();
            });
        });
        bool in_time = future.wait_for(10s) == std::future_status::ready;
        if (check) REQUIRE(in_time);
        for (auto& w : pool) w->finish();
        for (auto& w : pool) {
            std::thread waiter([&w] { w->join(); });
            join_within(waiter, 10s, "a worker's loop");
        }
        control.finish();
        std::thread waiter([this] { control.join(); });
        join_within(waiter, 10s, "the control loop");
        proxy.reset();
    }
};

// Each worker's share of the connections.
std::vector<std::uint64_t> per_worker(const proxy::Status& st, bool open)
{
    std::vector<std::uint64_t> out;
    for (const auto& w : st.workers) out.push_back(open ? w.active : w.total);
    return out;
}

std::size_t busy_workers(const std::vector<std::uint64_t>& counts)
{
    return static_cast<std::size_t>(std::ranges::count_if(counts, [](std::uint64_t n) { return n > 0; }));
}

std::uint64_t sum(const std::vector<std::uint64_t>& counts)
{
    std::uint64_t s = 0;
    for (auto n : counts) s += n;
    return s;
}

// Enters a network namespace for this thread (and the threads it starts from now on) and
// comes back out at the end of the scope.
struct InNetns {
    int saved = -1;
    explicit InNetns(const std::string& name)
    {
        saved = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        int fd = ::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC);
        REQUIRE(fd >= 0);
        REQUIRE(::setns(fd, CLONE_NEWNET) == 0);
        ::close(fd);
    }
    ~InNetns()
    {
        ::setns(saved, CLONE_NEWNET);
        ::close(saved);
    }
};

}  // namespace

TEST_CASE("bind mode with 4 workers: connections spread over every worker and the totals add up")
{
    EchoBackend backend("A\n");
    const std::string vip = "127.243.1.1";
    int port = free_tcp_port();
    Loops loops({});
    loops.call([&] { loops.proxy->update({route("echo", vip, port, {backend.port()})}); });

    // 40 open at once: each goes to the worker with the fewest, so every worker holds 10.
    std::vector<std::unique_ptr<Client>> held;
    for (int i = 0; i < 40; ++i) {
        held.push_back(std::make_unique<Client>(vip, port));
        REQUIRE(held.back()->banner == "A\n");
    }
    auto st = loops.status();
    CHECK(st.active == 40);
    REQUIRE(st.workers.size() == worker_count);
    CHECK(per_worker(st, true) == std::vector<std::uint64_t>(worker_count, 10));
    std::uint64_t up = 0, down = 0;
    for (auto& c : held) {
        REQUIRE(echo(c->fd, "held line\n") == "held line\n");
        up += 10;
        down += 12;
    }
    held.clear();

    // 80 more, from 4 clients at once.
    std::atomic<int> good{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c)
        clients.emplace_back([&, c] {
            for (int i = 0; i < 20; ++i)
                if (exchange(vip, port, "client " + std::to_string(c) + " line " + std::to_string(i % 10) + "\n") == "A\n") ++good;
        });
    for (auto& t : clients) t.join();
    REQUIRE(good == 80);
    up += 80 * 16;  // "client C line I\n"
    down += 80 * (2 + 16);
    REQUIRE(eventually([&] { return loops.status().active == 0; }));
    st = loops.status();
    CHECK(st.total == 120);
    CHECK(st.refused == 0);
    CHECK(sum(per_worker(st, false)) == 120);
    CHECK(busy_workers(per_worker(st, false)) == worker_count);
    const auto* s = service_of(st, "echo");
    REQUIRE(s);
    CHECK(s->total == 120);
    CHECK(s->failed == 0);
    CHECK(s->bytes_up == up);
    CHECK(s->bytes_down == down);
    CHECK(s->listeners == std::vector<std::string>{vip + ":" + std::to_string(port)});
    CHECK(backend.accepted() == 120);
    loops.stop();
}

TEST_CASE("redirect mode with 4 workers: each worker listens on the same port and the kernel spreads connections")
{
    Namespace netns("mesd-pw-redirect");
    REQUIRE(netns.in({"/usr/sbin/ip", "route", "add", "242.0.0.0/8", "dev", "lo", "src", "127.0.0.1"}).exit_code == 0);
    InNetns inside(netns.name);
    EchoBackend backend("R\n");
    EchoBackend moved("N\n");

    // The routes the daemon's store would give, looked up from the workers' threads.
    std::mutex routes_mutex;
    std::map<std::string, proxy::Route> routes{{"242.0.0.1", route("red", "242.0.0.1", 7000, {backend.port()})}};
    proxy::Options options;
    options.mode = proxy::Options::Mode::redirect;
    options.redirect_listen = {"127.0.0.1", 0};
    options.find_route = [&](const vip::Address& address, std::uint16_t port) {
        std::lock_guard lock(routes_mutex);
        auto it = routes.find(address.to_string());
        proxy::Options::Lookup out;
        if (it != routes.end() && it->second.port == port) out.route = it->second;
        return out;
    };
    options.find_named_route = [&](const std::string& mesh, const std::string& name) {
        std::lock_guard lock(routes_mutex);
        proxy::Options::Lookup out;
        for (const auto& [vip, r] : routes)
            if (r.mesh == mesh && r.name == name) out.route = r;
        return out;
    };
    Loops loops(options);
    std::string bound = loops.call([&] { return loops.proxy->bound(); });
    auto listen_port = bound.substr(bound.rfind(':') + 1);
    REQUIRE(listen_port != "0");
    REQUIRE(netns.in({"/usr/sbin/iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "242.0.0.0/8", "-j", "REDIRECT",
                      "--to-ports", listen_port})
                .exit_code == 0);

    std::vector<std::unique_ptr<Client>> held;
    for (int i = 0; i < 40; ++i) {
        held.push_back(std::make_unique<Client>("242.0.0.1", 7000));
        REQUIRE(held.back()->banner == "R\n");
    }
    auto st = loops.status();
    CHECK(st.active == 40);
    REQUIRE(st.workers.size() == worker_count);
    CHECK(sum(per_worker(st, true)) == 40);
    CHECK(busy_workers(per_worker(st, true)) > 1);
    for (auto& c : held) REQUIRE(echo(c->fd, "ping\n") == "ping\n");
    held.clear();
    // A destination no route claims.
    Client stray("242.0.0.9", 7000, 2s);
    CHECK(stray.banner.empty());

    REQUIRE(eventually([&] { return loops.status().active == 0; }));
    st = loops.status();
    CHECK(st.total == 41);
    CHECK(st.unrouted == 1);
    const auto* s = service_of(st, "red");
    REQUIRE(s);
    CHECK(s->total == 40);
    CHECK(s->bytes_up == 40 * 5);
    CHECK(s->bytes_down == 40 * 7);
    CHECK(backend.accepted() == 40);

    // The store moved the MES to another endpoint: reload() while connections open on
    // every worker; those opened after it reach the new one.
    {
        std::lock_guard lock(routes_mutex);
        routes["242.0.0.1"] = route("red", "242.0.0.1", 7000, {moved.port()});
    }
    std::atomic<bool> stop{false};
    std::atomic<int> failures{0};
    std::thread flow([&] {
        auto deadline = std::chrono::steady_clock::now() + 10s;
        while (!stop && std::chrono::steady_clock::now() < deadline)
            if (exchange("242.0.0.1", 7000, "f\n").empty()) ++failures;
    });
    loops.call([&] { loops.proxy->reload(); });
    for (int i = 0; i < 20; ++i) CHECK(exchange("242.0.0.1", 7000, "after\n") == "N\n");
    stop = true;
    flow.join();
    CHECK(failures == 0);
    loops.stop();
}

TEST_CASE("a target that fails on one worker's connections is ejected for every worker's")
{
    EchoBackend live("L\n");
    int dead = free_tcp_port();  // nothing listens: connects are refused
    const std::string vip = "127.243.2.1";
    int port = free_tcp_port();
    proxy::Options options;
    options.eject_after = 3;
    options.eject_base = 60s;
    Loops loops(options);
    loops.call([&] { loops.proxy->update({route("flaky", vip, port, {dead, live.port()})}); });

    // Round robin puts the dead target first on each connection until it is ejected; the
    // connections go to the workers in turn, so its failures happen on several of them.
    for (int i = 0; i < 24; ++i) REQUIRE(exchange(vip, port, "x\n") == "L\n");
    REQUIRE(eventually([&] { return loops.status().active == 0; }));
    auto st = loops.status();
    CHECK(busy_workers(per_worker(st, false)) == worker_count);
    const auto* s = service_of(st, "flaky");
    REQUIRE(s);
    CHECK(s->failed == 0);
    REQUIRE(s->targets.size() == 2);
    const auto& t = s->targets[0];
    CHECK(t.address == "127.0.0.1:" + std::to_string(dead));
    // Three failures in all, then ejected for every worker: with health per worker, each
    // would have had to fail three times itself.
    CHECK(t.connect_failures == 3);
    CHECK(t.ejections == 1);
    CHECK(t.state == "ejected");
    CHECK(s->targets[1].state == "healthy");
    CHECK(live.accepted() == 24);
    loops.stop();
}

TEST_CASE("maxConnections and maxConnectionsPerService hold across workers")
{
    EchoBackend backend("M\n");
    const std::string vip = "127.243.3.1";
    int port = free_tcp_port();
    proxy::Options options;
    std::uint64_t limit = 0;
    SECTION("maxConnections")
    {
        options.max_connections = 6;
        limit = 6;
    }
    SECTION("maxConnectionsPerService")
    {
        options.max_connections_per_service = 5;
        limit = 5;
    }
    Loops loops(options);
    loops.call([&] { loops.proxy->update({route("capped", vip, port, {backend.port()})}); });

    std::vector<std::unique_ptr<Client>> held;
    for (std::uint64_t i = 0; i < limit; ++i) {
        held.push_back(std::make_unique<Client>(vip, port));
        REQUIRE(held.back()->banner == "M\n");
    }
    // Spread: no worker holds the limit by itself, so only a count over every worker refuses.
    auto open = per_worker(loops.status(), true);
    CHECK(busy_workers(open) == worker_count);
    for (int i = 0; i < 4; ++i) {
        Client over(vip, port, 2s);
        CHECK(over.banner.empty());
    }
    for (auto& c : held) CHECK(echo(c->fd, "still\n") == "still\n");
    auto st = loops.status();
    CHECK(st.refused == 4);
    const auto* s = service_of(st, "capped");
    REQUIRE(s);
    CHECK(s->refused == 4);
    CHECK(s->active == limit);
    CHECK(backend.accepted() == limit);
    held.clear();
    // Places freed on any worker are free for all.
    REQUIRE(eventually([&] { return loops.status().active == 0; }));
    for (std::uint64_t i = 0; i < limit; ++i) held.push_back(std::make_unique<Client>(vip, port));
    for (auto& c : held) CHECK(c->banner == "M\n");
    held.clear();
    loops.stop();
}

TEST_CASE("a route update while connections flow on the workers: new ones take the new endpoint, open ones go on")
{
    EchoBackend a("A\n");
    EchoBackend b("B\n");
    const std::string vip = "127.243.4.1";
    int port = free_tcp_port();
    Loops loops({});
    loops.call([&] { loops.proxy->update({route("moving", vip, port, {a.port()})}); });

    std::vector<std::unique_ptr<Client>> held;
    for (int i = 0; i < 8; ++i) {
        held.push_back(std::make_unique<Client>(vip, port));
        REQUIRE(held.back()->banner == "A\n");
    }
    // A client making connections one after another while the route changes under it.
    std::mutex seen_mutex;
    std::vector<std::string> seen;  // banners in order; "" for a connection that failed
    std::atomic<bool> stop{false};
    std::thread flow([&] {
        auto deadline = std::chrono::steady_clock::now() + 20s;
        while (!stop && std::chrono::steady_clock::now() < deadline) {
            auto banner = exchange(vip, port, "flow\n");
            std::lock_guard lock(seen_mutex);
            seen.push_back(banner);
        }
    });
    auto count = [&](const std::string& banner) {
        std::lock_guard lock(seen_mutex);
        return std::ranges::count(seen, banner);
    };
    bool before = eventually([&] { return count("A\n") >= 10; }, 10s);
    loops.call([&] { loops.proxy->update({route("moving", vip, port, {b.port()})}); });
    bool after = eventually([&] { return count("B\n") >= 10; }, 10s);
    stop = true;
    flow.join();
    REQUIRE(before);
    REQUIRE(after);

    CHECK(count("") == 0);
    // Once one connection reached B, every later one did.
    auto first_b = std::ranges::find(seen, "B\n");
    CHECK(std::ranges::count(first_b, seen.end(), "A\n") == 0);
    // The connections opened before the change still reach A.
    for (auto& c : held) CHECK(echo(c->fd, "old\n") == "old\n");
    CHECK(busy_workers(per_worker(loops.status(), true)) == worker_count);
    held.clear();
    REQUIRE(eventually([&] { return loops.status().active == 0; }));
    auto st = loops.status();
    const auto* s = service_of(st, "moving");
    REQUIRE(s);
    CHECK(s->failed == 0);
    CHECK(s->total == 8 + seen.size());
    CHECK(a.accepted() + b.accepted() == 8 + seen.size());
    loops.stop();
}

TEST_CASE("stop with connections open on every worker runs done once on the control loop and the loops end")
{
    EchoBackend backend("S\n");
    const std::string vip = "127.243.5.1";
    int port = free_tcp_port();
    Loops loops({});
    loops.call([&] { loops.proxy->update({route("stopping", vip, port, {backend.port()})}); });
    std::vector<std::unique_ptr<Client>> held;
    for (int i = 0; i < 12; ++i) {
        held.push_back(std::make_unique<Client>(vip, port));
        REQUIRE(held.back()->banner == "S\n");
    }
    CHECK(per_worker(loops.status(), true) == std::vector<std::uint64_t>(worker_count, 3));

    loops.stop();  // joins every loop: nothing of the proxy was left on them
    CHECK(loops.done_calls == 1);
    CHECK(loops.done_on_control);
    // Every client sees its connection end, and the VIP no longer listens.
    for (auto& c : held) CHECK(read_some(c->fd, 1, 5s).empty());
    CHECK(!accepting(vip, port));
}

TEST_CASE("TLS to a DNS-named endpoint on 4 workers: sessions resumed across workers, each worker resolves the name")
{
    TempDir dir;
    auto ca = make_ca("mesd test CA");
    auto other_ca = make_ca("another CA");
    auto leaf = make_leaf(ca, "tls.ext.test", {"DNS:tls.ext.test"});
    int tls_port = free_tcp_port();
    // openssl s_server -rev: each line comes back reversed.
    Child server({"/usr/bin/openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(tls_port), "-cert",
                  dir.write("leaf.crt", leaf.cert_pem), "-key", dir.write("leaf.key", leaf.key_pem), "-rev", "-quiet"},
                 (dir.path / "server.out").string(), (dir.path / "server.err").string());
    REQUIRE(eventually([&] { return accepting("127.0.0.1", tls_port); }));
    int dns_port = free_dual_port();  // dnsmasq binds TCP on it too
    Child dnsmasq({"/usr/sbin/dnsmasq", "-k", "--user=root", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                   "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--addn-hosts=" + dir.write("hosts", "127.0.0.1 tls.ext.test\n"),
                   "--port=" + std::to_string(dns_port)},
                  (dir.path / "dnsmasq.out").string(), (dir.path / "dnsmasq.err").string());

    auto tls_route = [&](const std::string& name, const std::string& vip, int port, const KeyPair& trusted) {
        auto r = route(name, vip, port, {});
        conf::Endpoint e;
        e.address = "tls.ext.test";
        e.kind = conf::AddressKind::hostname;
        e.port = static_cast<std::uint16_t>(tls_port);
        r.endpoints.push_back(e);
        r.tls = conf::Tls{};
        r.tls->enabled = true;
        r.tls_ca_pem = trusted.cert_pem;
        return r;
    };
    const std::string vip = "127.243.6.1", vip2 = "127.243.6.2";
    int port = free_tcp_port();
    proxy::Options options;
    options.resolvers = {{"127.0.0.1", static_cast<std::uint16_t>(dns_port)}};
    std::mutex reported_mutex;
    std::vector<std::string> reported;  // on_tls_failure, as "name: reason"
    std::atomic<bool> reported_elsewhere{false};
    workers::Worker* control = nullptr;
    options.on_tls_failure = [&](const std::string&, const std::string& name, const std::string& reason) {
        if (!control || !control->on_thread()) reported_elsewhere = true;
        std::lock_guard lock(reported_mutex);
        reported.push_back(name + ": " + reason);
    };
    Loops loops(options);
    control = &loops.control;  // on_tls_failure is not called before a connection
    loops.call([&] {
        loops.proxy->update({tls_route("secure", vip, port, ca), tls_route("mistrust", vip2, port, other_ca)});
    });

    // dnsmasq answers before any worker asks it (a worker that asked too early would keep
    // the failure for dnsMinTtl).
    REQUIRE(eventually([&] {
        return run({"/usr/bin/dig", "@127.0.0.1", "-p", std::to_string(dns_port), "tls.ext.test", "+short", "+tries=1", "+time=1"})
                   .out == "127.0.0.1\n";
    }, 10s));
    {
        int fd = connect_to(vip, port);
        REQUIRE(fd >= 0);
        REQUIRE(echo(fd, "first\n") == "tsrif\n");
        ::close(fd);
        REQUIRE(eventually([&] { return loops.status().active == 0; }));
    }
    auto before = *service_of(loops.status(), "secure");
    for (int i = 0; i < 12; ++i) {
        int fd = connect_to(vip, port);
        REQUIRE(fd >= 0);
        CHECK(echo(fd, "hello\n") == "olleh\n");
        ::close(fd);
        // The ticket for the next connection comes after the handshake: this one must end first.
        REQUIRE(eventually([&] { return loops.status().active == 0; }));
    }
    auto st = loops.status();
    CHECK(busy_workers(per_worker(st, false)) == worker_count);
    const auto* s = service_of(st, "secure");
    REQUIRE(s);
    CHECK(s->tls_handshakes - before.tls_handshakes == 12);
    // One cache for every worker: each of these resumes the session the one before left,
    // whichever worker that was.
    CHECK(s->tls_resumed - before.tls_resumed == 12);
    REQUIRE(s->targets.size() == 1);
    CHECK(s->targets[0].state == "healthy");
    CHECK(s->targets[0].resolved == std::vector<std::string>{"127.0.0.1"});

    // A handshake that fails on a worker is reported on the control loop.
    int fd = connect_to(vip2, port);
    REQUIRE(fd >= 0);
    CHECK(echo(fd, "hello\n").empty());
    ::close(fd);
    REQUIRE(eventually([&] {
        std::lock_guard lock(reported_mutex);
        return !reported.empty();
    }));
    CHECK(!reported_elsewhere);
    {
        std::lock_guard lock(reported_mutex);
        CHECK(reported.front().starts_with("mistrust: certificate verify failed"));
    }
    loops.stop();
}
