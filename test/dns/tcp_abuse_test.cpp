// TCP clients that try to hold mesd's connection slots: a deadline for each message once its
// first byte is in (and for each reply to be taken), a cap per client address, and eviction
// of the idle or slowest connection when tcpMaxClients is reached. Through the real mesd.
#include "test/support/dns.hpp"

#include "conf/conf.hpp"

#include <catch2/catch.hpp>

#include <sys/resource.h>

#include <cerrno>
#include <regex>
#include <stop_token>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

using Clock = std::chrono::steady_clock;

// A counter's value in mesd's metrics text (0 when it is not there).
std::uint64_t metric(const Fixture& f, const std::string& name)
{
    std::smatch m;
    auto text = f.mesd->admin_get("/metrics");
    if (!std::regex_search(text, m, std::regex("\n" + name + " (\\d+)\n"))) return 0;
    return std::stoull(m[1]);
}

// A TCP connection to mesd from `source` (any 127.0.0.0/8 address: loopback takes them all).
int connect_from(const std::string& source, int port)
{
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in from{};
    from.sin_family = AF_INET;
    REQUIRE(::inet_pton(AF_INET, source.c_str(), &from.sin_addr) == 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) == 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<std::uint16_t>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0);
    return fd;
}

void send_all(int fd, const std::vector<std::uint8_t>& bytes)
{
    REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
}

// Whether mesd closed `fd` within `within`: end of stream or a reset (what it sent before is
// read and skipped).
bool closed_by_peer(int fd, std::chrono::milliseconds within)
{
    auto deadline = Clock::now() + within;
    while (true) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0))) != 1) return false;
        std::uint8_t buf[4096];
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
    }
}

// The message that query_then_prefix announces.
const std::vector<std::uint8_t> next_query = raw_query("mes-http.mesh");

// A query and, in the same write, the length prefix of the next one (next_query): its reply,
// once read, says that mesd has read the start of the next message too.
std::vector<std::uint8_t> query_then_prefix(const std::string& name)
{
    auto bytes = framed({raw_query(name)});
    bytes.push_back(static_cast<std::uint8_t>(next_query.size() >> 8));
    bytes.push_back(static_cast<std::uint8_t>(next_query.size() & 0xff));
    return bytes;
}

// Raises this process's open files limit to its hard limit (mesd, its child, inherits it and
// raises its own too); `needed` descriptors must fit.
void allow_open_files(rlim_t needed)
{
    rlimit nofile{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &nofile) == 0);
    INFO("the hard RLIMIT_NOFILE is " << nofile.rlim_max);
    REQUIRE(nofile.rlim_max >= needed);
    nofile.rlim_cur = nofile.rlim_max;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &nofile) == 0);
}

// Slow-loris clients: `count` connections from 127.0.1.1, 127.0.1.2, ... (`per_address`
// each), each sending the length prefix of a 100-byte message, then one byte a second.
struct Tricklers {
    std::vector<int> fds;
    std::jthread thread;

    Tricklers(int port, int count, int per_address)
    {
        for (int i = 0; i < count; ++i) {
            int fd = connect_from("127.0.1." + std::to_string(1 + i / per_address), port);
            fds.push_back(fd);
            std::uint8_t prefix[2] = {0, 100};
            REQUIRE(::send(fd, prefix, sizeof prefix, MSG_NOSIGNAL) == 2);
        }
        thread = std::jthread([this](std::stop_token stop) {
            auto next = Clock::now() + 1s;
            while (!stop.stop_requested()) {
                if (Clock::now() < next) {
                    std::this_thread::sleep_for(20ms);
                    continue;
                }
                next += 1s;
                std::uint8_t byte = 0;
                for (int fd : fds) ::send(fd, &byte, 1, MSG_NOSIGNAL | MSG_DONTWAIT);  // closed ones fail
            }
        });
    }
    ~Tricklers()
    {
        thread.request_stop();
        thread.join();
        for (int fd : fds) ::close(fd);
    }
    // How many mesd has closed, waiting up to `within` for `expected` of them (all of them
    // when 0) and, once there, 100 ms for any more.
    std::size_t closed(std::chrono::milliseconds within, std::size_t expected = 0)
    {
        if (expected == 0) expected = fds.size();
        std::vector<bool> done(fds.size(), false);
        std::size_t count = 0;
        auto deadline = Clock::now() + within;
        bool settling = false;
        while (count < fds.size() && Clock::now() < deadline) {
            if (count >= expected && !settling) {
                settling = true;
                deadline = Clock::now() + 100ms;
            }
            std::vector<pollfd> polls;
            std::vector<std::size_t> which;
            for (std::size_t i = 0; i < fds.size(); ++i)
                if (!done[i]) {
                    polls.push_back({fds[i], POLLIN, 0});
                    which.push_back(i);
                }
            if (::poll(polls.data(), polls.size(), 100) <= 0) continue;
            for (std::size_t k = 0; k < polls.size(); ++k) {
                if (!(polls[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                std::uint8_t buf[512];
                auto n = ::recv(polls[k].fd, buf, sizeof buf, MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN)) {
                    done[which[k]] = true;
                    ++count;
                }
            }
        }
        return count;
    }
};

// How long a fresh `dig +tcp` takes to get its answer; fails when it gets none.
Clock::duration dig_tcp(const Fixture& f)
{
    auto started = Clock::now();
    auto out = f.dig_out({"mes-http.mesh", "A", "+tcp", "+short"});
    auto took = Clock::now() - started;
    CHECK(out == "127.242.0.1\n");
    return took;
}

}  // namespace

TEST_CASE("TCP abuse: dns.tcpIoTimeout and dns.tcpMaxClientsPerIp are read, with Knot's and Unbound's defaults")
{
    auto defaults = conf::load_config_text("dns:\n  ttl: 30s\n", "mesd.yaml");
    REQUIRE(defaults.ok());
    CHECK(defaults.config.dns.tcp_io_timeout == 500ms);
    CHECK(defaults.config.dns.tcp_max_clients_per_ip == 0);

    auto set = conf::load_config_text("dns:\n  tcpIoTimeout: 2s\n  tcpMaxClientsPerIp: 16\n", "mesd.yaml");
    REQUIRE(set.ok());
    CHECK(set.config.dns.tcp_io_timeout == 2s);
    CHECK(set.config.dns.tcp_max_clients_per_ip == 16);

    auto zero = conf::load_config_text("dns:\n  tcpIoTimeout: 0s\n", "mesd.yaml");
    REQUIRE(zero.errors.size() == 1);
    CHECK_THAT(zero.errors[0].format(), Catch::StartsWith("mesd.yaml:2:17: dns.tcpIoTimeout: must be a duration"));
    auto negative = conf::load_config_text("dns:\n  tcpMaxClientsPerIp: -1\n", "mesd.yaml");
    REQUIRE(negative.errors.size() == 1);
    CHECK_THAT(negative.errors[0].format(), Catch::Contains("mesd.yaml:2:23: dns.tcpMaxClientsPerIp: must be between 0 and 1000000"));
}

TEST_CASE("TCP abuse: mesd raises its open files soft limit to the hard limit and logs both")
{
    rlimit saved{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
    REQUIRE(saved.rlim_max > 256);
    // mesd inherits a low soft limit, as from a default shell.
    rlimit lowered = saved;
    lowered.rlim_cur = 256;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &lowered) == 0);
    std::unique_ptr<Fixture> f;
    try {
        f = std::make_unique<Fixture>();
    } catch (...) {
        ::setrlimit(RLIMIT_NOFILE, &saved);
        throw;
    }
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &saved) == 0);
    auto hard = std::to_string(saved.rlim_max);
    CHECK_THAT(f->mesd->log(), Catch::Contains("msg=\"open files limit\" soft=" + hard + " hard=" + hard + "\n"));
}

TEST_CASE("TCP abuse: a message trickling in is closed after tcpIoTimeout from its first byte, and no sooner")
{
    MesdOptions o;
    o.dns_section = "  tcpIoTimeout: 400ms\n  tcpIdleTimeout: 5s\n  forward:\n    enabled: false\n";
    Fixture f(o);
    int fd = tcp_connect(f.mesd->dns_port());
    // A whole message and the first bytes of the next: the reply says mesd has read them.
    auto started = Clock::now();
    send_all(fd, query_then_prefix("mes-http.mesh"));
    REQUIRE(read_replies(fd, 1) == std::vector<int>{0});
    // One byte every 100 ms: each read used to re-arm the idle timeout, so this never ended.
    bool closed = false;
    while (!closed && Clock::now() - started < 3s) {
        std::uint8_t byte = 0;
        ::send(fd, &byte, 1, MSG_NOSIGNAL);
        closed = closed_by_peer(fd, 100ms);
    }
    auto took = Clock::now() - started;
    CHECK(closed);
    CHECK(took >= 395ms);  // the loop clock counts in whole milliseconds
    CHECK(took < 1200ms);
    CHECK(metric(f, "mesd_dns_tcp_io_timeouts_total") == 1);
    ::close(fd);
}

TEST_CASE("TCP abuse: a message fed one byte at a time within tcpIoTimeout is answered; between messages only the idle timeout applies")
{
    MesdOptions o;
    o.dns_section = "  tcpIoTimeout: 1s\n  tcpIdleTimeout: 1500ms\n  forward:\n    enabled: false\n";
    Fixture f(o);
    int fd = tcp_connect(f.mesd->dns_port());
    // Three pipelined messages, a byte every 2 ms (each message well inside its second).
    auto stream = framed({raw_query("mes-http.mesh"), raw_query("mes-tls.mesh"), raw_query("nothing.mesh")});
    for (auto byte : stream) {
        REQUIRE(::send(fd, &byte, 1, 0) == 1);
        std::this_thread::sleep_for(2ms);
    }
    CHECK(read_replies(fd, 3) == std::vector<int>{0, 0, 3});
    // Idle for longer than tcpIoTimeout: still open, and answering.
    CHECK_FALSE(closed_by_peer(fd, 1200ms));
    send_all(fd, framed({raw_query("mes-tls.mesh")}));
    CHECK(read_replies(fd, 1) == std::vector<int>{0});
    // Idle for longer than tcpIdleTimeout: closed, and not counted as an I/O timeout.
    auto idle_since = Clock::now();
    CHECK(closed_by_peer(fd, 3s));
    CHECK(Clock::now() - idle_since >= 1400ms);
    CHECK(metric(f, "mesd_dns_tcp_io_timeouts_total") == 0);
    ::close(fd);
}

TEST_CASE("TCP abuse: a forwarded query outstanding keeps a connection open past tcpIdleTimeout")
{
    // The upstream answers after 900 ms; the client's connection is idle for 300 ms.
    FakeUpstream slow([](int fd, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
        std::this_thread::sleep_for(900ms);
        auto r = a_reply(q, static_cast<std::uint16_t>((q[0] << 8) | q[1]), 9);
        ::sendto(fd, r.data(), r.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
    });
    MesdOptions o = forwarding({slow.port}, "2s");
    o.dns_section = "  tcpIdleTimeout: 300ms\n  tcpIoTimeout: 200ms\n" + o.dns_section;
    Fixture f(o);
    int fd = tcp_connect(f.mesd->dns_port());
    send_all(fd, framed({raw_query("slow.example")}));
    CHECK(read_replies(fd, 1) == std::vector<int>{0});
    CHECK(closed_by_peer(fd, 2s));  // then idle, and closed
    CHECK(metric(f, "mesd_dns_tcp_io_timeouts_total") == 0);
    ::close(fd);
}

TEST_CASE("TCP abuse: a client that never reads its replies is closed after tcpIoTimeout")
{
    MesdOptions o;
    o.dns_section = "  tcpIoTimeout: 300ms\n  tcpIdleTimeout: 10s\n  forward:\n    enabled: false\n";
    Fixture f(o);  // mes-big's TXT answer is about 1 KB
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 4096;
    REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<std::uint16_t>(f.mesd->dns_port()));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0);
    // About 8 MB of replies asked for, more than the socket buffers on both sides hold.
    auto query = raw_query("mes-big.mesh");
    query[query.size() - 3] = 16;  // TXT
    std::vector<std::vector<std::uint8_t>> batch(8000, query);
    auto bytes = framed(batch);
    auto started = Clock::now();
    std::size_t sent = 0;
    while (sent < bytes.size() && Clock::now() - started < 3s) {
        auto n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) sent += static_cast<std::size_t>(n);
        else if (n < 0 && errno != EAGAIN) break;  // closed already
        else std::this_thread::sleep_for(5ms);
    }
    bool timed_out = eventually([&] { return metric(f, "mesd_dns_tcp_io_timeouts_total") == 1; }, 4s);
    CHECK(timed_out);
    ::close(fd);
}

TEST_CASE("TCP abuse: tcpMaxClientsPerIp closes the newcomer over the cap from one address, not others")
{
    MesdOptions o;
    o.dns_section = "  tcpMaxClientsPerIp: 2\n  forward:\n    enabled: false\n";
    Fixture f(o);
    int port = f.mesd->dns_port();
    // One after another as mesd sees them: with workers, connections made microseconds apart
    // are accepted on different threads in no set order, and the third accepted is refused.
    int a = connect_from("127.0.0.1", port);
    REQUIRE(eventually([&] { return metric(f, "mesd_dns_tcp_connections_total") == 1; }));
    int b = connect_from("127.0.0.1", port);
    REQUIRE(eventually([&] { return metric(f, "mesd_dns_tcp_connections_total") == 2; }));
    int over = connect_from("127.0.0.1", port);
    CHECK(closed_by_peer(over, 2s));
    CHECK(metric(f, "mesd_dns_tcp_refused_per_ip_total") == 1);
    // The two within the cap, and another address, are served.
    int other = connect_from("127.0.0.2", port);
    for (int fd : {a, b, other}) {
        send_all(fd, framed({raw_query("mes-http.mesh")}));
        CHECK(read_replies(fd, 1) == std::vector<int>{0});
    }
    // A place freed is a place for the next (once mesd has seen the close).
    ::close(a);
    CHECK(eventually([&] {
        int again = connect_from("127.0.0.1", port);
        auto q = framed({raw_query("mes-tls.mesh")});
        ::send(again, q.data(), q.size(), MSG_NOSIGNAL);
        bool answered = read_replies(again, 1) == std::vector<int>{0};
        ::close(again);
        return answered;
    }, 3s));
    for (int fd : {b, over, other}) ::close(fd);
}

TEST_CASE("TCP abuse: at tcpMaxClients the oldest idle connection makes room, else the slowest message")
{
    MesdOptions o;
    o.dns_section = "  tcpMaxClients: 3\n  tcpIoTimeout: 30s\n  tcpIdleTimeout: 30s\n  forward:\n    enabled: false\n";
    // The order of victims on one loop. Across workers each publishes its first victim and a
    // newcomer's worker picks among them, which under load is not exact to the connection
    // (test/dns/workers_test.cpp checks eviction across workers).
    o.extra_args = {"--workers", "1"};
    Fixture f(o);
    int port = f.mesd->dns_port();
    // a: idle after one answer; b and c: in mid-message, b since earlier.
    int a = tcp_connect(port);
    send_all(a, framed({raw_query("mes-http.mesh")}));
    REQUIRE(read_replies(a, 1) == std::vector<int>{0});
    int b = tcp_connect(port);
    send_all(b, query_then_prefix("mes-http.mesh"));
    REQUIRE(read_replies(b, 1) == std::vector<int>{0});
    int c = tcp_connect(port);
    send_all(c, query_then_prefix("mes-tls.mesh"));
    REQUIRE(read_replies(c, 1) == std::vector<int>{0});

    // d takes a's place: a was idle.
    int d = tcp_connect(port);
    CHECK(closed_by_peer(a, 2s));
    send_all(d, query_then_prefix("mes-tls.mesh"));
    CHECK(read_replies(d, 1) == std::vector<int>{0});
    // Nobody idle now: e takes the place of b, whose message began first.
    int e = tcp_connect(port);
    CHECK(closed_by_peer(b, 2s));
    send_all(e, framed({raw_query("mes-http.mesh")}));
    CHECK(read_replies(e, 1) == std::vector<int>{0});
    // c and d are still there, and finish their messages.
    for (int fd : {c, d}) send_all(fd, next_query);
    for (int fd : {c, d}) CHECK(read_replies(fd, 1) == std::vector<int>{0});
    CHECK(metric(f, "mesd_dns_tcp_evicted_total") == 2);
    CHECK(metric(f, "mesd_dns_tcp_refused_total") == 0);
    for (int fd : {a, b, c, d, e}) ::close(fd);
}

TEST_CASE("TCP abuse: at tcpMaxClients with every connection owed an answer, the newcomer is refused")
{
    FakeUpstream silent(nullptr);
    MesdOptions o = forwarding({silent.port}, "2s");
    o.dns_section = "  tcpMaxClients: 1\n" + o.dns_section;
    Fixture f(o);
    int waiting = tcp_connect(f.mesd->dns_port());
    send_all(waiting, framed({raw_query("slow.example")}));
    REQUIRE(eventually([&] { return f.mesd->admin_get("/metrics").find("mesd_dns_forward_in_flight 1\n") != std::string::npos; }, 2s));
    int newcomer = tcp_connect(f.mesd->dns_port());
    CHECK(closed_by_peer(newcomer, 2s));
    CHECK(metric(f, "mesd_dns_tcp_refused_total") == 1);
    CHECK(metric(f, "mesd_dns_tcp_evicted_total") == 0);
    // The one waiting still gets its answer (SERVFAIL once the upstream's 2 s are up).
    CHECK(read_replies(waiting, 1) == std::vector<int>{2});
    ::close(newcomer);
    ::close(waiting);
}

TEST_CASE("TCP abuse: 1500 trickling clients are closed by tcpIoTimeout and a fresh dig +tcp is answered within 1 s")
{
    allow_open_files(4096);
    MesdOptions o;
    // Room for every trickler: no eviction, only the deadline, frees the slots.
    o.dns_section = "  tcpMaxClients: 1500\n  tcpIoTimeout: 500ms\n  tcpIdleTimeout: 10s\n  forward:\n    enabled: false\n";
    Fixture f(o);
    auto opening = Clock::now();
    Tricklers slow(f.mesd->dns_port(), 1500, 100);
    auto opened = Clock::now() - opening;
    INFO("opened 1500 connections in " << std::chrono::duration_cast<std::chrono::milliseconds>(opened).count() << " ms");
    CHECK(slow.closed(std::chrono::duration_cast<std::chrono::milliseconds>(opened) + 2s) == 1500);
    INFO("all closed " << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - opening).count()
                       << " ms after the first was opened");
    auto took = dig_tcp(f);
    INFO("dig took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    CHECK(took < 1s);
    CHECK(metric(f, "mesd_dns_tcp_io_timeouts_total") == 1500);
    CHECK(metric(f, "mesd_dns_tcp_evicted_total") == 0);
    CHECK(metric(f, "mesd_dns_tcp_refused_total") == 0);
}

TEST_CASE("TCP abuse: with a long tcpIoTimeout, 1500 trickling clients are evicted for a fresh dig +tcp, answered within 1 s")
{
    allow_open_files(4096);
    MesdOptions o;
    // 100 connections from each of 15 addresses: under the per-address cap, so only
    // eviction at tcpMaxClients (1024) can make room.
    o.dns_section = "  tcpIoTimeout: 60s\n  tcpMaxClientsPerIp: 128\n  forward:\n    enabled: false\n";
    // One loop: the count of evictions is exact there. With four workers under a loaded
    // machine one of the 1500 was seen accepted only after the count was read (see
    // test/dns/workers_test.cpp for eviction across workers).
    o.extra_args = {"--workers", "1"};
    Fixture f(o);
    Tricklers slow(f.mesd->dns_port(), 1500, 100);
    auto took = dig_tcp(f);
    INFO("dig took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    CHECK(took < 1s);
    // Every trickler beyond 1024 took the place of an earlier one, and dig took one more.
    // A trickler's connect completes in the kernel before a worker accepts it, and one whose
    // last ACK found an accept queue full is only established when the SYN-ACK is sent again
    // (1 s, then 2 s later): the last of them may be accepted (and evict) well after dig's
    // answer. Wait for the count, within 6 s.
    CHECK(slow.closed(6s, 1500 - 1024 + 1) == 1500 - 1024 + 1);
    CHECK(eventually([&] { return metric(f, "mesd_dns_tcp_evicted_total") == 1500 - 1024 + 1; }, 2s));
    CHECK(metric(f, "mesd_dns_tcp_evicted_total") == 1500 - 1024 + 1);
    CHECK(metric(f, "mesd_dns_tcp_io_timeouts_total") == 0);
    CHECK(metric(f, "mesd_dns_tcp_refused_per_ip_total") == 0);
    CHECK(metric(f, "mesd_dns_tcp_refused_total") == 0);
}
