#include "cmd/notify.hpp"

#include "cmd/log.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace cmd::notify {

std::expected<Address, std::string> notify_address(std::string_view socket)
{
    Address a;
    a.addr.sun_family = AF_UNIX;
    if (socket.size() < 2 || (socket.front() != '/' && socket.front() != '@'))
        return std::unexpected("NOTIFY_SOCKET must be an absolute path or '@' and an abstract name");
    // A path needs its terminating NUL inside sun_path; an abstract name has none, its
    // length says where it ends.
    const bool abstract = socket.front() == '@';
    if (socket.size() + (abstract ? 0 : 1) > sizeof a.addr.sun_path)
        return std::unexpected("NOTIFY_SOCKET is longer than a unix socket address may be");
    std::memcpy(a.addr.sun_path, socket.data(), socket.size());
    if (abstract) a.addr.sun_path[0] = '\0';
    a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket.size() + (abstract ? 0 : 1));
    return a;
}

std::optional<std::chrono::microseconds> watchdog_interval(const char* usec, const char* pid, pid_t self)
{
    if (!usec) return std::nullopt;
    std::string_view text(usec);
    std::uint64_t us = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), us);
    if (ec != std::errc{} || end != text.data() + text.size() || us == 0) return std::nullopt;
    if (pid) {
        std::string_view p(pid);
        std::int64_t n = 0;
        auto [pend, pec] = std::from_chars(p.data(), p.data() + p.size(), n);
        if (pec != std::errc{} || pend != p.data() + p.size() || n != self) return std::nullopt;
    }
    // Pinged at half the timeout, so that one late ping is not yet a missed deadline. A
    // timeout beyond what the microseconds type holds is as good as none being near.
    constexpr auto most = static_cast<std::uint64_t>(std::numeric_limits<std::chrono::microseconds::rep>::max());
    return std::chrono::microseconds(static_cast<std::chrono::microseconds::rep>(std::min(us, most) / 2));
}

Notifier Notifier::from_environment()
{
    Notifier n;
    const char* socket = std::getenv("NOTIFY_SOCKET");
    if (!socket || !*socket) return n;
    auto address = notify_address(socket);
    if (!address) {
        log::warn("daemon", "NOTIFY_SOCKET unusable; systemd is not told of readiness",
                  {{"error", address.error()}, {"value", socket}});
        return n;
    }
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log::warn("daemon", "cannot open a socket to NOTIFY_SOCKET; systemd is not told of readiness",
                  {{"error", std::strerror(errno)}});
        return n;
    }
    n.fd_ = fd;
    n.address_ = *address;
    n.watchdog_ = watchdog_interval(std::getenv("WATCHDOG_USEC"), std::getenv("WATCHDOG_PID"), ::getpid());
    return n;
}

Notifier::Notifier(Notifier&& other) noexcept
    : fd_(other.fd_), address_(other.address_), watchdog_(other.watchdog_), last_error_(std::move(other.last_error_))
{
    other.fd_ = -1;
}

Notifier& Notifier::operator=(Notifier&& other) noexcept
{
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = other.fd_;
        address_ = other.address_;
        watchdog_ = other.watchdog_;
        last_error_ = std::move(other.last_error_);
        other.fd_ = -1;
    }
    return *this;
}

Notifier::~Notifier()
{
    if (fd_ >= 0) ::close(fd_);
}

std::expected<void, std::string> Notifier::send(std::string_view state)
{
    if (fd_ < 0) return {};
    // MSG_DONTWAIT: the control loop must not wait on systemd (a busy manager's queue can
    // be full); what is dropped is followed by the next ping or state.
    ssize_t sent;
    do {
        sent = ::sendto(fd_, state.data(), state.size(), MSG_DONTWAIT | MSG_NOSIGNAL,
                        reinterpret_cast<const sockaddr*>(&address_.addr), address_.length);
    } while (sent < 0 && errno == EINTR);
    if (sent >= 0) {
        last_error_.clear();
        return {};
    }
    std::string error = std::strerror(errno);
    if (error != last_error_) {
        // The first line only: a STATUS= text is not worth a log line of its own.
        log::warn("daemon", "cannot notify systemd", {{"error", error}, {"state", std::string(state.substr(0, state.find('\n')))}});
        last_error_ = error;
    }
    return std::unexpected(error);
}

}  // namespace cmd::notify
