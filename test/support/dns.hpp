// The DNS end-to-end tests' clients and peers: a running mesd with the test resources, raw
// queries over UDP and TCP, dnsmasq as a real upstream and a UDP socket that plays one.
#pragma once

#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/netns.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

using Dir = TempDir;

inline const std::string dig = "/usr/bin/dig";
inline const std::string kdig = "/usr/bin/kdig";
inline const std::string drill = "/usr/bin/drill";


inline const std::string resources =
    "type: HostnameGenerator\nname: example\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n"
    "---\ntype: MeshExternalService\nname: mes-http\nspec:\n  match: {port: 80, protocol: http}\n"
    "  endpoints: [{address: httpbin.org, port: 80}]\n"
    "---\ntype: MeshExternalService\nname: mes-tls\nspec:\n  match: {port: 443}\n"
    "  endpoints: [{address: 127.0.0.1, port: 8443}, {address: backup.example, port: 443, priority: 1}]\n"
    "  tls: {enabled: true, verification: {serverName: tls.example, mode: SkipSAN}}\n";

// A MES whose TXT answer is larger than 512 bytes and smaller than our EDNS size of 1232
// (with 20 endpoints).
inline std::string big_mes(const std::string& name = "mes-big", int endpoints = 20)
{
    std::string doc = "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: 80}\n  endpoints:\n";
    for (int i = 0; i < endpoints; ++i)
        doc += "    - {address: endpoint-" + std::to_string(i) + ".backends.example.com, port: 8080}\n";
    return doc;
}

struct Fixture {
    Dir dir;
    std::unique_ptr<Mesd> mesd;
    std::string port;

    explicit Fixture(MesdOptions options = {}, const std::string& more_resources = {})
    {
        auto conf_dir = dir.path / "resources";
        dir.write("resources/all.yaml", resources + big_mes() + more_resources);
        if (options.conf_dir.empty()) options.conf_dir = conf_dir.string();
        if (options.dns_section.empty()) options.dns_section = "  forward:\n    enabled: false\n";
        mesd = std::make_unique<Mesd>(dir.path / "mesd", options);
        port = std::to_string(mesd->dns_port());
    }
    std::vector<std::string> dig_argv(std::vector<std::string> args) const
    {
        args.insert(args.begin(), {dig, "@127.0.0.1", "-p", port, "+tries=1", "+time=2"});
        return args;
    }
    std::string dig_out(std::vector<std::string> args) const { return output_of(dig_argv(std::move(args))); }
    // The same inside `ns`, for a mesd started there (MesdOptions::wrapper).
    std::string dig_out(const Namespace& ns, std::vector<std::string> args) const
    {
        return ns.in(dig_argv(std::move(args))).out;
    }
    std::string short_answer(const std::string& name, const std::string& type = "A", const std::string& extra = "+notcp") const
    {
        auto out = dig_out({name, type, "+short", extra});
        while (!out.empty() && out.back() == '\n') out.pop_back();
        return out;
    }
};

// Sends raw bytes over UDP and returns the reply, or empty after `wait`.
inline std::vector<std::uint8_t> udp_exchange(int port, const std::vector<std::uint8_t>& query,
                                       std::chrono::milliseconds wait = std::chrono::milliseconds(500))
{
    int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::sendto(fd, query.data(), query.size(), 0, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    pollfd p{fd, POLLIN, 0};
    std::vector<std::uint8_t> out;
    if (::poll(&p, 1, static_cast<int>(wait.count())) == 1) {
        out.resize(65535);
        auto n = ::recv(fd, out.data(), out.size(), 0);
        out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    }
    ::close(fd);
    return out;
}

// A query for `name`/A with the given header flags byte and question count.
inline std::vector<std::uint8_t> raw_query(const std::string& name, std::uint8_t flags = 0x01, int qdcount = 1)
{
    std::vector<std::uint8_t> q = {0x12, 0x34, flags, 0x00, 0x00, static_cast<std::uint8_t>(qdcount), 0, 0, 0, 0, 0, 0};
    for (int n = 0; n < qdcount; ++n) {
        std::size_t start = 0;
        while (start <= name.size()) {
            auto dot = name.find('.', start);
            std::string label = name.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
            if (!label.empty()) {
                q.push_back(static_cast<std::uint8_t>(label.size()));
                q.insert(q.end(), label.begin(), label.end());
            }
            if (dot == std::string::npos) break;
            start = dot + 1;
        }
        q.insert(q.end(), {0x00, 0x00, 0x01, 0x00, 0x01});
    }
    return q;
}

// A TCP connection to mesd's DNS port on loopback.
inline int tcp_connect(int port)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    return fd;
}

// `queries` with RFC 7766 length prefixes, one after another.
inline std::vector<std::uint8_t> framed(const std::vector<std::vector<std::uint8_t>>& queries)
{
    std::vector<std::uint8_t> stream;
    for (const auto& q : queries) {
        stream.push_back(static_cast<std::uint8_t>(q.size() >> 8));
        stream.push_back(static_cast<std::uint8_t>(q.size() & 0xff));
        stream.insert(stream.end(), q.begin(), q.end());
    }
    return stream;
}

// The rcodes of the first `count` framed replies read from `fd` within three seconds.
inline std::vector<int> read_replies(int fd, int count)
{
    std::vector<std::uint8_t> in;
    std::vector<int> rcodes;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (static_cast<int>(rcodes.size()) < count && std::chrono::steady_clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 200) != 1) continue;
        std::uint8_t buf[8192];
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        in.insert(in.end(), buf, buf + n);
        while (in.size() >= 2) {
            std::size_t len = (static_cast<std::size_t>(in[0]) << 8) | in[1];
            if (in.size() < len + 2) break;
            rcodes.push_back(in[5] & 0x0f);
            in.erase(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(len + 2));
        }
    }
    return rcodes;
}



// dnsmasq serving a small test zone on loopback, as the upstream resolver.
struct Dnsmasq {
    // Free for TCP too: dnsmasq listens on both, and fails to start when either is taken.
    int port = free_dual_port();
    std::unique_ptr<Child> child;
    // `wrapper` runs it elsewhere (inside a network namespace), on `fixed_port`; big.fwd.test
    // has `txt_strings` strings of 60 bytes in its TXT record.
    explicit Dnsmasq(const std::filesystem::path& dir, std::vector<std::string> wrapper = {}, int fixed_port = 0,
                     int txt_strings = 12)
    {
        if (fixed_port) port = fixed_port;
        // A port another process takes between the pick and dnsmasq's bind: pick again.
        for (int attempt = 0; attempt < 3; ++attempt) {
            if (start(dir, wrapper, txt_strings)) return;
            if (fixed_port) return;
            child.reset();
            port = free_dual_port();
        }
    }

private:
    bool start(const std::filesystem::path& dir, const std::vector<std::string>& wrapper, int txt_strings)
    {
        std::string txt = "big.fwd.test";
        for (int i = 0; i < txt_strings; ++i) txt += "," + std::string(60, static_cast<char>('a' + i));
        std::vector<std::string> argv = wrapper;
        for (std::string a : {"/usr/sbin/dnsmasq", "-k", "--user=root", "--listen-address=127.0.0.1", "--bind-interfaces",
                              "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=",
                              "--address=/fwd.test/127.0.0.77", "--log-facility=-"})
            argv.push_back(a);
        argv.push_back("--port=" + std::to_string(port));
        argv.push_back("--txt-record=" + txt);
        child = std::make_unique<Child>(argv, (dir / "dnsmasq.out").string(), (dir / "dnsmasq.err").string());
        // Ready when it answers.
        for (int i = 0; i < 100; ++i) {
            if (wrapper.empty()) {
                if (!udp_exchange(port, raw_query("ready.fwd.test"), std::chrono::milliseconds(50)).empty()) return true;
            } else {
                auto probe = wrapper;
                probe.insert(probe.end(), {dig, "@127.0.0.1", "-p", std::to_string(port), "ready.fwd.test", "+short",
                                           "+time=1", "+tries=1"});
                if (output_of(probe).find("127.0.0.77") != std::string::npos) return true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        return false;
    }
};

// A UDP socket that plays upstream: `reply` decides what to send back for each query.
struct FakeUpstream {
    int fd = -1;
    int port = 0;
    std::jthread thread;
    FakeUpstream(std::function<void(int fd, const std::vector<std::uint8_t>& q, const sockaddr_in& from)> reply)
    {
        fd = ::socket(AF_INET, SOCK_DGRAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        socklen_t len = sizeof addr;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
        port = ntohs(addr.sin_port);
        thread = std::jthread([this, reply](std::stop_token stop) {
            while (!stop.stop_requested()) {
                pollfd p{fd, POLLIN, 0};
                if (::poll(&p, 1, 100) != 1) continue;
                std::vector<std::uint8_t> q(65535);
                sockaddr_in from{};
                socklen_t flen = sizeof from;
                auto n = ::recvfrom(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr*>(&from), &flen);
                if (n <= 0) continue;
                q.resize(static_cast<std::size_t>(n));
                if (reply) reply(fd, q, from);
            }
        });
    }
    ~FakeUpstream()
    {
        thread.request_stop();
        thread.join();
        ::close(fd);
    }
};

// A reply to `q` with one A record, and the given ID.
inline std::vector<std::uint8_t> a_reply(const std::vector<std::uint8_t>& q, std::uint16_t id, std::uint8_t last_octet)
{
    std::vector<std::uint8_t> r = q;
    r[0] = static_cast<std::uint8_t>(id >> 8);
    r[1] = static_cast<std::uint8_t>(id & 0xff);
    r[2] = 0x81;
    r[3] = 0x80;
    r[7] = 1;  // ANCOUNT
    r[10] = 0;
    r[11] = 0;  // no OPT
    std::size_t end = 12;
    while (end < r.size() && r[end] != 0) end += 1u + r[end];
    r.resize(end + 5);
    r.insert(r.end(), {0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3c, 0x00, 0x04, 127, 0, 0, last_octet});
    return r;
}

inline MesdOptions forwarding(const std::vector<int>& upstream_ports, const std::string& timeout = "300ms")
{
    MesdOptions o;
    o.dns_section = "  forward:\n    timeout: " + timeout + "\n    upstreams: [";
    for (std::size_t i = 0; i < upstream_ports.size(); ++i)
        o.dns_section += (i ? ", " : "") + std::string("\"127.0.0.1:") + std::to_string(upstream_ports[i]) + "\"";
    o.dns_section += "]\n";
    return o;
}


}  // namespace test_support
