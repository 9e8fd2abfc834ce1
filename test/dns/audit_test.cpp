// The DNS side attacked through the real mesd binary: TCP clients that half-close, IPv4
// clients of a dual-stack listener.
#include "test/support/dns.hpp"

using namespace test_support;
using namespace std::chrono_literals;

namespace {

double metric(const std::string& text, const std::string& name)
{
    auto at = text.find("\n" + name + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + name.size() + 2));
}

int rcode_of(const std::vector<std::uint8_t>& reply) { return reply.size() >= 12 ? reply[3] & 0x0f : -1; }

// An upstream that answers every query with 127.0.0.9 after `delay`.
FakeUpstream late_upstream(std::chrono::milliseconds delay)
{
    return FakeUpstream([delay](int fd, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
        std::this_thread::sleep_for(delay);
        auto r = a_reply(q, static_cast<std::uint16_t>((q[0] << 8) | q[1]), 9);
        ::sendto(fd, r.data(), r.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
    });
}

std::vector<std::uint8_t> with_id(std::vector<std::uint8_t> q, std::uint16_t id)
{
    q[0] = static_cast<std::uint8_t>(id >> 8);
    q[1] = static_cast<std::uint8_t>(id & 0xff);
    return q;
}

}  // namespace

TEST_CASE("audit: a TCP client that half-closes after its queries still gets every answer with forwarded ones")
{
    // RFC 7766 section 6.2.4 / RFC 1035 4.2.2: a client may send its queries and shut down
    // its side (as `socat` and one-shot scripts do); the answers it is owed still go out.
    auto upstream = late_upstream(150ms);
    Fixture f(forwarding({upstream.port}, "1s"));
    int fd = tcp_connect(f.mesd->dns_port());
    auto stream = framed({with_id(raw_query("mes-http.mesh"), 1), with_id(raw_query("late.example"), 2)});
    REQUIRE(::send(fd, stream.data(), stream.size(), 0) == static_cast<ssize_t>(stream.size()));
    REQUIRE(::shutdown(fd, SHUT_WR) == 0);
    auto rcodes = read_replies(fd, 2);
    CHECK(rcodes == std::vector<int>{0, 0});
    ::close(fd);
    // The connection is closed once its answers are out, not left open.
    CHECK(eventually([&] {
        return metric(f.mesd->admin_get("/metrics"), "mesd_dns_forward_in_flight") == 0;
    }, 2s));
}

TEST_CASE("audit: IPv4 clients of a dual-stack listener are allowed to forward as their IPv4 address is")
{
    // On [::] an IPv4 client is seen as ::ffff:a.b.c.d (RFC 4291 2.5.5.2); the default allow
    // list names 127.0.0.0/8, which must cover it.
    auto upstream = late_upstream(0ms);
    auto options = forwarding({upstream.port}, "1s");
    options.dns_listen = "[::]:0";
    Fixture f(options);
    auto udp = udp_exchange(f.mesd->dns_port(), raw_query("mapped.example"), 2000ms);
    CHECK(rcode_of(udp) == 0);
    int fd = tcp_connect(f.mesd->dns_port());
    auto stream = framed({raw_query("mapped-tcp.example")});
    REQUIRE(::send(fd, stream.data(), stream.size(), 0) == static_cast<ssize_t>(stream.size()));
    CHECK(read_replies(fd, 1) == std::vector<int>{0});
    ::close(fd);
}
