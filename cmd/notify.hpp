// systemd's service notification protocol (sd_notify(3)): READY=1, STOPPING=1, STATUS= and
// the watchdog's WATCHDOG=1, sent as datagrams to the socket named by $NOTIFY_SOCKET.
//
// The protocol is a single datagram of newline-separated KEY=VALUE lines to a unix socket
// (a path, or an abstract name written with a leading '@'), and systemd documents it as a
// stable interface that may be spoken without libsystemd. Speaking it here keeps mesd from
// linking libsystemd (and, through it, its compression and crypto libraries) for three
// lines of socket code, and lets mesd open its socket once, before start-up is done, so that
// nothing sent later needs a new socket.
//
// Pure parts (notify_address, watchdog_interval) take their inputs as arguments and are
// tested alone; Notifier holds the socket.
//
// Threads: a Notifier may be used from one thread at a time (the daemon's control loop).
#pragma once

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <chrono>
#include <expected>
#include <optional>
#include <string>
#include <string_view>

namespace cmd::notify {

// Where $NOTIFY_SOCKET points: a sockaddr_un and its length as passed to sendto().
struct Address {
    sockaddr_un addr{};
    socklen_t length = 0;
};

// The address of `socket`, $NOTIFY_SOCKET's value: an absolute path, or '@' and an abstract
// name. An error (naming why) for anything else, or a name too long for sun_path. systemd
// itself passes only these two forms; vsock addresses (systemd 253) are refused.
std::expected<Address, std::string> notify_address(std::string_view socket);

// How often systemd wants WATCHDOG=1: half of $WATCHDOG_USEC, as sd_watchdog_enabled(3)
// advises, when `usec` (its value) is a positive number and `pid` ($WATCHDOG_PID) is
// absent (nullptr) or equal to `self`. nullopt otherwise: no watchdog, or one meant for
// another process (a child that inherited the environment).
std::optional<std::chrono::microseconds> watchdog_interval(const char* usec, const char* pid, pid_t self);

class Notifier {
public:
    // Reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID. With no NOTIFY_SOCKET (not
    // started by systemd, or not Type=notify) every send is a no-op. A NOTIFY_SOCKET that
    // cannot be used is logged once and then treated as absent.
    static Notifier from_environment();

    Notifier() = default;
    Notifier(const Notifier&) = delete;
    Notifier& operator=(const Notifier&) = delete;
    Notifier(Notifier&& other) noexcept;
    Notifier& operator=(Notifier&& other) noexcept;
    ~Notifier();

    bool enabled() const { return fd_ >= 0; }
    // Half the watchdog timeout when systemd watches this process; nullopt otherwise.
    std::optional<std::chrono::microseconds> watchdog() const { return watchdog_; }

    // Sends `state` ("READY=1", "STOPPING=1\nSTATUS=draining", ...) as one datagram. Never
    // blocks: a full receive queue drops it (the next ping or state follows). A failure is
    // logged once per distinct error and returned.
    std::expected<void, std::string> send(std::string_view state);

private:
    int fd_ = -1;
    Address address_{};
    std::optional<std::chrono::microseconds> watchdog_;
    std::string last_error_;
};

}  // namespace cmd::notify
