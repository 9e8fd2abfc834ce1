// The forwarder of several workers' servers behaving as one: four dns::Server on four
// workers::Worker loops sharing one SharedLimits, with upstreams played by sockets of this
// test. A timeout one worker sees backs the upstream off for all, with one probe; maxInFlight
// holds across the workers; the upstream list is read, and its warnings given, once; a
// question asked by clients of several workers goes upstream once; a query one worker
// forwarded that comes back to another is known as a loop.
#include "dns/dns.hpp"
#include "workers/worker.hpp"

#include "test/dns/workers_farm.hpp"

#include "test/support/net.hpp"
#include "test/support/resources.hpp"
#include "test/support/temp_store.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

using workers_farm::Farm;
using workers_farm::worker_count;

std::vector<std::uint8_t> query(const std::string& name, std::uint16_t id)
{
    std::vector<std::uint8_t> q = {static_cast<std::uint8_t>(id >> 8), static_cast<std::uint8_t>(id), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    std::size_t start = 0;
    while (start < name.size()) {
        auto dot = name.find('.', start);
        if (dot == std::string::npos) dot = name.size();
        q.push_back(static_cast<std::uint8_t>(dot - start));
        q.insert(q.end(), name.begin() + static_cast<std::ptrdiff_t>(start), name.begin() + static_cast<std::ptrdiff_t>(dot));
        start = dot + 1;
    }
    q.insert(q.end(), {0, 0, 1, 0, 1});  // A, IN
    return q;
}

sockaddr_in loopback(int port)
{
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<std::uint16_t>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return to;
}

// A UDP socket on 127.0.0.1 with a port of its own (the kernel hashes each source port to one
// of the servers' sockets). No Catch macro inside: upstreams use it on their own threads.
struct Socket {
    int fd = -1;
    int port = 0;
    Socket()
    {
        fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        auto any = loopback(0);
        ::bind(fd, reinterpret_cast<const sockaddr*>(&any), sizeof any);
        socklen_t size = sizeof any;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&any), &size);
        port = ntohs(any.sin_port);
    }
    ~Socket()
    {
        if (fd >= 0) ::close(fd);
    }
    Socket(const Socket&) = delete;
    Socket& operator=(const Socket&) = delete;

    bool send(int to_port, const std::vector<std::uint8_t>& bytes) const
    {
        auto to = loopback(to_port);
        return ::sendto(fd, bytes.data(), bytes.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof to) ==
               static_cast<ssize_t>(bytes.size());
    }
    std::optional<std::vector<std::uint8_t>> receive(std::chrono::milliseconds wait, sockaddr_in* from = nullptr) const
    {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return std::nullopt;
        std::array<std::uint8_t, 4096> buf;
        sockaddr_in source{};
        socklen_t size = sizeof source;
        auto n = ::recvfrom(fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&source), &size);
        if (n <= 0) return std::nullopt;
        if (from) *from = source;
        return std::vector<std::uint8_t>(buf.begin(), buf.begin() + n);
    }
};

int rcode_of(const std::vector<std::uint8_t>& reply) { return reply.size() >= 12 ? reply[3] & 0x0f : -1; }
std::uint16_t id_of(const std::vector<std::uint8_t>& m) { return static_cast<std::uint16_t>((m[0] << 8) | m[1]); }

// An upstream on its own thread: `handle` gets each query (none: it never answers), and
// `received` counts them.
struct Upstream {
    using Handler = std::function<void(const Socket& socket, const std::vector<std::uint8_t>& q, const sockaddr_in& from)>;
    Socket socket;
    std::atomic<int> received{0};
    std::atomic<bool> done{false};
    std::thread thread;

    explicit Upstream(Handler handle)
    {
        thread = std::thread([this, handle = std::move(handle)] {
            while (!done) {
                sockaddr_in from{};
                auto q = socket.receive(10ms, &from);
                if (!q || q->size() < 12) continue;
                ++received;
                if (handle) handle(socket, *q, from);
            }
        });
    }
    ~Upstream()
    {
        done = true;
        thread.join();
    }
    std::string address() const { return "127.0.0.1:" + std::to_string(socket.port); }
    conf::HostPort host_port() const { return conf::HostPort{"127.0.0.1", static_cast<std::uint16_t>(socket.port)}; }
};

// The query sent back as its answer (QR set, no records): NOERROR to the same ID and question.
void echo(const Socket& socket, const std::vector<std::uint8_t>& q, const sockaddr_in& from)
{
    auto reply = q;
    reply[2] |= 0x80;
    ::sendto(socket.fd, reply.data(), reply.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
}

// What on_warn reported, from any worker's thread.
struct Warnings {
    std::mutex mutex;
    std::vector<std::string> seen;  // "message key=value"
    void add(std::string_view message, std::string_view key, const std::string& value)
    {
        std::lock_guard lock(mutex);
        seen.push_back(std::string(message) + " " + std::string(key) + "=" + value);
    }
    int count(const std::string& start)
    {
        std::lock_guard lock(mutex);
        return static_cast<int>(std::ranges::count_if(seen, [&](const std::string& s) { return s.starts_with(start); }));
    }
};

// Forwarding from 127.0.0.1 alone, as the loop and own-address cases need.
dns::ServerOptions forwarding_options()
{
    dns::ServerOptions options;
    options.listen = {conf::HostPort{"127.0.0.1", 0}};
    options.allow = {"127.0.0.0/8"};
    return options;
}

std::vector<std::unique_ptr<Socket>> clients(std::size_t n)
{
    std::vector<std::unique_ptr<Socket>> out;
    for (std::size_t i = 0; i < n; ++i) out.push_back(std::make_unique<Socket>());
    return out;
}

}  // namespace

TEST_CASE("workers forward: a silent upstream backed off by one worker is skipped by the others and probed once", "[workers]")
{
    Upstream silent(nullptr), answering(echo);
    auto options = forwarding_options();
    options.upstreams = {silent.host_port(), answering.host_port()};
    options.forward_timeout = 300ms;
    options.forward_max_wait = 1500ms;
    Farm farm(options);

    // The first query: the silent upstream, listed first and not yet measured, has its turn
    // and times out; the answering one answers.
    Socket first;
    auto started = Clock::now();
    REQUIRE(first.send(farm.port, query("first.example.org", 1)));
    auto reply = first.receive(3s);
    REQUIRE(reply);
    CHECK(rcode_of(*reply) == 0);
    CHECK(Clock::now() - started >= 280ms);
    // The timeout started a probe at once; its own timeout confirmed the upstream dead, for
    // every server.
    CHECK(test_support::eventually([&] {
        return std::ranges::all_of(farm.servers, [&](const auto& s) {
            auto u = s->upstreams();
            return u.size() == 2 && u[1].address == silent.address() && u[1].failures == 2 && u[1].backed_off;
        });
    }, 2s));
    CHECK(silent.received == 2);  // the forward and the probe

    // Clients on every worker, a name each, at once: none waits on the silent upstream.
    auto many = clients(32);
    started = Clock::now();
    for (std::size_t i = 0; i < many.size(); ++i)
        REQUIRE(many[i]->send(farm.port, query("n" + std::to_string(i) + ".example.org", static_cast<std::uint16_t>(100 + i))));
    int answered = 0;
    for (std::size_t i = 0; i < many.size(); ++i)
        if (auto r = many[i]->receive(2s); r && rcode_of(*r) == 0 && id_of(*r) == 100 + i) ++answered;
    auto took = Clock::now() - started;
    CHECK(answered == 32);
    CHECK(took < 250ms);  // one turn of the silent upstream would take 300 ms
    CHECK(farm.servers_with([](const dns::Metrics& m) { return m.forwarded.load(); }) > 1);
    CHECK(silent.received == 2);
    auto total = farm.total();
    CHECK(total.upstream_timeouts == 1);
    CHECK(total.upstream_probes == 1);
    CHECK(total.forward_backed_off == 0);
    // One record per upstream, the same from every server: the answers of every worker.
    for (const auto& s : farm.servers) {
        auto u = s->upstreams();
        REQUIRE(u.size() == 2);
        CHECK(u[0].address == answering.address());
        CHECK(u[0].answers == 33);
        CHECK(u[1].timeouts == 2);  // the forward's and the probe's
    }
    CHECK(farm.stop());
}

TEST_CASE("workers forward: maxInFlight holds across every worker, not once per worker", "[workers]")
{
    Upstream silent(nullptr);
    auto options = forwarding_options();
    options.upstreams = {silent.host_port()};
    options.max_in_flight = 2;
    options.forward_timeout = 1000ms;
    options.forward_max_wait = 1000ms;
    Farm farm(options);
    auto many = clients(16);
    for (std::size_t i = 0; i < many.size(); ++i)
        REQUIRE(many[i]->send(farm.port, query("q" + std::to_string(i) + ".example.org", static_cast<std::uint16_t>(i + 1))));
    // Two go upstream, wherever they arrived; the others are refused at once.
    CHECK(test_support::eventually([&] {
        auto t = farm.total();
        return t.forwarded + t.forward_overload == 16;
    }, 800ms));
    auto total = farm.total();
    CHECK(total.forwarded == 2);
    CHECK(total.forward_overload == 14);
    CHECK(farm.in_flight() == 2);
    CHECK(farm.servers_with([](const dns::Metrics& m) { return m.forwarded.load() + m.forward_overload.load(); }) > 1);
    // Every client hears SERVFAIL: at once, or when the silent upstream's time is up.
    int servfails = 0;
    for (const auto& c : many)
        if (auto r = c->receive(3s); r && rcode_of(*r) == 2) ++servfails;
    CHECK(servfails == 16);
    CHECK(test_support::eventually([&] { return farm.in_flight() == 0; }, 1s));
    CHECK(farm.stop());
}

TEST_CASE("workers forward: resolv.conf is read and checked again by one server and each warning given once", "[workers]")
{
    test_support::TempDir dir;
    auto resolv_conf = (dir.path / "resolv.conf").string();
    // Replaced whole, by a rename, as resolvconf and NetworkManager do: never read half-written.
    auto write = [&](const std::string& text) {
        std::ofstream(resolv_conf + ".new") << text;
        std::filesystem::rename(resolv_conf + ".new", resolv_conf);
    };
    write("# no nameserver\n");
    Warnings warnings;
    auto options = forwarding_options();
    options.resolv_conf = resolv_conf;
    options.recheck_interval = 50ms;
    options.on_warn = [&](std::string_view message, std::string_view key, const std::string& value) { warnings.add(message, key, value); };
    Farm farm(options);
    CHECK(warnings.count("no upstreams") == 1);
    CHECK(farm.every_server_lists({}));
    // A nameserver named: every server forwards to it.
    write("nameserver 127.0.0.1\n");
    CHECK(test_support::eventually([&] { return farm.every_server_lists({"127.0.0.1:53"}); }, 2s));
    // Gone again: said once more.
    write("# no nameserver\n");
    CHECK(test_support::eventually([&] { return farm.every_server_lists({}); }, 2s));
    CHECK(test_support::eventually([&] { return warnings.count("no upstreams") == 2; }, 1s));
    CHECK(farm.stop());
    CHECK(warnings.count("no upstreams") == 2);
    CHECK(warnings.count("upstream left out") == 0);
}

TEST_CASE("workers forward: an upstream that is the servers' own address is left out and said so once", "[workers]")
{
    Upstream answering(echo);
    Warnings warnings;
    int own = test_support::free_dual_port();
    auto options = forwarding_options();
    options.listen = {conf::HostPort{"127.0.0.1", static_cast<std::uint16_t>(own)}};
    options.upstreams = {conf::HostPort{"127.0.0.1", static_cast<std::uint16_t>(own)}, answering.host_port()};
    options.on_warn = [&](std::string_view message, std::string_view key, const std::string& value) { warnings.add(message, key, value); };
    Farm farm(options);
    CHECK(warnings.count("upstream left out") == 1);
    CHECK(warnings.count("upstream left out: it is one of mesd's own listening addresses, asking it would loop upstream=127.0.0.1:" +
                         std::to_string(own)) == 1);
    CHECK(farm.every_server_lists({answering.address()}));
    auto many = clients(8);
    for (std::size_t i = 0; i < many.size(); ++i)
        REQUIRE(many[i]->send(farm.port, query("o" + std::to_string(i) + ".example.org", static_cast<std::uint16_t>(i + 1))));
    int answered = 0;
    for (const auto& c : many)
        if (auto r = c->receive(2s); r && rcode_of(*r) == 0) ++answered;
    CHECK(answered == 8);
    CHECK(farm.total().forward_loops == 0);
    CHECK(farm.stop());
    CHECK(warnings.count("upstream left out") == 1);
    CHECK(warnings.count("no upstreams") == 0);
}

TEST_CASE("workers forward: clients of several workers asking the same question at once get one upstream query", "[workers]")
{
    // Slow enough that every client's query arrives while the first is being asked.
    Upstream slow([](const Socket& socket, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
        std::this_thread::sleep_for(300ms);
        echo(socket, q, from);
    });
    auto options = forwarding_options();
    options.upstreams = {slow.host_port()};
    options.forward_timeout = 1500ms;
    options.forward_max_wait = 1500ms;
    Farm farm(options);
    auto many = clients(16);
    for (std::size_t i = 0; i < many.size(); ++i) {
        std::string name = i % 2 ? "SAME.example.org" : "same.EXAMPLE.org";  // resolvers randomise case
        REQUIRE(many[i]->send(farm.port, query(name, static_cast<std::uint16_t>(500 + i))));
    }
    int answered = 0;
    for (std::size_t i = 0; i < many.size(); ++i) {
        auto r = many[i]->receive(3s);
        if (!r) continue;
        // Its own ID and its own case (the question starts at byte 12: 4 "SAME" or "same").
        std::string asked(r->begin() + 13, r->begin() + 17);
        answered += rcode_of(*r) == 0 && id_of(*r) == 500 + i && asked == (i % 2 ? "SAME" : "same");
    }
    CHECK(answered == 16);
    CHECK(slow.received == 1);
    auto total = farm.total();
    CHECK(total.forwarded == 1);
    CHECK(total.forward_joined == 15);
    CHECK(farm.servers_with([](const dns::Metrics& m) { return m.forward_joined.load(); }) >= 1);
    CHECK(farm.servers_with([](const dns::Metrics& m) { return m.forwarded.load() + m.forward_joined.load(); }) > 1);
    CHECK(test_support::eventually([&] { return farm.in_flight() == 0; }, 1s));
    CHECK(farm.stop());
}

TEST_CASE("workers forward: stopping while forwards of several workers wait on one question answers them all", "[workers]")
{
    Upstream silent(nullptr);
    auto options = forwarding_options();
    options.upstreams = {silent.host_port()};
    options.forward_timeout = 300ms;
    options.forward_max_wait = 300ms;
    Farm farm(options);
    auto many = clients(12);
    for (std::size_t i = 0; i < many.size(); ++i)
        REQUIRE(many[i]->send(farm.port, query("wait.example.org", static_cast<std::uint16_t>(i + 1))));
    CHECK(test_support::eventually([&] {
        auto t = farm.total();
        return t.forwarded + t.forward_joined == 12;
    }, 1s));
    CHECK(farm.total().forwarded == 1);
    // Stopped with the question in flight: each server waits for its forwards, those that
    // joined another server's question included, and that one's timeout answers them all.
    CHECK(farm.stop());
    int servfails = 0;
    for (const auto& c : many)
        if (auto r = c->receive(1s); r && rcode_of(*r) == 2) ++servfails;
    CHECK(servfails == 12);
    CHECK(silent.received == 1);
}

TEST_CASE("workers forward: a query one worker forwarded that comes back to another is answered SERVFAIL, not forwarded again", "[workers]")
{
    // An upstream that passes each query on to the servers from a fresh socket (a fresh
    // source port: any worker may get it), as a forwarder pointed back at mesd would, and
    // hands back what it gets.
    std::atomic<int> servers_port{0};
    Upstream reflector([&](const Socket& socket, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
        Socket onward;
        if (!onward.send(servers_port, q)) return;
        auto back = onward.receive(2s);
        if (back) ::sendto(socket.fd, back->data(), back->size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
    });
    auto options = forwarding_options();
    options.upstreams = {reflector.host_port()};
    options.forward_timeout = 1000ms;
    options.forward_max_wait = 1500ms;
    Farm farm(options);
    servers_port = farm.port;
    constexpr int names = 8;
    int servfails = 0;
    for (int i = 0; i < names; ++i) {
        Socket client;
        REQUIRE(client.send(farm.port, query("loop" + std::to_string(i) + ".example.org", static_cast<std::uint16_t>(i + 1))));
        if (auto r = client.receive(3s); r && rcode_of(*r) == 2) ++servfails;
    }
    CHECK(servfails == names);
    auto total = farm.total();
    // Each client query forwarded once and come back once, to whichever worker.
    CHECK(total.forwarded == names);
    CHECK(total.forward_loops == names);
    CHECK(reflector.received == names);
    CHECK(farm.stop());
}
