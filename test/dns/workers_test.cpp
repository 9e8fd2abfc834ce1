// The DNS server on several worker loops: one dns::Server per workers::Worker, all bound to
// the same port with SO_REUSEPORT, answering from one SharedCatalog through a CatalogSource
// each, with the rate limit and the TCP client limits shared. The test thread plays the
// control loop: it writes the store and refreshes the StoreSource that publishes catalogs.
#include "dns/dns.hpp"
#include "dns/rate_limit.hpp"
#include "workers/worker.hpp"

#include "test/dns/workers_farm.hpp"

#include "test/support/resources.hpp"
#include "test/support/temp_store.hpp"

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
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::uint16_t type_a = 1, type_txt = 16;
using workers_farm::Farm;
using workers_farm::worker_count;

// Polls `check` every millisecond until it holds or `within` has passed.
template <class Check>
bool eventually(Check check, std::chrono::milliseconds within = 5s)
{
    auto deadline = Clock::now() + within;
    while (!check()) {
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

std::vector<std::uint8_t> query(const std::string& name, std::uint16_t type, std::uint16_t id)
{
    std::vector<std::uint8_t> q = {static_cast<std::uint8_t>(id >> 8), static_cast<std::uint8_t>(id), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    std::size_t start = 0;
    while (start <= name.size()) {
        auto dot = name.find('.', start);
        if (dot == std::string::npos) dot = name.size();
        if (dot > start) {
            q.push_back(static_cast<std::uint8_t>(dot - start));
            q.insert(q.end(), name.begin() + static_cast<std::ptrdiff_t>(start), name.begin() + static_cast<std::ptrdiff_t>(dot));
        }
        start = dot + 1;
    }
    q.insert(q.end(), {0, static_cast<std::uint8_t>(type >> 8), static_cast<std::uint8_t>(type), 0, 1});
    return q;
}

struct Reply {
    std::uint16_t id = 0;
    std::uint8_t rcode = 0xff;
    std::uint16_t answers = 0;
    std::vector<std::uint8_t> wire;
    // The address of a one-record A answer to a query without EDNS: the reply's last 4 bytes.
    std::string a() const
    {
        if (answers != 1 || wire.size() < 16) return "";
        char text[INET_ADDRSTRLEN] = "";
        ::inet_ntop(AF_INET, wire.data() + wire.size() - 4, text, sizeof text);
        return text;
    }
    bool contains(const std::string& s) const
    {
        return std::search(wire.begin(), wire.end(), s.begin(), s.end()) != wire.end();
    }
};

Reply parse(const std::uint8_t* data, std::size_t size)
{
    Reply r;
    if (size < 12) return r;
    r.id = static_cast<std::uint16_t>((data[0] << 8) | data[1]);
    r.rcode = data[3] & 0x0f;
    r.answers = static_cast<std::uint16_t>((data[6] << 8) | data[7]);
    r.wire.assign(data, data + size);
    return r;
}

// 127.0.0.1 or ::1, at `port`.
struct Loopback {
    sockaddr_storage address{};
    socklen_t size = 0;
    Loopback(bool v6, int port)
    {
        if (v6) {
            auto* in6 = reinterpret_cast<sockaddr_in6*>(&address);
            in6->sin6_family = AF_INET6;
            in6->sin6_port = htons(static_cast<std::uint16_t>(port));
            in6->sin6_addr = in6addr_loopback;
            size = sizeof *in6;
        } else {
            auto* in = reinterpret_cast<sockaddr_in*>(&address);
            in->sin_family = AF_INET;
            in->sin_port = htons(static_cast<std::uint16_t>(port));
            in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            size = sizeof *in;
        }
    }
    const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&address); }
};

// A UDP client socket on 127.0.0.1 with a port of its own: the kernel hashes each source
// port to one of the servers' sockets.
struct UdpClient {
    int fd = -1;
    bool v6 = false;
    explicit UdpClient(bool ipv6 = false) : v6(ipv6)
    {
        fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        Loopback any(v6, 0);
        REQUIRE(::bind(fd, any.get(), any.size) == 0);
    }
    ~UdpClient()
    {
        if (fd >= 0) ::close(fd);
    }
    UdpClient(const UdpClient&) = delete;
    UdpClient& operator=(const UdpClient&) = delete;

    // No Catch macro here: a client may be used from a thread of the test's own.
    bool send(int port, const std::vector<std::uint8_t>& q) const
    {
        Loopback to(v6, port);
        return ::sendto(fd, q.data(), q.size(), 0, to.get(), to.size) == static_cast<ssize_t>(q.size());
    }
    // The next reply, or none within `wait`.
    std::optional<Reply> receive(std::chrono::milliseconds wait = 2s) const
    {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return std::nullopt;
        std::array<std::uint8_t, 4096> buf;
        auto n = ::recv(fd, buf.data(), buf.size(), 0);
        if (n <= 0) return std::nullopt;
        return parse(buf.data(), static_cast<std::size_t>(n));
    }
    // Every reply waiting now (each within `wait` of the one before).
    int drain(std::chrono::milliseconds wait) const
    {
        int n = 0;
        while (receive(wait)) ++n;
        return n;
    }
};

// One TCP connection to the servers' port.
struct TcpClient {
    int fd = -1;
    explicit TcpClient(int port, bool v6 = false)
    {
        fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        Loopback to(v6, port);
        REQUIRE(::connect(fd, to.get(), to.size) == 0);
    }
    ~TcpClient()
    {
        if (fd >= 0) ::close(fd);
    }
    TcpClient(const TcpClient&) = delete;
    TcpClient& operator=(const TcpClient&) = delete;

    bool send(const std::vector<std::uint8_t>& q) const
    {
        std::vector<std::uint8_t> framed = {static_cast<std::uint8_t>(q.size() >> 8), static_cast<std::uint8_t>(q.size())};
        framed.insert(framed.end(), q.begin(), q.end());
        return ::send(fd, framed.data(), framed.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(framed.size());
    }
    // A reply, or none: the connection closed (or nothing within `wait`).
    std::optional<Reply> receive(std::chrono::milliseconds wait = 2s) const
    {
        std::vector<std::uint8_t> in;
        auto deadline = Clock::now() + wait;
        while (true) {
            if (in.size() >= 2) {
                std::size_t len = (static_cast<std::size_t>(in[0]) << 8) | in[1];
                if (in.size() - 2 >= len) return parse(in.data() + 2, len);
            }
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            pollfd p{fd, POLLIN, 0};
            if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return std::nullopt;
            std::array<std::uint8_t, 4096> buf;
            auto n = ::recv(fd, buf.data(), buf.size(), 0);
            if (n <= 0) return std::nullopt;
            in.insert(in.end(), buf.begin(), buf.begin() + n);
        }
    }
    // Whether the server closed the connection (EOF or reset), seen within `wait`.
    bool closed(std::chrono::milliseconds wait) const
    {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return false;
        std::uint8_t byte = 0;
        return ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
    }
};


// `rounds` rounds of one query from each client, each round's replies read before the next
// (no Catch macro: it runs on a thread of the test's own too).
struct Exchange {
    int sent = 0;
    int replied = 0;
    int wrong = 0;
};

template <class Ask, class Check>
Exchange exchange(const std::vector<std::unique_ptr<UdpClient>>& clients, int port, int rounds, Ask ask, Check check)
{
    Exchange e;
    std::uint16_t id = 1;
    for (int round = 0; round < rounds; ++round) {
        std::vector<std::uint16_t> ids;
        for (const auto& c : clients) {
            ids.push_back(id);
            if (!c->send(port, ask(id))) ++e.wrong;
            ++id;
            ++e.sent;
        }
        for (std::size_t i = 0; i < clients.size(); ++i) {
            auto reply = clients[i]->receive();
            if (!reply) continue;
            ++e.replied;
            if (reply->id != ids[i] || !check(*reply)) ++e.wrong;
        }
    }
    return e;
}

template <class Ask, class Check>
Exchange exchange(const Farm& farm, const std::vector<std::unique_ptr<UdpClient>>& clients, int rounds, Ask ask, Check check)
{
    return exchange(clients, clients.empty() || !clients[0]->v6 ? farm.port : farm.port6, rounds, ask, check);
}

std::vector<std::unique_ptr<UdpClient>> udp_clients(std::size_t n, bool v6 = false)
{
    std::vector<std::unique_ptr<UdpClient>> out;
    for (std::size_t i = 0; i < n; ++i) out.push_back(std::make_unique<UdpClient>(v6));
    return out;
}

std::size_t serving(const std::vector<std::uint64_t>& counts)
{
    return static_cast<std::size_t>(std::ranges::count_if(counts, [](std::uint64_t n) { return n > 0; }));
}

}  // namespace

TEST_CASE("workers: queries from many source ports are answered by several servers whose metrics sum to what was sent", "[workers]")
{
    Farm farm({}, {test_support::make_mes("mes-a"), test_support::make_mes("mes-b")});
    auto a = farm.address_of("mes-a.mesh"), b = farm.address_of("mes-b.mesh");
    auto clients = udp_clients(48);
    // A, then a name in no MES (NXDOMAIN), then B, in turn.
    auto e = exchange(farm, clients, 6,
                      [](std::uint16_t id) {
                          const char* names[] = {"mes-a.mesh", "nope.mesh", "MES-B.mesh"};
                          return query(names[id % 3], type_a, id);
                      },
                      [&](const Reply& r) {
                          switch (r.id % 3) {
                          case 0: return r.rcode == 0 && r.a() == a;
                          case 1: return r.rcode == 3 && r.answers == 0;
                          default: return r.rcode == 0 && r.a() == b;
                          }
                      });
    CHECK(e.sent == 48 * 6);
    CHECK(e.replied == e.sent);
    CHECK(e.wrong == 0);
    // Read while the loops run: each counter is a single-writer atomic.
    CHECK(eventually([&] { return farm.total().answered == static_cast<std::uint64_t>(e.sent); }));
    auto each = farm.answered_each();
    INFO("answered by each worker: " << each[0] << " " << each[1] << " " << each[2] << " " << each[3]);
    CHECK(serving(each) > 1);
    auto total = farm.total();
    CHECK(total.answered_fast == static_cast<std::uint64_t>(e.sent));
    std::uint64_t a_queries = 0, nxdomain = 0, noerror = 0;
    total.queries_by_qtype.each([&](std::string_view label, std::uint64_t n) { a_queries += label == "A" ? n : 0; });
    total.replies_by_rcode.each([&](std::string_view label, std::uint64_t n) {
        nxdomain += label == "NXDOMAIN" ? n : 0;
        noerror += label == "NOERROR" ? n : 0;
    });
    CHECK(a_queries == static_cast<std::uint64_t>(e.sent));
    CHECK(nxdomain == static_cast<std::uint64_t>(e.sent / 3));
    CHECK(noerror == static_cast<std::uint64_t>(e.sent - e.sent / 3));
    CHECK(total.latency_count == static_cast<std::uint64_t>(e.sent));
    CHECK(total.latency_sum.seconds() > 0);
    std::uint64_t buckets = 0;
    for (const auto& n : total.latency_buckets) buckets += n;
    CHECK(buckets == static_cast<std::uint64_t>(e.sent));
    CHECK(farm.stop());
}

TEST_CASE("workers: servers given the first one's bound addresses share its ports over IPv4 and IPv6 for UDP and TCP", "[workers]")
{
    Farm farm;
    auto a = farm.address_of("mes-a.mesh");
    for (bool v6 : {false, true}) {
        INFO((v6 ? "IPv6" : "IPv4"));
        auto before = farm.answered_each();
        auto clients = udp_clients(32, v6);
        auto e = exchange(farm, clients, 2, [](std::uint16_t id) { return query("mes-a.mesh", type_a, id); },
                          [&](const Reply& r) { return r.rcode == 0 && r.a() == a; });
        CHECK(e.replied == e.sent);
        CHECK(e.wrong == 0);
        auto after = farm.answered_each();
        std::size_t served = 0;
        for (std::size_t i = 0; i < worker_count; ++i) served += after[i] > before[i];
        CHECK(served > 1);
        // TCP connections too, spread over the servers' listeners by the kernel.
        auto accepted = [&] {
            std::vector<std::uint64_t> out;
            for (const auto& s : farm.servers) out.push_back(s->metrics().tcp_connections);
            return out;
        };
        auto tcp_before = accepted();
        for (std::uint16_t i = 0; i < 16; ++i) {
            TcpClient c(v6 ? farm.port6 : farm.port, v6);
            REQUIRE(c.send(query("mes-a.mesh", type_a, i)));
            auto reply = c.receive();
            REQUIRE(reply);
            CHECK(reply->a() == a);
        }
        auto tcp_after = accepted();
        std::size_t accepting = 0;
        for (std::size_t i = 0; i < worker_count; ++i) accepting += tcp_after[i] > tcp_before[i];
        CHECK(accepting > 1);
    }
    CHECK(farm.stop());
}

TEST_CASE("workers: a catalog published while queries flow is answered by every worker and no answer is lost", "[workers]")
{
    Farm farm;
    auto a = farm.address_of("mes-a.mesh");
    auto clients = udp_clients(32);
    std::atomic<bool> done{false};
    // Queries for mes-a from another thread all along: every one answered, and rightly.
    Exchange steady;
    auto others = udp_clients(16);
    std::thread asker([&] {
        while (!done) {
            auto e = exchange(farm, others, 1, [](std::uint16_t id) { return query("mes-a.mesh", type_a, id); },
                              [&](const Reply& r) { return r.rcode == 0 && r.a() == a; });
            steady.sent += e.sent;
            steady.replied += e.replied;
            steady.wrong += e.wrong;
        }
    });
    for (int round = 1; round <= 3; ++round) {
        auto name = "mes-new-" + std::to_string(round);
        auto before = exchange(farm, clients, 1, [&](std::uint16_t id) { return query(name + ".mesh", type_a, id); },
                               [](const Reply& r) { return r.rcode == 3; });
        CHECK(before.replied == before.sent);
        CHECK(before.wrong == 0);
        farm.apply({test_support::make_mes(name)});
        farm.publish();
        auto address = farm.address_of(name + ".mesh");
        // Every query sent after the publication gets the new name, whichever worker answers.
        auto answered_before = farm.answered_each();
        auto after = exchange(farm, clients, 2, [&](std::uint16_t id) { return query(name + ".mesh", type_a, id); },
                              [&](const Reply& r) { return r.rcode == 0 && r.a() == address; });
        CHECK(after.replied == after.sent);
        CHECK(after.wrong == 0);
        auto answered_after = farm.answered_each();
        std::size_t moved = 0;
        for (std::size_t i = 0; i < worker_count; ++i) moved += answered_after[i] > answered_before[i];
        CHECK(moved > 1);
        // And every worker, whichever the kernel sent queries to, holds the new catalog once
        // it begins its next batch (asked on its own thread).
        auto knows = std::make_shared<std::array<std::atomic<int>, worker_count>>();
        for (std::size_t i = 0; i < worker_count; ++i)
            farm.workers[i]->post([source = farm.sources[i].get(), knows, i, name] {
                source->begin_batch();
                (*knows)[i] = source->find_addresses(name + ".mesh") ? 1 : 2;
            });
        CHECK(eventually([&] { return std::ranges::all_of(*knows, [](const auto& k) { return k.load() != 0; }); }));
        for (const auto& k : *knows) CHECK(k.load() == 1);
    }
    done = true;
    asker.join();
    CHECK(steady.sent > 0);
    CHECK(steady.replied == steady.sent);
    CHECK(steady.wrong == 0);
    CHECK(farm.stop());
}

TEST_CASE("workers: each worker's TXT cache follows a new catalog and an old catalog is freed once no worker holds it", "[workers]")
{
    Farm farm;
    auto clients = udp_clients(32);
    auto txt = [&](const std::string& expect) {
        return exchange(farm, clients, 2, [](std::uint16_t id) { return query("mes-a.mesh", type_txt, id); },
                        [&](const Reply& r) { return r.rcode == 0 && r.answers == 1 && r.contains(expect); });
    };
    auto first = txt("port=80");
    CHECK(first.replied == first.sent);
    CHECK(first.wrong == 0);
    CHECK(serving(farm.answered_each()) > 1);
    // Every TXT answer from the fast path: each worker read the store once and kept it.
    CHECK(farm.total().answered_fast == static_cast<std::uint64_t>(first.sent));

    std::weak_ptr<const dns::Catalog> old = farm.control->shared().current().first;
    REQUIRE_FALSE(old.expired());
    farm.apply({test_support::make_mes("mes-a", 81)});
    farm.publish();
    auto second = txt("port=81");
    CHECK(second.replied == second.sent);
    CHECK(second.wrong == 0);
    // A worker that had no query since holds the old catalog until told to look (what the
    // daemon posts to idle workers after a publication); then nothing holds it.
    for (std::size_t i = 0; i < worker_count; ++i)
        farm.workers[i]->post([source = farm.sources[i].get()] { source->begin_batch(); });
    CHECK(eventually([&] { return old.expired(); }));
    CHECK(farm.stop());
}

TEST_CASE("workers: the rate limit holds across every worker, not once per worker", "[workers]")
{
    constexpr int rate = 100, burst = 50;
    dns::ServerOptions options;
    options.rate_limit.responses_per_second = rate;
    options.rate_limit.burst = burst;
    options.rate_limit.slip = 0;
    options.rate_limit.exempt.clear();  // loopback is exempt by default
    Farm farm(options);
    auto clients = udp_clients(32);
    // One /24 (127.0.0.1) from 32 ports spread over the workers: 32 queries every 20 ms for
    // 0.4 s, sixteen times the rate.
    auto start = Clock::now();
    int sent = 0, replies = 0;
    std::uint16_t id = 0;
    for (int round = 0; round < 20; ++round) {
        for (const auto& c : clients) {
            REQUIRE(c->send(farm.port, query("mes-a.mesh", type_a, ++id)));
            ++sent;
        }
        for (const auto& c : clients) replies += c->drain(0ms);
        std::this_thread::sleep_until(start + 20ms * (round + 1));
    }
    std::this_thread::sleep_for(100ms);
    for (const auto& c : clients) replies += c->drain(0ms);
    double lasted = std::chrono::duration<double>(Clock::now() - start).count();
    CHECK(eventually([&] {
        auto t = farm.total();
        return t.answered + t.rate_limited_dropped == static_cast<std::uint64_t>(sent);
    }));
    auto total = farm.total();
    auto each = farm.answered_each();
    INFO(replies << " of " << sent << " answered in " << lasted << " s; by each worker " << each[0] << " " << each[1]
                 << " " << each[2] << " " << each[3]);
    CHECK(serving(each) > 1);
    // The burst and the rate once, for every worker together (four times that, and more, if
    // each worker had buckets of its own).
    CHECK(replies >= burst);
    CHECK(replies <= burst + static_cast<int>(rate * lasted) + 2);
    CHECK(total.answered == static_cast<std::uint64_t>(replies));
    CHECK(total.rate_limited_dropped == static_cast<std::uint64_t>(sent - replies));
    CHECK(farm.stop());
}

TEST_CASE("workers: tcpMaxClients holds across every worker: a newcomer takes the place of the oldest idle client on any worker", "[workers]")
{
    constexpr std::uint32_t max_clients = 8;
    dns::ServerOptions options;
    options.tcp_max_clients = max_clients;
    Farm farm(options);
    auto a = farm.address_of("mes-a.mesh");
    std::vector<std::unique_ptr<TcpClient>> first, second;
    std::uint16_t id = 0;
    for (std::uint32_t i = 0; i < max_clients; ++i) {
        first.push_back(std::make_unique<TcpClient>(farm.port));
        REQUIRE(first.back()->send(query("mes-a.mesh", type_a, ++id)));
        auto reply = first.back()->receive();
        REQUIRE(reply);
        CHECK(reply->a() == a);
    }
    CHECK(farm.limits->tcp_clients() == max_clients);
    auto connections = [&] {
        std::uint64_t n = 0;
        for (const auto& s : farm.servers) n += s->metrics().tcp_connections;
        return n;
    };
    CHECK(connections() == max_clients);
    // As many again: each lands on some worker and takes the place of the oldest idle client,
    // whichever worker holds it (that worker closes it); the count never passes 8.
    int answered = 0;
    for (std::uint32_t i = 0; i < max_clients; ++i) {
        second.push_back(std::make_unique<TcpClient>(farm.port));
        if (second.back()->send(query("mes-a.mesh", type_a, ++id)) && second.back()->receive(1s)) ++answered;
        CHECK(farm.limits->tcp_clients() <= max_clients);
    }
    auto total = farm.total();
    INFO("evicted " << total.tcp_evicted << ", refused " << total.tcp_refused << ", answered " << answered);
    CHECK(total.tcp_evicted == max_clients);
    CHECK(total.tcp_refused == 0);
    CHECK(answered == static_cast<int>(max_clients));
    CHECK(connections() == max_clients + total.tcp_evicted);
    CHECK(farm.limits->tcp_clients() == max_clients);
    // What the clients see: the first ones closed, the newcomers still open.
    int closed_first = 0, closed_second = 0;
    for (const auto& c : first) closed_first += c->closed(50ms);
    for (const auto& c : second) closed_second += c->closed(50ms);
    // Each worker publishes the rank of its oldest idle client as it changes; a newcomer that
    // reads a rank a moment before its holder moves on may close that worker's next oldest,
    // a newcomer of the first half's: never more than one such step behind here, where
    // newcomers come one after another.
    CHECK(closed_first + closed_second == static_cast<int>(max_clients));
    CHECK(closed_first >= static_cast<int>(max_clients) - 1);
    CHECK(farm.stop());
}

TEST_CASE("workers: tcpMaxClientsPerIp counts an address's connections across every worker", "[workers]")
{
    dns::ServerOptions options;
    options.tcp_max_clients_per_ip = 3;
    Farm farm(options);
    std::vector<std::unique_ptr<TcpClient>> clients;
    int answered = 0;
    for (int i = 0; i < 8; ++i) {
        clients.push_back(std::make_unique<TcpClient>(farm.port));
        if (clients.back()->send(query("mes-a.mesh", type_a, static_cast<std::uint16_t>(i))) && clients.back()->receive(1s))
            ++answered;
    }
    CHECK(answered == 3);
    CHECK(farm.total().tcp_refused_per_ip == 5);
    CHECK(farm.limits->tcp_clients() == 3);
    // One closed by its client frees a place for the address on any worker.
    clients.front().reset();
    CHECK(eventually([&] { return farm.limits->tcp_clients() == 2; }));
    TcpClient again(farm.port);
    REQUIRE(again.send(query("mes-a.mesh", type_a, 99)));
    CHECK(again.receive());
    CHECK(farm.stop());
}

TEST_CASE("workers: upstreams and in_flight and metrics are read from another thread while every worker forwards", "[workers]")
{
    // An upstream on this side that answers every query with itself as the reply (QR set).
    UdpClient upstream;
    sockaddr_in6 self{};
    socklen_t self_size = sizeof self;
    REQUIRE(::getsockname(upstream.fd, reinterpret_cast<sockaddr*>(&self), &self_size) == 0);
    int upstream_port = ntohs(reinterpret_cast<sockaddr_in*>(&self)->sin_port);
    std::atomic<bool> done{false};
    std::atomic<int> echoed{0};
    std::thread echo([&] {
        std::array<std::uint8_t, 4096> buf;
        while (!done) {
            pollfd p{upstream.fd, POLLIN, 0};
            if (::poll(&p, 1, 10) <= 0) continue;
            sockaddr_storage from{};
            socklen_t from_size = sizeof from;
            auto n = ::recvfrom(upstream.fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &from_size);
            if (n < 12) continue;
            buf[2] |= 0x80;
            ::sendto(upstream.fd, buf.data(), static_cast<std::size_t>(n), 0, reinterpret_cast<sockaddr*>(&from), from_size);
            ++echoed;
        }
    });
    dns::ServerOptions options;
    options.upstreams = {conf::HostPort{"127.0.0.1", static_cast<std::uint16_t>(upstream_port)}};
    options.allow = {"127.0.0.0/8"};
    Farm farm(options);
    // The control thread's reads, all the while.
    std::atomic<bool> reading{true};
    std::uint64_t reads = 0;
    std::thread reader([&] {
        while (reading) {
            for (const auto& s : farm.servers) {
                reads += s->in_flight();
                for (const auto& u : s->upstreams()) reads += u.answers;
                reads += s->metrics().forwarded;
            }
            std::this_thread::yield();
        }
    });
    auto clients = udp_clients(32);
    auto e = exchange(farm, clients, 4,
                      [](std::uint16_t id) { return query("host-" + std::to_string(id) + ".example.org", type_a, id); },
                      [](const Reply& r) { return r.rcode == 0; });
    reading = false;
    reader.join();
    done = true;
    echo.join();
    CHECK(e.replied == e.sent);
    CHECK(e.wrong == 0);
    CHECK(echoed == e.sent);
    auto total = farm.total();
    CHECK(total.forwarded == static_cast<std::uint64_t>(e.sent));
    // One record of the upstream, shared: every server reports all of its answers.
    std::uint64_t forwarding = 0;
    for (std::size_t i = 0; i < worker_count; ++i) {
        auto upstreams = farm.servers[i]->upstreams();
        REQUIRE(upstreams.size() == 1);
        CHECK(upstreams[0].address == "127.0.0.1:" + std::to_string(upstream_port));
        CHECK(upstreams[0].answers == static_cast<std::uint64_t>(e.sent));
        forwarding += farm.servers[i]->metrics().forwarded > 0;
    }
    CHECK(forwarding > 1);
    CHECK(eventually([&] {
        return std::ranges::all_of(farm.servers, [](const auto& s) { return s->in_flight() == 0; });
    }));
    CHECK(farm.stop());
}

TEST_CASE("workers: stopping every server on its own loop ends every loop, with TCP clients open", "[workers]")
{
    Farm farm;
    std::vector<std::unique_ptr<TcpClient>> clients;
    for (int i = 0; i < 8; ++i) {
        clients.push_back(std::make_unique<TcpClient>(farm.port));
        REQUIRE(clients.back()->send(query("mes-a.mesh", type_a, static_cast<std::uint16_t>(i))));
        REQUIRE(clients.back()->receive());
    }
    CHECK(farm.stop());
    for (const auto& c : clients) CHECK(c->closed(1s));
    // The port is free again: nothing of the servers is left listening.
    UdpClient probe;
    CHECK(probe.send(farm.port, query("mes-a.mesh", type_a, 1)));
    CHECK_FALSE(probe.receive(100ms));
}

TEST_CASE("rate limiter: checks of one bucket from four threads pass no more than the rate in all", "[workers]")
{
    constexpr std::uint32_t rate = 2000, burst = 100;
    dns::RateLimitSettings settings;
    settings.responses_per_second = rate;
    settings.burst = burst;
    settings.exempt.clear();
    dns::RateLimiter limiter(settings);
    const std::array<std::uint8_t, 4> source = {192, 0, 2, 1};
    // Each thread reads the clock for itself, as each worker does once per batch, and three
    // of them are a few milliseconds off: the times the bucket sees go back and forth.
    std::atomic<std::uint64_t> passed{0}, checks{0};
    std::atomic<bool> go{false};
    auto base = Clock::now();
    auto ms = [&](int skew) {
        return static_cast<std::uint64_t>(1'000'000 + skew +
                                          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - base).count());
    };
    constexpr auto length = 300ms;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            while (!go) std::this_thread::yield();
            std::uint64_t mine = 0, n = 0;
            while (true) {
                // The time first, then the end: no check comes with a time past the end.
                auto now = ms(t);
                if (now >= 1'000'000 + static_cast<std::uint64_t>(t + length.count())) break;
                mine += limiter.check(source, now) == dns::RateLimiter::Verdict::pass;
                ++n;
            }
            passed += mine;
            checks += n;
        });
    go = true;
    for (auto& t : threads) t.join();
    // Times seen from 1,000,000 to 1,000,000 + 3 + 299: what refills in 302 ms, and the burst.
    auto limit = burst + rate * static_cast<std::uint64_t>(length.count() + 2) / 1000;
    INFO(passed << " of " << checks << " checks passed; at most " << limit);
    CHECK(checks > 4 * limit);
    CHECK(passed <= limit);
    CHECK(passed >= burst + rate * 200 / 1000);  // refills are not lost either
}

TEST_CASE("rate limiter: a time a little behind a bucket's neither refills nor moves the bucket back", "[workers]")
{
    dns::RateLimitSettings settings;
    settings.responses_per_second = 10;
    settings.burst = 1;
    settings.slip = 0;
    settings.exempt.clear();
    dns::RateLimiter limiter(settings);
    const std::array<std::uint8_t, 4> source = {198, 51, 100, 9};
    using V = dns::RateLimiter::Verdict;
    const std::uint64_t t0 = 1'000'000;
    CHECK(limiter.check(source, t0) == V::pass);
    CHECK(limiter.check(source, t0) == V::drop);
    CHECK(limiter.check(source, t0 + 100) == V::pass);  // 100 ms at 10/s: one more
    // Another worker's clock, read 60 ms earlier: nothing back, and the bucket keeps t0 + 100,
    // so those 100 ms are not refilled a second time.
    CHECK(limiter.check(source, t0 + 40) == V::drop);
    CHECK(limiter.check(source, t0 + 100) == V::drop);
    CHECK(limiter.check(source, t0 + 199) == V::drop);
    CHECK(limiter.check(source, t0 + 200) == V::pass);
    // A clock far behind (restarted) becomes the bucket's time, as a first sight's would:
    // it refills from there.
    CHECK(limiter.check(source, 100) == V::drop);
    CHECK(limiter.check(source, 199) == V::drop);
    CHECK(limiter.check(source, 200) == V::pass);
}
