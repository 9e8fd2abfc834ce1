#include "test/support/net.hpp"

#include <arpa/inet.h>
#include <poll.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <thread>

namespace test_support {

namespace {

int free_port_once(int type)
{
    int fd = ::socket(AF_INET, type, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
}

// The kernel may give a port it just gave again once it is closed, and a test that asks
// for two ports (two endpoints that must differ) would then get one twice: a port is never
// handed out twice by one test process.
int free_port(int type)
{
    static std::mutex mutex;
    static std::set<int> given;
    std::lock_guard lock(mutex);
    int port = free_port_once(type);
    for (int attempt = 0; attempt < 64 && given.contains(port); ++attempt) port = free_port_once(type);
    given.insert(port);
    return port;
}

}  // namespace

int free_tcp_port() { return free_port(SOCK_STREAM); }
int free_udp_port() { return free_port(SOCK_DGRAM); }

int free_dual_port()
{
    for (int attempt = 0; attempt < 64; ++attempt) {
        int port = free_port(SOCK_STREAM);
        int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(static_cast<std::uint16_t>(port));
        bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
        ::close(fd);
        if (free) return port;
    }
    return free_port(SOCK_STREAM);
}

int connect_to(const std::string& host, int port)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    ::inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

std::string echoed(const std::string& host, int port, const std::string& text, std::chrono::milliseconds wait)
{
    int fd = connect_to(host, port);
    if (fd < 0) return "";
    (void)!::send(fd, text.data(), text.size(), MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
    std::string out;
    char buf[4096];
    while (true) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) break;
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return out;
}

bool eventually(const std::function<bool()>& check, std::chrono::milliseconds within)
{
    auto deadline = std::chrono::steady_clock::now() + within;
    while (std::chrono::steady_clock::now() < deadline) {
        if (check()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return check();
}

bool accepting(const std::string& host, int port)
{
    int fd = connect_to(host, port);
    if (fd >= 0) ::close(fd);
    return fd >= 0;
}

std::string nginx_config(const std::filesystem::path& dir, const std::string& server, const std::string& http_extra)
{
    std::string d = dir.string();
    return "daemon off;\nmaster_process off;\npid " + d + "/nginx.pid;\nerror_log " + d + "/nginx.err;\nevents {}\nhttp {\n" +
           "  access_log off;\n  client_body_temp_path " + d + ";\n  proxy_temp_path " + d + ";\n  fastcgi_temp_path " + d +
           ";\n  uwsgi_temp_path " + d + ";\n  scgi_temp_path " + d + ";\n" + http_extra + "  server {\n" + server + "  }\n}\n";
}

std::string say(const std::string& host, int port, const std::string& line)
{
    int fd = connect_to(host, port);
    if (fd < 0) return "<no connection>";
    (void)!::send(fd, line.data(), line.size(), MSG_NOSIGNAL);
    std::string got;
    char buf[4096];
    while (true) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 3000) != 1) break;
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        got.append(buf, static_cast<std::size_t>(n));
        if (got.find('\n') != std::string::npos) break;
    }
    ::close(fd);
    return got;
}

}  // namespace test_support
