#include "proxy/detail/access_log.hpp"

#include "conf/conf.hpp"
#include "proxy/detail/connection.hpp"
#include "proxy/detail/impl.hpp"
#include "proxy/detail/sockets.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <ctime>

namespace proxy::detail {

namespace {

std::string rfc3339_ms(std::int64_t ms)
{
    time_t t = static_cast<time_t>(ms / 1000);
    struct tm tm {};
    gmtime_r(&t, &tm);
    char stamp[64];
    std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
    return stamp;
}

// A JSON string. Bytes that are not UTF-8 (a unix path may hold any) are first written as
// \xNN text, so that the line stays valid JSON; control bytes become \u00NN.
void json_string(std::string& out, std::string_view raw)
{
    std::string v = conf::escape_controls(raw);
    if (v.size() == raw.size()) v.assign(raw);  // nothing to escape: keep the bytes as they are
    out += '"';
    for (char c : v) {
        auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20) {
            char esc[8];
            std::snprintf(esc, sizeof esc, "\\u%04x", u);
            out += esc;
        } else {
            out += c;
        }
    }
    out += '"';
}

class Line {
public:
    Line(std::string& out, AccessFormat f) : out_(out), json_(f == AccessFormat::json)
    {
        if (json_) out_ += '{';
    }
    void text(const char* key, std::string_view v)
    {
        if (v.empty()) return;
        start(key);
        if (json_) json_string(out_, v);
        else conf::append_logfmt_value(out_, v);
    }
    void number(const char* key, std::int64_t v)
    {
        if (v < 0) return;
        start(key);
        out_ += std::to_string(v);
    }
    void boolean(const char* key, bool v)
    {
        start(key);
        out_ += v ? "true" : "false";
    }
    void end() { out_ += json_ ? "}\n" : "\n"; }

private:
    void start(const char* key)
    {
        if (!first_) out_ += json_ ? "," : " ";
        first_ = false;
        if (json_) {
            out_ += '"';
            out_ += key;
            out_ += "\":";
        } else {
            out_ += key;
            out_ += '=';
        }
    }
    std::string& out_;
    bool json_;
    bool first_ = true;
};

}  // namespace

void format_access(std::string& out, const AccessRecord& r, AccessFormat format)
{
    Line l(out, format);
    l.text("time", rfc3339_ms(r.start_ms));
    l.text("client", r.client);
    l.text("mesh", r.mesh);
    l.text("name", r.name);
    l.text("vip", r.vip);
    l.text("endpoint", r.endpoint);
    l.text("address", r.address);
    if (!r.tls_version.empty()) {
        l.text("tls_version", r.tls_version);
        l.text("tls_cipher", r.tls_cipher);
        l.boolean("tls_resumed", r.tls_resumed);
    }
    l.number("bytes_up", static_cast<std::int64_t>(r.bytes_up));
    l.number("bytes_down", static_cast<std::int64_t>(r.bytes_down));
    l.number("connect_ms", r.connect_ms);
    l.number("tls_ms", r.tls_ms);
    l.number("total_ms", r.total_ms);
    l.number("attempts", r.attempts);
    l.text("reason", r.reason ? r.reason : end_reason::local_error);
    l.end();
}

std::string address_text(const sockaddr_storage& ss)
{
    char text[INET6_ADDRSTRLEN] = "";
    if (ss.ss_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
        ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
        return std::string(text) + ":" + std::to_string(ntohs(in->sin_port));
    }
    if (ss.ss_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
        ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
        return "[" + std::string(text) + "]:" + std::to_string(ntohs(in6->sin6_port));
    }
    return {};
}

// ---- The file ------------------------------------------------------------------------------

AccessLogFile::Fd::~Fd()
{
    if (owned && fd >= 0) ::close(fd);
}

std::expected<std::shared_ptr<AccessLogFile::Fd>, std::string> AccessLogFile::open_fd(const std::string& path)
{
    auto fd = std::make_shared<Fd>();
    if (path == "stdout" || path == "stderr") {
        fd->fd = path == "stdout" ? STDOUT_FILENO : STDERR_FILENO;
    } else {
        // As root (before `user:` takes over, in a directory that user may write to) no link
        // is followed and a file of several hard links refused: either would have root append
        // to, and hand over, a file someone else chose.
        const bool root = ::geteuid() == 0;
        fd->fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | (root ? O_NOFOLLOW : 0), 0644);
        if (fd->fd < 0)
            return std::unexpected(path + ": " + (root && errno == ELOOP ? "a symbolic link (not followed as root)"
                                                                          : std::string(std::strerror(errno))));
        fd->owned = true;
        struct stat links {};
        if (root && ::fstat(fd->fd, &links) == 0 && S_ISREG(links.st_mode) && links.st_nlink > 1)
            return std::unexpected(path + ": has " + std::to_string(links.st_nlink) + " hard links (refused as root)");
    }
    struct stat st {};
    fd->atomic_whole = ::fstat(fd->fd, &st) == 0 && S_ISREG(st.st_mode);
    return fd;
}

std::expected<std::shared_ptr<AccessLogFile>, std::string> AccessLogFile::open(const std::string& path)
{
    auto fd = open_fd(path);
    if (!fd) return std::unexpected(fd.error());
    auto f = std::make_shared<AccessLogFile>();
    f->path_ = path;
    f->fd_ = std::move(*fd);
    return f;
}

AccessLogFile::~AccessLogFile() = default;

std::expected<void, std::string> AccessLogFile::reopen()
{
    auto path = this->path();
    if (path == "stdout" || path == "stderr") return {};
    auto fd = open_fd(path);
    if (!fd) return std::unexpected(fd.error());
    std::lock_guard lock(mutex_);
    fd_ = std::move(*fd);
    return {};
}

std::expected<void, std::string> AccessLogFile::retarget(const std::string& path)
{
    auto fd = open_fd(path);
    if (!fd) return std::unexpected(fd.error());
    std::lock_guard lock(mutex_);
    fd_ = std::move(*fd);
    path_ = path;
    return {};
}

std::string AccessLogFile::path() const
{
    std::lock_guard lock(mutex_);
    return path_;
}

std::shared_ptr<AccessLogFile::Fd> AccessLogFile::current() const
{
    std::lock_guard lock(mutex_);
    return fd_;
}

void AccessLogFile::write(const std::string& lines)
{
    auto fd = current();
    auto put = [&](const char* p, std::size_t n) {
        while (n > 0) {
            ssize_t w = ::write(fd->fd, p, n);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                dropped_.fetch_add(1, std::memory_order_relaxed);
                return false;
            }
            p += w;
            n -= static_cast<std::size_t>(w);
        }
        return true;
    };
    if (fd->atomic_whole) {
        put(lines.data(), lines.size());
        return;
    }
    // A pipe or terminal: pieces of whole lines, each at most PIPE_BUF (written atomically).
    std::size_t at = 0;
    while (at < lines.size()) {
        std::size_t end = at;
        while (end < lines.size()) {
            std::size_t nl = lines.find('\n', end);
            std::size_t next = nl == std::string::npos ? lines.size() : nl + 1;
            if (next - at > PIPE_BUF && end > at) break;
            end = next;
        }
        if (!put(lines.data() + at, end - at)) return;
        at = end;
    }
}

// ---- A loop's buffer -----------------------------------------------------------------------

AccessLogBuffer::AccessLogBuffer(uv_loop_t* loop, std::shared_ptr<AccessLogFile> file, AccessFormat format)
    : file_(std::move(file))
{
    file_->set_format(format);
    idle_ = new uv_idle_t;
    uv_idle_init(loop, idle_);
    idle_->data = this;
    // It runs only while lines wait, and never holds the loop open.
    uv_unref(reinterpret_cast<uv_handle_t*>(idle_));
}

AccessLogBuffer::~AccessLogBuffer() { close(); }

void AccessLogBuffer::add(const AccessRecord& r)
{
    bool was_empty = lines_.empty();
    format_access(lines_, r, file_->format());
    if (lines_.size() >= flush_bytes) {
        flush();
        return;
    }
    if (was_empty && idle_)
        uv_idle_start(idle_, [](uv_idle_t* h) noexcept {
            if (auto* self = static_cast<AccessLogBuffer*>(h->data)) self->flush();
        });
}

void AccessLogBuffer::flush()
{
    if (idle_) uv_idle_stop(idle_);
    if (lines_.empty()) return;
    file_->write(lines_);
    lines_.clear();
}

void AccessLogBuffer::close()
{
    flush();
    if (!idle_) return;
    idle_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(idle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
    idle_ = nullptr;
}

}  // namespace proxy::detail

// ---- A connection's share: what it records as it goes --------------------------------------

namespace proxy {

namespace {

std::string socket_address(uv_tcp_t* tcp, bool peer)
{
    sockaddr_storage ss{};
    int len = sizeof ss;
    int rc = peer ? uv_tcp_getpeername(tcp, reinterpret_cast<sockaddr*>(&ss), &len)
                  : uv_tcp_getsockname(tcp, reinterpret_cast<sockaddr*>(&ss), &len);
    return rc == 0 ? detail::address_text(ss) : std::string();
}

}  // namespace

void Connection::opened(const Service* svc)
{
    started_ns = uv_hrtime();
    if (!impl->access_log) return;
    record = std::make_unique<detail::AccessRecord>();
    record->start_ms = wall_ms();
    record->client = socket_address(&client.h.tcp, true);
    // Bind mode: the listener's own address is the VIP:port; redirect mode: the original
    // destination, read when the connection was accepted.
    record->vip = !dialled_vip.empty() ? dialled_vip : socket_address(&client.h.tcp, false);
    if (svc)
        if (auto routing = svc->current()) {
            record->mesh = routing->route.mesh;
            record->name = routing->route.name;
        }
}

void Connection::connected(const Attempt& a)
{
    std::uint64_t us = (uv_hrtime() - a.started_ns) / 1000;
    std::string address = a.side.is_pipe ? std::string(a.target->endpoint.unix_path()) : detail::address_text(a.addr);
    stats = service->endpoint_stats.get(a.target->label, address, impl->endpoint_series);
    stats->active.fetch_add(1, std::memory_order_relaxed);
    stats->connect.observe(us);
    if (!record) return;
    record->endpoint = a.target->label;
    record->address = std::move(address);
    record->connect_ms = static_cast<std::int64_t>(us / 1000);
}

void Connection::handshaken()
{
    std::uint64_t us = (uv_hrtime() - handshake_started_ns) / 1000;
    if (stats) stats->tls_handshake.observe(us);
    if (!record) return;
    record->tls_ms = static_cast<std::int64_t>(us / 1000);
    record->tls_version = SSL_get_version(ssl);
    if (const char* cipher = SSL_get_cipher_name(ssl)) record->tls_cipher = cipher;
    record->tls_resumed = SSL_session_reused(ssl) == 1;
}

void Connection::ended()
{
    if (stats) stats->active.fetch_sub(1, std::memory_order_relaxed);
    if (!record || !shard->access_log) return;
    record->total_ms = static_cast<std::int64_t>((uv_hrtime() - started_ns) / 1000000);
    record->attempts = attempts;
    record->reason = end_reason ? end_reason : detail::end_reason::local_error;
    shard->access_log->add(*record);
}

// ---- The proxy's share ---------------------------------------------------------------------

std::vector<double> latency_bounds_seconds()
{
    std::vector<double> out;
    for (auto us : detail::latency_bounds_us) out.push_back(static_cast<double>(us) / 1e6);
    return out;
}

std::expected<void, std::string> Proxy::open_access_log() { return impl_->open_access_log(); }

std::expected<void, std::string> Proxy::reopen_access_log()
{
    if (!impl_->access_log) return {};
    return impl_->access_log->reopen();
}

std::expected<void, std::string> Proxy::move_access_log(const std::string& path, Options::AccessLog::Format format)
{
    if (!impl_->access_log) return std::unexpected("the access log is off");
    auto f = format == Options::AccessLog::Format::json ? detail::AccessFormat::json : detail::AccessFormat::logfmt;
    if (path != impl_->access_log->path())
        if (auto moved = impl_->access_log->retarget(path); !moved) return moved;
    impl_->access_log->set_format(f);
    return {};
}

// Opens the access log and gives each loop its buffer: before the workers' threads run.
std::expected<void, std::string> Proxy::Impl::open_access_log()
{
    if (options.access_log.path.empty() || access_log) return {};
    auto file = detail::AccessLogFile::open(options.access_log.path);
    if (!file) return std::unexpected(file.error());
    access_log = std::move(*file);
    access_format = options.access_log.format == Options::AccessLog::Format::json ? detail::AccessFormat::json
                                                                                  : detail::AccessFormat::logfmt;
    for (auto& shard : shards) shard->access_log = std::make_unique<detail::AccessLogBuffer>(shard->loop, access_log, access_format);
    if (threaded) control_log = std::make_unique<detail::AccessLogBuffer>(loop, access_log, access_format);
    return {};
}

// A connection the control loop refused before any worker took it (threaded bind mode).
void Proxy::Impl::log_refused(int fd, const Service* service)
{
    if (!control_log) return;
    detail::AccessRecord r;
    r.start_ms = wall_ms();
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) r.client = detail::address_text(ss);
    len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) r.vip = detail::address_text(ss);
    if (service)
        if (auto routing = service->current()) {
            r.mesh = routing->route.mesh;
            r.name = routing->route.name;
        }
    r.total_ms = 0;
    r.reason = detail::end_reason::refused_limit;
    control_log->add(r);
}

}  // namespace proxy
