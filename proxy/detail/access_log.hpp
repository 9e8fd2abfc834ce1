// The access log: one line per proxied connection when it ends (refused and unrouted ones
// too), as logfmt or JSON, to stdout, stderr or a file reopened on demand (logrotate).
//
// Writing. Each loop formats its own lines into a buffer of its own (AccessLogBuffer) and
// writes the buffer with one write(2) at the start of the next loop iteration (a uv_idle
// handle, started only while lines wait: it also keeps that iteration's poll from blocking,
// so a line made in a timer callback on a quiet loop goes out at once), when it passes
// flush_bytes, and when the loop stops. So a burst of connections ending in one iteration
// costs one system call, and no loop waits on another's lock to log. Lines of several
// loops never interleave: a file is opened O_APPEND, and one write(2) to a regular file is
// placed whole (Linux holds the file's position lock for the write); to a pipe or terminal
// (stdout, stderr) the buffer goes in pieces of whole lines no larger than PIPE_BUF, which
// the kernel writes atomically. A write that fails (a full disk, a pipe not read: the
// descriptor may be non-blocking) drops those lines and counts them rather than stall the
// loop.
//
// Reopening. The descriptor is held by a shared_ptr under AccessLogFile's mutex: reopen()
// opens the path again and swaps it in; a loop writing at that moment finishes on the old
// descriptor, which closes when its last writer lets go.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <atomic>
#include <cstdint>
#include <expected>
#include <memory>
#include <mutex>
#include <string>

namespace proxy::detail {

enum class AccessFormat { logfmt, json };

// Why a connection ended: a small fixed set (see the README).
namespace end_reason {
inline constexpr const char* client_closed = "client_closed";            // the client closed (or reset) first
inline constexpr const char* endpoint_closed = "endpoint_closed";        // the endpoint closed (or reset) first
inline constexpr const char* idle_timeout = "idle_timeout";              // nothing either way for proxy.idleTimeout
inline constexpr const char* connect_failed = "connect_failed";          // every attempt failed or timed out
inline constexpr const char* no_healthy_endpoint = "no_healthy_endpoint";  // no endpoint to try at all
inline constexpr const char* refused_limit = "refused_limit";            // over maxConnections(PerService)
inline constexpr const char* tls_failed = "tls_failed";                  // TLS settings unusable, handshake or record failed
inline constexpr const char* stopping = "stopping";                      // mesd is shutting down
inline constexpr const char* bad_request = "bad_request";                // protocol http: not HTTP from the client
inline constexpr const char* no_route = "no_route";                      // redirect mode: no MES for the destination
inline constexpr const char* local_error = "local_error";                // mesd could not go on (no descriptor, a write refused)
}  // namespace end_reason

// What the access log says of one connection. Empty strings and negative durations are
// left out of the line.
struct AccessRecord {
    std::int64_t start_ms = 0;  // system clock, ms since the epoch
    std::string client;         // "ip:port"
    std::string mesh, name;
    std::string vip;            // "ip:port" dialled
    std::string endpoint;       // as configured
    std::string address;        // actually connected ("ip:port", a unix path)
    std::string tls_version, tls_cipher;
    bool tls_resumed = false;
    std::uint64_t bytes_up = 0, bytes_down = 0;
    std::int64_t connect_ms = -1, tls_ms = -1, total_ms = -1;
    std::uint32_t attempts = 0;
    const char* reason = nullptr;
};

// Appends `r` as one line (with its newline) to `out`.
void format_access(std::string& out, const AccessRecord& r, AccessFormat format);

// "ip:port" ("[ip]:port" for IPv6) of a socket address; "" for other families.
std::string address_text(const sockaddr_storage& ss);

// The log's destination, shared by every loop.
class AccessLogFile {
public:
    // `path`: "stdout", "stderr", or a file (created 0644, appended to).
    static std::expected<std::shared_ptr<AccessLogFile>, std::string> open(const std::string& path);
    ~AccessLogFile();
    // Opens the path again (a file only; stdout and stderr stay): lines from now on go to
    // what the path names now. On failure the old descriptor stays in use.
    std::expected<void, std::string> reopen();
    // Opens `path` instead (a reload moved the log): lines from now on go there, those
    // buffered included. On failure the old path and descriptor stay in use.
    std::expected<void, std::string> retarget(const std::string& path);
    // Writes whole lines; any thread.
    void write(const std::string& lines);
    std::uint64_t dropped_writes() const { return dropped_.load(std::memory_order_relaxed); }
    std::string path() const;
    // How lines are written from now on (the buffers read it for each line); any thread.
    AccessFormat format() const { return format_.load(std::memory_order_relaxed); }
    void set_format(AccessFormat format) { format_.store(format, std::memory_order_relaxed); }

private:
    struct Fd {
        int fd = -1;
        bool owned = false;
        bool atomic_whole = false;  // a regular file: one write(2) lands whole
        ~Fd();
    };
    static std::expected<std::shared_ptr<Fd>, std::string> open_fd(const std::string& path);
    std::shared_ptr<Fd> current() const;

    mutable std::mutex mutex_;
    std::string path_;        // under mutex_
    std::shared_ptr<Fd> fd_;  // under mutex_
    std::atomic<AccessFormat> format_{AccessFormat::logfmt};
    std::atomic<std::uint64_t> dropped_{0};
};

// One loop's lines on their way to the file. Its loop's thread only.
class AccessLogBuffer {
public:
    static constexpr std::size_t flush_bytes = std::size_t{64} << 10;

    // Sets a handle up on `loop` (before that loop's thread runs, or on it). Sets `file`'s
    // format: lines are written in the file's format of the moment.
    AccessLogBuffer(uv_loop_t* loop, std::shared_ptr<AccessLogFile> file, AccessFormat format);
    ~AccessLogBuffer();
    AccessLogBuffer(const AccessLogBuffer&) = delete;
    AccessLogBuffer& operator=(const AccessLogBuffer&) = delete;

    void add(const AccessRecord& r);
    void flush();
    // Flushes and closes the handle (the loop is stopping).
    void close();

private:
    std::shared_ptr<AccessLogFile> file_;
    std::string lines_;
    uv_idle_t* idle_ = nullptr;  // freed in its close callback
};

}  // namespace proxy::detail
