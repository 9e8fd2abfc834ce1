// The etcd v3 client over the JSON gateway: one small HTTP/1.1 reader and writer on blocking
// calls made of non-blocking sockets and poll() with deadlines, so no call can block past its
// deadline. Every poll also watches an eventfd that interrupt() makes readable; it is never
// drained, so an interrupt is final: a watch started after it returns at once, which is what
// a shutdown racing the start of a watch needs.
#include "store/etcd.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace store::etcd {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

// Bounds on what a member may send: a whole response (or one watch message), and the status
// line with headers. etcd's own default request limit is 1.5 MiB; 64 MiB leaves room for
// large ranges without letting a broken peer exhaust memory.
constexpr std::size_t max_body_bytes = std::size_t{64} << 20;
constexpr std::size_t max_head_bytes = 64 * 1024;
constexpr std::size_t max_chunk_line = 1024;

// ---- base64 (RFC 4648 section 4), the gateway's encoding of bytes fields ----

constexpr char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string b64_encode(std::string_view in)
{
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; in.size() - i >= 3; i += 3) {
        auto n = (std::uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                 (std::uint32_t{static_cast<unsigned char>(in[i + 1])} << 8) | static_cast<unsigned char>(in[i + 2]);
        out += b64_alphabet[(n >> 18) & 63];
        out += b64_alphabet[(n >> 12) & 63];
        out += b64_alphabet[(n >> 6) & 63];
        out += b64_alphabet[n & 63];
    }
    if (std::size_t rest = in.size() - i; rest > 0) {
        std::uint32_t n = std::uint32_t{static_cast<unsigned char>(in[i])} << 16;
        if (rest == 2) n |= std::uint32_t{static_cast<unsigned char>(in[i + 1])} << 8;
        out += b64_alphabet[(n >> 18) & 63];
        out += b64_alphabet[(n >> 12) & 63];
        out += rest == 2 ? b64_alphabet[(n >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;  // the URL alphabet too, in case a gateway uses it
    if (c == '/' || c == '_') return 63;
    return -1;
}

std::optional<std::string> b64_decode(std::string_view in)
{
    while (!in.empty() && in.back() == '=') in.remove_suffix(1);
    if (in.size() % 4 == 1) return std::nullopt;
    std::string out;
    out.reserve(in.size() * 3 / 4);
    std::uint32_t acc = 0;
    int bits = 0;
    for (char c : in) {
        int v = b64_value(c);
        if (v < 0) return std::nullopt;
        acc = (acc << 6) | static_cast<std::uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((acc >> bits) & 0xff);
        }
    }
    return out;
}

// ---- reading the gateway's JSON: proto3 omits defaults, and 64-bit integers are strings ----

struct BadResponse {
    std::string what;
};

std::int64_t get_i64(const json& j, const char* name)
{
    auto it = j.find(name);
    if (it == j.end() || it->is_null()) return 0;
    if (it->is_number_integer()) return it->get<std::int64_t>();
    if (it->is_string()) {
        const auto& s = it->get_ref<const std::string&>();
        std::int64_t v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec == std::errc() && p == s.data() + s.size()) return v;
    }
    throw BadResponse{std::string("field ") + name + " is not an integer"};
}

std::uint64_t get_u64(const json& j, const char* name)
{
    auto it = j.find(name);
    if (it == j.end() || it->is_null()) return 0;
    if (it->is_number_unsigned()) return it->get<std::uint64_t>();
    if (it->is_string()) {
        const auto& s = it->get_ref<const std::string&>();
        std::uint64_t v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec == std::errc() && p == s.data() + s.size()) return v;
    }
    throw BadResponse{std::string("field ") + name + " is not an unsigned integer"};
}

bool get_bool(const json& j, const char* name)
{
    auto it = j.find(name);
    if (it == j.end() || it->is_null()) return false;
    if (!it->is_boolean()) throw BadResponse{std::string("field ") + name + " is not a boolean"};
    return it->get<bool>();
}

std::string get_string(const json& j, const char* name)
{
    auto it = j.find(name);
    if (it == j.end() || it->is_null()) return {};
    if (!it->is_string()) throw BadResponse{std::string("field ") + name + " is not a string"};
    return it->get<std::string>();
}

std::string get_bytes(const json& j, const char* name)
{
    auto decoded = b64_decode(get_string(j, name));
    if (!decoded) throw BadResponse{std::string("field ") + name + " is not base64"};
    return *decoded;
}

const json& get_object(const json& j, const char* name)
{
    static const json empty = json::object();
    auto it = j.find(name);
    if (it == j.end() || it->is_null()) return empty;
    if (!it->is_object()) throw BadResponse{std::string("field ") + name + " is not an object"};
    return *it;
}

const json& get_array(const json& j, const char* name)
{
    static const json empty = json::array();
    auto it = j.find(name);
    if (it == j.end() || it->is_null()) return empty;
    if (!it->is_array()) throw BadResponse{std::string("field ") + name + " is not an array"};
    return *it;
}

KeyValue decode_kv(const json& j)
{
    if (!j.is_object()) throw BadResponse{"a key-value is not an object"};
    KeyValue kv;
    kv.key = get_bytes(j, "key");
    kv.value = get_bytes(j, "value");
    kv.create_revision = get_i64(j, "create_revision");
    kv.mod_revision = get_i64(j, "mod_revision");
    kv.version = get_i64(j, "version");
    kv.lease = get_i64(j, "lease");
    return kv;
}

std::int64_t header_revision(const json& j) { return get_i64(get_object(j, "header"), "revision"); }

RangeResponse decode_range(const json& j, std::int64_t revision)
{
    RangeResponse r;
    r.revision = revision;
    for (const auto& kv : get_array(j, "kvs")) r.kvs.push_back(decode_kv(kv));
    r.more = get_bool(j, "more");
    r.count = get_i64(j, "count");
    return r;
}

WatchResponse decode_watch(const json& j)
{
    WatchResponse w;
    w.revision = header_revision(j);
    w.created = get_bool(j, "created");
    w.canceled = get_bool(j, "canceled");
    w.cancel_reason = get_string(j, "cancel_reason");
    w.compact_revision = get_i64(j, "compact_revision");
    for (const auto& e : get_array(j, "events")) {
        if (!e.is_object()) throw BadResponse{"a watch event is not an object"};
        WatchEvent event;
        auto type = get_string(e, "type");  // "PUT" is proto3's default and so usually absent
        if (type == "DELETE")
            event.type = WatchEvent::Type::remove;
        else if (type.empty() || type == "PUT")
            event.type = WatchEvent::Type::put;
        else
            throw BadResponse{"unknown watch event type " + type};
        event.kv = decode_kv(get_object(e, "kv"));
        w.events.push_back(std::move(event));
    }
    return w;
}

std::string i64_string(std::int64_t v) { return std::to_string(v); }

json encode_operation(const Operation& op)
{
    switch (op.type) {
    case Operation::Type::put: {
        json put = {{"key", b64_encode(op.key)}, {"value", b64_encode(op.value)}};
        if (op.lease != 0) put["lease"] = i64_string(op.lease);
        return {{"request_put", put}};
    }
    case Operation::Type::remove: {
        json del = {{"key", b64_encode(op.key)}};
        if (!op.range_end.empty()) del["range_end"] = b64_encode(op.range_end);
        return {{"request_delete_range", del}};
    }
    case Operation::Type::range: {
        json range = {{"key", b64_encode(op.key)}};
        if (!op.range_end.empty()) range["range_end"] = b64_encode(op.range_end);
        return {{"request_range", range}};
    }
    }
    return json::object();
}

json encode_compare(const Compare& c)
{
    static constexpr const char* ops[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};
    json j = {{"key", b64_encode(c.key)}, {"result", ops[static_cast<int>(c.op)]}};
    switch (c.target) {
    case Compare::Target::create:
        j["target"] = "CREATE";
        j["create_revision"] = i64_string(c.number);
        break;
    case Compare::Target::mod:
        j["target"] = "MOD";
        j["mod_revision"] = i64_string(c.number);
        break;
    case Compare::Target::version:
        j["target"] = "VERSION";
        j["version"] = i64_string(c.number);
        break;
    case Compare::Target::value:
        j["target"] = "VALUE";
        j["value"] = b64_encode(c.value);
        break;
    }
    return j;
}

// ---- endpoints ----

struct Endpoint {
    std::string name;  // host:port, as errors show it
    std::string host;
    std::string port;
    bool tls = false;
};

std::optional<Endpoint> parse_endpoint(std::string_view url, bool tls_default)
{
    Endpoint e;
    e.tls = tls_default;
    if (url.starts_with("http://")) {
        e.tls = false;
        url.remove_prefix(7);
    } else if (url.starts_with("https://")) {
        e.tls = true;
        url.remove_prefix(8);
    }
    while (!url.empty() && url.back() == '/') url.remove_suffix(1);
    if (url.empty() || url.find('/') != std::string_view::npos) return std::nullopt;
    e.name = std::string(url);
    if (url.front() == '[') {  // [v6]:port
        auto close = url.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        e.host = std::string(url.substr(1, close - 1));
        url.remove_prefix(close + 1);
        if (url.empty())
            e.port = e.tls ? "443" : "80";
        else if (url.front() == ':')
            e.port = std::string(url.substr(1));
        else
            return std::nullopt;
    } else if (auto colon = url.rfind(':'); colon != std::string_view::npos) {
        e.host = std::string(url.substr(0, colon));
        e.port = std::string(url.substr(colon + 1));
    } else {
        e.host = std::string(url);
        e.port = e.tls ? "443" : "80";
    }
    if (e.host.empty() || e.port.empty()) return std::nullopt;
    return e;
}

bool is_ip_literal(const std::string& host)
{
    in6_addr a6;
    in_addr a4;
    return inet_pton(AF_INET, host.c_str(), &a4) == 1 || inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

// ---- one connection: TCP, optionally TLS, every wait bounded by a deadline ----

// Why an I/O step did not complete; turned into an Error naming the member by the caller.
struct IoFailure {
    enum class Kind { failed, closed, timeout, interrupted } kind = Kind::failed;
    std::string what;
};
template <class T>
using Io = std::expected<T, IoFailure>;

IoFailure failed(std::string what) { return {IoFailure::Kind::failed, std::move(what)}; }

std::string from_ssl(std::string_view fallback)
{
    unsigned long code = ERR_get_error();
    ERR_clear_error();
    if (code == 0) return std::string(fallback);
    // The reason alone ("sslv3 alert bad certificate") reads better than the packed code.
    if (const char* reason = ERR_reason_error_string(code)) return reason;
    char buf[256];
    ERR_error_string_n(code, buf, sizeof buf);
    return buf;
}

int remaining_ms(Deadline deadline)
{
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return 0;
    return static_cast<int>(std::min<long long>(left + 1, 60'000));
}

class Connection {
public:
    Connection(const Endpoint& endpoint, SSL_CTX* ctx, int interrupt_fd)
        : endpoint_(endpoint), ctx_(ctx), interrupt_fd_(interrupt_fd)
    {
    }
    ~Connection()
    {
        if (ssl_) SSL_free(ssl_);
        if (fd_ >= 0) ::close(fd_);
    }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    const Endpoint& endpoint() const { return endpoint_; }

    Io<void> open(Deadline deadline)
    {
        addrinfo hints{};
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = is_ip_literal(endpoint_.host) ? AI_NUMERICHOST : 0;
        addrinfo* list = nullptr;
        if (int rc = getaddrinfo(endpoint_.host.c_str(), endpoint_.port.c_str(), &hints, &list); rc != 0)
            return std::unexpected(failed(std::string("cannot resolve: ") + gai_strerror(rc)));
        Io<void> result = std::unexpected(failed("no address"));
        for (auto* ai = list; ai; ai = ai->ai_next) {
            result = connect_one(ai, deadline);
            if (result || result.error().kind == IoFailure::Kind::interrupted) break;
        }
        freeaddrinfo(list);
        if (!result) return result;
        if (endpoint_.tls) return handshake(deadline);
        return {};
    }

    Io<void> write_all(std::string_view data, Deadline deadline)
    {
        while (!data.empty()) {
            if (ssl_) {
                ERR_clear_error();
                int n = SSL_write(ssl_, data.data(), static_cast<int>(std::min<std::size_t>(data.size(), 1 << 20)));
                if (n > 0) {
                    data.remove_prefix(static_cast<std::size_t>(n));
                    continue;
                }
                if (auto waited = wait_ssl(n, deadline); !waited) return waited;
            } else {
                ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
                if (n >= 0) {
                    data.remove_prefix(static_cast<std::size_t>(n));
                    continue;
                }
                if (errno == EINTR) continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK) return std::unexpected(errno_failure("send"));
                if (auto waited = wait(POLLOUT, deadline); !waited) return waited;
            }
        }
        return {};
    }

    // Appends what arrives to `in`: at least one byte, or a failure (closed at the end).
    Io<void> read_some(std::string& in, Deadline deadline)
    {
        char buf[16384];
        for (;;) {
            if (ssl_) {
                ERR_clear_error();
                int n = SSL_read(ssl_, buf, sizeof buf);
                if (n > 0) {
                    in.append(buf, static_cast<std::size_t>(n));
                    return {};
                }
                if (auto waited = wait_ssl(n, deadline); !waited) return waited;
            } else {
                if (auto waited = wait(POLLIN, deadline); !waited) return waited;
                ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
                if (n > 0) {
                    in.append(buf, static_cast<std::size_t>(n));
                    return {};
                }
                if (n == 0) return std::unexpected(IoFailure{IoFailure::Kind::closed, "connection closed"});
                if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
                    return std::unexpected(errno_failure("recv"));
            }
        }
    }

private:
    IoFailure errno_failure(const char* what) const
    {
        if (errno == ECONNRESET || errno == EPIPE) return {IoFailure::Kind::closed, std::strerror(errno)};
        return failed(std::string(what) + ": " + std::strerror(errno));
    }

    // Waits until the socket is ready for `events`, the deadline passes, or interrupt().
    Io<void> wait(short events, Deadline deadline)
    {
        for (;;) {
            pollfd fds[2] = {{fd_, events, 0}, {interrupt_fd_, POLLIN, 0}};
            int timeout = remaining_ms(deadline);
            int rc = ::poll(fds, 2, timeout);
            if (rc < 0) {
                if (errno == EINTR) continue;
                return std::unexpected(failed(std::string("poll: ") + std::strerror(errno)));
            }
            if (fds[1].revents & POLLIN) return std::unexpected(IoFailure{IoFailure::Kind::interrupted, "interrupted"});
            if (fds[0].revents) return {};
            if (Clock::now() >= deadline) return std::unexpected(IoFailure{IoFailure::Kind::timeout, "timed out"});
        }
    }

    Io<void> wait_ssl(int rc, Deadline deadline)
    {
        int err = SSL_get_error(ssl_, rc);
        if (err == SSL_ERROR_WANT_READ) return wait(POLLIN, deadline);
        if (err == SSL_ERROR_WANT_WRITE) return wait(POLLOUT, deadline);
        if (err == SSL_ERROR_ZERO_RETURN) return std::unexpected(IoFailure{IoFailure::Kind::closed, "connection closed"});
        if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
            return std::unexpected(IoFailure{IoFailure::Kind::closed, "connection closed"});
        return std::unexpected(failed("TLS: " + from_ssl("failed")));
    }

    Io<void> connect_one(const addrinfo* ai, Deadline deadline)
    {
        if (fd_ >= 0) ::close(fd_);
        fd_ = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd_ < 0) return std::unexpected(errno_failure("socket"));
        int one = 1;
        ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (::connect(fd_, ai->ai_addr, ai->ai_addrlen) == 0) return {};
        if (errno != EINPROGRESS) return std::unexpected(failed(std::strerror(errno)));
        if (auto waited = wait(POLLOUT, deadline); !waited) {
            if (waited.error().kind == IoFailure::Kind::timeout) waited.error().what = "connect timed out";
            return waited;
        }
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) return std::unexpected(failed(std::strerror(err)));
        return {};
    }

    Io<void> handshake(Deadline deadline)
    {
        ssl_ = SSL_new(ctx_);
        if (!ssl_) return std::unexpected(failed("TLS: " + from_ssl("cannot make a session")));
        SSL_set_fd(ssl_, fd_);
        // The member's certificate must name the host we dialled: an IP SAN for a literal,
        // a DNS SAN (sent as SNI too, RFC 6066 section 3) for a name.
        if (is_ip_literal(endpoint_.host)) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), endpoint_.host.c_str());
        } else {
            SSL_set_tlsext_host_name(ssl_, endpoint_.host.c_str());
            SSL_set1_host(ssl_, endpoint_.host.c_str());
        }
        for (;;) {
            ERR_clear_error();
            int rc = SSL_connect(ssl_);
            if (rc == 1) return {};
            int err = SSL_get_error(ssl_, rc);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                if (auto waited = wait(err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline); !waited) {
                    if (waited.error().kind == IoFailure::Kind::timeout) waited.error().what = "TLS handshake timed out";
                    return waited;
                }
                continue;
            }
            long verify = SSL_get_verify_result(ssl_);
            if (verify != X509_V_OK)
                return std::unexpected(failed(std::string("TLS: certificate verify failed: ") +
                                              X509_verify_cert_error_string(verify)));
            return std::unexpected(failed("TLS handshake: " + from_ssl("connection closed by the member")));
        }
    }

    Endpoint endpoint_;
    SSL_CTX* ctx_;
    int interrupt_fd_;
    int fd_ = -1;
    SSL* ssl_ = nullptr;
};

// ---- HTTP/1.1 (RFC 9112): requests with Content-Length, responses with either framing ----

struct ResponseHead {
    int status = 0;
    bool chunked = false;
    std::optional<std::size_t> content_length;
    bool close = false;  // the member closes the connection after this response
};

std::string lowercase(std::string_view s)
{
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string_view trim(std::string_view s)
{
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

// Reads one response from a connection, keeping what arrives beyond it for the next one.
class ResponseReader {
public:
    explicit ResponseReader(Connection& conn) : conn_(conn) {}

    Io<ResponseHead> head(Deadline deadline)
    {
        std::size_t end;
        while ((end = in_.find("\r\n\r\n")) == std::string::npos) {
            if (in_.size() > max_head_bytes) return std::unexpected(failed("response headers too large"));
            if (auto r = conn_.read_some(in_, deadline); !r) return std::unexpected(r.error());
        }
        // The bound holds however the bytes arrived: one read may bring the whole head.
        if (end > max_head_bytes) return std::unexpected(failed("response headers too large"));
        std::string_view text(in_.data(), end);
        ResponseHead h;
        auto line_end = text.find("\r\n");
        std::string_view status_line = text.substr(0, line_end);
        if (!status_line.starts_with("HTTP/1.") || status_line.size() < 12)
            return std::unexpected(failed("not an HTTP/1.1 response"));
        h.close = status_line.starts_with("HTTP/1.0");
        auto code = status_line.substr(9, 3);
        if (std::from_chars(code.data(), code.data() + 3, h.status).ec != std::errc())
            return std::unexpected(failed("bad HTTP status line"));
        while (line_end != std::string_view::npos) {
            text.remove_prefix(line_end + 2);
            line_end = text.find("\r\n");
            auto line = text.substr(0, line_end);
            auto colon = line.find(':');
            if (colon == std::string_view::npos) continue;
            auto name = lowercase(trim(line.substr(0, colon)));
            auto value = lowercase(trim(line.substr(colon + 1)));
            if (name == "content-length") {
                std::size_t n = 0;
                if (std::from_chars(value.data(), value.data() + value.size(), n).ec != std::errc())
                    return std::unexpected(failed("bad Content-Length"));
                if (n > max_body_bytes) return std::unexpected(failed("response body too large"));
                h.content_length = n;
            } else if (name == "transfer-encoding") {
                h.chunked = value.find("chunked") != std::string::npos;
            } else if (name == "connection") {
                if (value.find("close") != std::string::npos) h.close = true;
                if (value.find("keep-alive") != std::string::npos) h.close = false;
            }
        }
        in_.erase(0, end + 4);
        // A response with neither framing ends when the connection does.
        if (!h.chunked && !h.content_length) h.close = true;
        state_ = h.chunked ? State::chunk_size : State::data;
        chunked_ = h.chunked;
        left_ = h.content_length.value_or(max_body_bytes);
        until_close_ = !h.chunked && !h.content_length;
        return h;
    }

    // Appends body bytes to `out` (at least one, unless the body has ended); false at the end.
    Io<bool> body_some(std::string& out, Deadline deadline)
    {
        for (;;) {
            switch (state_) {
            case State::done:
                return false;
            case State::data:
                if (left_ == 0) {
                    state_ = chunked_ ? State::chunk_crlf : State::done;
                    continue;
                }
                if (in_.empty()) {
                    auto r = conn_.read_some(in_, deadline);
                    if (!r && until_close_ && r.error().kind == IoFailure::Kind::closed) {
                        state_ = State::done;
                        return false;
                    }
                    if (!r) return std::unexpected(r.error());
                }
                {
                    std::size_t n = std::min(left_, in_.size());
                    out.append(in_, 0, n);
                    in_.erase(0, n);
                    left_ -= n;
                    if (until_close_ && left_ == 0) return std::unexpected(failed("response body too large"));
                }
                return true;
            case State::chunk_size:
            case State::chunk_crlf:
            case State::trailer: {
                auto eol = in_.find("\r\n");
                if (eol == std::string::npos) {
                    if (in_.size() > max_chunk_line) return std::unexpected(failed("bad chunked encoding"));
                    if (auto r = conn_.read_some(in_, deadline); !r) return std::unexpected(r.error());
                    continue;
                }
                std::string line = in_.substr(0, eol);
                in_.erase(0, eol + 2);
                if (state_ == State::chunk_crlf) {
                    if (!line.empty()) return std::unexpected(failed("bad chunked encoding"));
                    state_ = State::chunk_size;
                } else if (state_ == State::trailer) {
                    if (line.empty()) state_ = State::done;
                } else {
                    std::size_t size = 0;
                    auto hex = trim(std::string_view(line).substr(0, line.find(';')));
                    auto [p, ec] = std::from_chars(hex.data(), hex.data() + hex.size(), size, 16);
                    if (ec != std::errc() || p != hex.data() + hex.size() || hex.empty())
                        return std::unexpected(failed("bad chunk size"));
                    if (size > max_body_bytes) return std::unexpected(failed("response body too large"));
                    left_ = size;
                    state_ = size == 0 ? State::trailer : State::data;
                }
                continue;
            }
            }
        }
    }

    Io<std::string> body(Deadline deadline)
    {
        std::string out;
        for (;;) {
            auto more = body_some(out, deadline);
            if (!more) return std::unexpected(more.error());
            if (!*more) return out;
            if (out.size() > max_body_bytes) return std::unexpected(failed("response body too large"));
        }
    }

private:
    enum class State { chunk_size, data, chunk_crlf, trailer, done };

    Connection& conn_;
    std::string in_;
    State state_ = State::done;
    std::size_t left_ = 0;
    bool chunked_ = false;
    bool until_close_ = false;
};

std::string post_request(const Endpoint& e, std::string_view path, std::string_view body, const std::string& token,
                         bool require_leader = false)
{
    std::string r;
    r.reserve(body.size() + 256);
    r += "POST ";
    r += path;
    r += " HTTP/1.1\r\nHost: ";
    r += e.name;
    r += "\r\nContent-Type: application/json\r\nContent-Length: ";
    r += std::to_string(body.size());
    r += "\r\n";
    if (!token.empty()) {
        r += "Authorization: ";
        r += token;
        r += "\r\n";
    }
    // gRPC metadata "hasleader" (clientv3's WithRequireLeader): a member that loses its
    // leader, cut off from the others, cancels the watch instead of keeping it open and
    // silent.
    if (require_leader) r += "Grpc-Metadata-Hasleader: true\r\n";
    r += "\r\n";
    r += body;
    return r;
}

// A gRPC error as the gateway writes it: {"error": "...", "code": N, "message": "..."}.
struct GatewayError {
    int code = 0;
    std::string message;
};

GatewayError parse_gateway_error(int http_status, std::string_view body)
{
    GatewayError e;
    auto j = json::parse(body, nullptr, false);
    if (j.is_object()) {
        // Unary errors say "code"; errors inside a stream say "grpc_code".
        for (const char* name : {"code", "grpc_code"})
            if (auto it = j.find(name); it != j.end() && it->is_number_integer() && e.code == 0) e.code = it->get<int>();
        for (const char* name : {"message", "error"}) {
            auto it = j.find(name);
            if (it != j.end() && it->is_string() && !it->get_ref<const std::string&>().empty()) {
                e.message = it->get<std::string>();
                break;
            }
        }
    }
    if (e.message.empty()) {
        // The gateway answers some refusals in plain text: say what it said.
        std::string text;
        for (char ch : body.substr(0, 200))
            if (ch >= 0x20 && ch < 0x7f) text += ch;
        while (!text.empty() && text.back() == ' ') text.pop_back();
        e.message = "HTTP status " + std::to_string(http_status) + (text.empty() ? "" : ": " + text);
        // etcd 3.4 refuses every gateway call that carries a client certificate once its auth
        // is on, as the certificate's CommonName cannot be passed on as the user.
        if (text.find("CommonName of client sending a request against gateway") != std::string::npos)
            e.message += " (with etcd's auth on, its JSON gateway takes a user and password or a client "
                         "certificate, not both: drop certFile and keyFile)";
    }
    return e;
}

bool is_invalid_token(std::string_view message) { return message.find("invalid auth token") != std::string_view::npos; }

// gRPC's UNAVAILABLE (14): the member cannot serve now (no leader, stopping); another may.
constexpr int grpc_unavailable = 14;

Error member_error(const Endpoint& e, const GatewayError& g)
{
    Error err;
    err.message = "etcd " + e.name + ": " + g.message;
    err.code = g.code;
    err.compacted = g.message.find("required revision has been compacted") != std::string::npos;
    err.unavailable = g.code == grpc_unavailable;
    return err;
}

Error io_error(const Endpoint& e, const IoFailure& f)
{
    Error err;
    err.message = "etcd " + e.name + ": " + f.what;
    err.unavailable = f.kind != IoFailure::Kind::interrupted;
    return err;
}

// Parses a body that is one JSON object, or the first message of a stream (a streaming
// endpoint such as lease keep-alive answers {"result": ...} lines).
std::optional<json> parse_body(std::string_view body)
{
    auto first = body.substr(0, body.find('\n'));
    auto j = json::parse(first, nullptr, false);
    if (!j.is_object()) return std::nullopt;
    if (auto it = j.find("result"); it != j.end() && it->is_object()) return *it;
    return j;
}

}  // namespace

std::string prefix_end(std::string_view prefix)
{
    std::string end(prefix);
    while (!end.empty()) {
        auto last = static_cast<unsigned char>(end.back());
        if (last < 0xff) {
            end.back() = static_cast<char>(last + 1);
            return end;
        }
        end.pop_back();
    }
    // Every byte 0xff (or empty): etcd reads "\0" as "to the end of the keyspace".
    return std::string(1, '\0');
}

struct Client::Impl {
    Options options;
    std::vector<Endpoint> endpoints;
    std::size_t current = 0;
    SSL_CTX* ctx = nullptr;
    int interrupt_fd = -1;
    std::unique_ptr<Connection> conn;  // the keep-alive connection of unary calls
    std::unique_ptr<ResponseReader> reader;
    std::string token;

    ~Impl()
    {
        reader.reset();
        conn.reset();
        if (ctx) SSL_CTX_free(ctx);
        if (interrupt_fd >= 0) ::close(interrupt_fd);
    }

    bool interrupted() const
    {
        pollfd p{interrupt_fd, POLLIN, 0};
        return ::poll(&p, 1, 0) > 0;
    }

    Result<void> setup()
    {
        interrupt_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (interrupt_fd < 0) return std::unexpected(Error{std::string("eventfd: ") + std::strerror(errno)});
        if (options.endpoints.empty()) return std::unexpected(Error{"etcd: no endpoints"});
        bool any_tls = false;
        for (const auto& url : options.endpoints) {
            auto e = parse_endpoint(url, options.tls.has_value());
            if (!e) return std::unexpected(Error{"etcd: bad endpoint \"" + url + "\""});
            any_tls = any_tls || e->tls;
            endpoints.push_back(std::move(*e));
        }
        if (!any_tls) return {};
        ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx) return std::unexpected(Error{"etcd: TLS: " + from_ssl("cannot make a context")});
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
        Tls tls = options.tls.value_or(Tls{});
        if (!tls.ca_file.empty()) {
            if (SSL_CTX_load_verify_locations(ctx, tls.ca_file.c_str(), nullptr) != 1)
                return std::unexpected(Error{"etcd: cannot read CA file " + tls.ca_file + ": " + from_ssl("")});
        } else {
            SSL_CTX_set_default_verify_paths(ctx);
        }
        if (!tls.cert_file.empty() || !tls.key_file.empty()) {
            if (SSL_CTX_use_certificate_chain_file(ctx, tls.cert_file.c_str()) != 1)
                return std::unexpected(Error{"etcd: cannot read client certificate " + tls.cert_file + ": " + from_ssl("")});
            if (SSL_CTX_use_PrivateKey_file(ctx, tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1)
                return std::unexpected(Error{"etcd: cannot read client key " + tls.key_file + ": " + from_ssl("")});
            if (SSL_CTX_check_private_key(ctx) != 1)
                return std::unexpected(Error{"etcd: client key does not match " + tls.cert_file});
        }
        return {};
    }

    void drop_connection()
    {
        reader.reset();
        conn.reset();
    }

    void next_endpoint()
    {
        drop_connection();
        current = (current + 1) % endpoints.size();
        token.clear();  // simple tokens are known only to the member that issued them
    }

    // One request and response on the keep-alive connection, opening it when needed.
    struct Reply {
        int status = 0;
        std::string body;
    };
    Io<Reply> exchange(std::string_view path, const std::string& body, bool with_token, Deadline deadline)
    {
        auto reply = exchange_once(path, body, with_token, deadline);
        // A response cut short leaves the connection mid-message: never reuse it.
        if (!reply) drop_connection();
        return reply;
    }
    Io<Reply> exchange_once(std::string_view path, const std::string& body, bool with_token, Deadline deadline)
    {
        if (!conn) {
            auto c = std::make_unique<Connection>(endpoints[current], ctx, interrupt_fd);
            if (auto opened = c->open(std::min(deadline, Clock::now() + options.dial_timeout)); !opened)
                return std::unexpected(opened.error());
            conn = std::move(c);
            reader = std::make_unique<ResponseReader>(*conn);
        }
        auto request = post_request(conn->endpoint(), path, body, with_token ? token : std::string());
        if (auto w = conn->write_all(request, deadline); !w) return std::unexpected(w.error());
        // A member waits for its leader before it answers a write; when the leader has died, the
        // write it forwarded is lost and the member answers only at its own request timeout
        // (seconds). So an answer must begin within a third of the call's time, leaving room
        // to ask another member once a new leader is elected.
        auto answer_deadline = std::min(deadline, Clock::now() + options.request_timeout / 3);
        auto head = reader->head(answer_deadline);
        if (!head) return std::unexpected(head.error());
        auto text = reader->body(deadline);
        if (!text) return std::unexpected(text.error());
        if (head->close) drop_connection();
        return Reply{head->status, std::move(*text)};
    }

    // Authenticates on the member now in use; the token goes with every later call to it.
    Result<void> authenticate(Deadline deadline)
    {
        json body = {{"name", options.username}, {"password", options.password}};
        auto reply = exchange("/v3/auth/authenticate", body.dump(), false, deadline);
        if (!reply) return std::unexpected(io_error(endpoints[current], reply.error()));
        if (reply->status != 200) {
            auto g = parse_gateway_error(reply->status, reply->body);
            g.message = "authentication as " + options.username + " failed: " + g.message;
            return std::unexpected(member_error(endpoints[current], g));
        }
        auto j = parse_body(reply->body);
        if (!j) return std::unexpected(Error{"etcd " + endpoints[current].name + ": bad authenticate response"});
        auto it = j->find("token");
        if (it == j->end() || !it->is_string() || it->get_ref<const std::string&>().empty())
            return std::unexpected(Error{"etcd " + endpoints[current].name + ": authenticate gave no token"});
        token = it->get<std::string>();
        return {};
    }

    // A unary call: retried on the next member while none answers, within request_timeout.
    Result<json> call(std::string_view path, const json& request)
    {
        auto deadline = Clock::now() + options.request_timeout;
        auto body = request.dump();
        bool reauthenticated = false;
        std::size_t failures_in_round = 0;
        std::optional<Error> last;
        for (;;) {
            if (interrupted()) return std::unexpected(Error{"etcd: interrupted"});
            if (Clock::now() >= deadline) {
                Error err = last.value_or(Error{"etcd: request timed out", true});
                if (err.unavailable) err.message += " (no member answered within " +
                                                    std::to_string(options.request_timeout.count()) + " ms)";
                return std::unexpected(err);
            }
            // A full round without an answer: pause before the next, so that a cluster that is
            // down is not hammered, and an election has time to finish.
            if (failures_in_round >= endpoints.size()) {
                failures_in_round = 0;
                pollfd p{interrupt_fd, POLLIN, 0};
                ::poll(&p, 1, std::min(200, remaining_ms(deadline)));
                continue;
            }
            if (!options.username.empty() && token.empty()) {
                auto auth = authenticate(deadline);
                if (!auth) {
                    if (!auth.error().unavailable) return std::unexpected(auth.error());
                    last = auth.error();
                    ++failures_in_round;
                    next_endpoint();
                    continue;
                }
            }
            auto reply = exchange(path, body, true, deadline);
            if (!reply) {
                if (reply.error().kind == IoFailure::Kind::interrupted) return std::unexpected(Error{"etcd: interrupted"});
                last = io_error(endpoints[current], reply.error());
                ++failures_in_round;
                next_endpoint();
                continue;
            }
            if (reply->status != 200) {
                auto g = parse_gateway_error(reply->status, reply->body);
                if (!options.username.empty() && is_invalid_token(g.message) && !reauthenticated) {
                    reauthenticated = true;
                    token.clear();
                    continue;
                }
                auto err = member_error(endpoints[current], g);
                if (err.unavailable) {
                    last = err;
                    ++failures_in_round;
                    next_endpoint();
                    continue;
                }
                return std::unexpected(err);
            }
            auto j = parse_body(reply->body);
            if (!j) return std::unexpected(Error{"etcd " + endpoints[current].name + ": response is not JSON"});
            return std::move(*j);
        }
    }

    template <class T, class F>
    Result<T> decoded(std::string_view path, const json& request, F decode)
    {
        auto j = call(path, request);
        if (!j) return std::unexpected(j.error());
        try {
            return decode(*j);
        } catch (const BadResponse& bad) {
            return std::unexpected(Error{"etcd " + endpoints[current].name + ": bad response to " + std::string(path) +
                                         ": " + bad.what});
        } catch (const json::exception& bad) {
            return std::unexpected(Error{"etcd " + endpoints[current].name + ": bad response to " + std::string(path) +
                                         ": " + bad.what()});
        }
    }
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::connect(const Options& options)
{
    auto impl = std::make_unique<Impl>();
    impl->options = options;
    if (auto ok = impl->setup(); !ok) return std::unexpected(ok.error());
    std::unique_ptr<Client> client(new Client(std::move(impl)));
    // A status call proves a member answers (and that the credentials work).
    if (auto s = client->status(); !s) return std::unexpected(s.error());
    return client;
}

const std::string& Client::endpoint() const { return impl_->endpoints[impl_->current].name; }

void Client::interrupt()
{
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(impl_->interrupt_fd, &one, sizeof one);
}

Result<RangeResponse> Client::range(const RangeRequest& request)
{
    json j = {{"key", b64_encode(request.key)}};
    if (!request.range_end.empty()) j["range_end"] = b64_encode(request.range_end);
    if (request.revision != 0) j["revision"] = i64_string(request.revision);
    if (request.limit != 0) j["limit"] = i64_string(request.limit);
    if (request.keys_only) j["keys_only"] = true;
    if (request.count_only) j["count_only"] = true;
    return impl_->decoded<RangeResponse>("/v3/kv/range", j,
                                         [](const json& r) { return decode_range(r, header_revision(r)); });
}

Result<std::int64_t> Client::put(std::string_view key, std::string_view value, std::int64_t lease)
{
    json j = {{"key", b64_encode(key)}, {"value", b64_encode(value)}};
    if (lease != 0) j["lease"] = i64_string(lease);
    return impl_->decoded<std::int64_t>("/v3/kv/put", j, [](const json& r) { return header_revision(r); });
}

Result<TxnResponse> Client::txn(const std::vector<Compare>& compare, const std::vector<Operation>& success,
                                const std::vector<Operation>& failure)
{
    json j = {{"compare", json::array()}, {"success", json::array()}, {"failure", json::array()}};
    for (const auto& c : compare) j["compare"].push_back(encode_compare(c));
    for (const auto& op : success) j["success"].push_back(encode_operation(op));
    for (const auto& op : failure) j["failure"].push_back(encode_operation(op));
    return impl_->decoded<TxnResponse>("/v3/kv/txn", j, [](const json& r) {
        TxnResponse t;
        t.revision = header_revision(r);
        t.succeeded = get_bool(r, "succeeded");
        for (const auto& op : get_array(r, "responses")) {
            if (!op.is_object()) throw BadResponse{"a txn response is not an object"};
            if (op.contains("response_range")) t.ranges.push_back(decode_range(get_object(op, "response_range"), t.revision));
        }
        return t;
    });
}

Result<std::int64_t> Client::lease_grant(std::chrono::seconds ttl)
{
    json j = {{"TTL", i64_string(ttl.count())}};
    return impl_->decoded<std::int64_t>("/v3/lease/grant", j, [](const json& r) {
        if (auto error = get_string(r, "error"); !error.empty()) throw BadResponse{error};
        auto id = get_i64(r, "ID");
        if (id == 0) throw BadResponse{"no lease ID"};
        return id;
    });
}

Result<std::int64_t> Client::lease_keepalive(std::int64_t id)
{
    json j = {{"ID", i64_string(id)}};
    return impl_->decoded<std::int64_t>("/v3/lease/keepalive", j, [](const json& r) {
        return std::max<std::int64_t>(get_i64(r, "TTL"), 0);
    });
}

Result<void> Client::lease_revoke(std::int64_t id)
{
    json j = {{"ID", i64_string(id)}};
    if (auto r = impl_->call("/v3/lease/revoke", j); !r) return std::unexpected(r.error());
    return {};
}

Result<void> Client::compact(std::int64_t revision)
{
    json j = {{"revision", i64_string(revision)}, {"physical", true}};
    if (auto r = impl_->call("/v3/kv/compaction", j); !r) return std::unexpected(r.error());
    return {};
}

Result<MemberStatus> Client::status()
{
    auto result = impl_->decoded<MemberStatus>("/v3/maintenance/status", json::object(), [](const json& r) {
        MemberStatus s;
        const auto& header = get_object(r, "header");
        s.cluster_id = get_u64(header, "cluster_id");
        s.member_id = get_u64(header, "member_id");
        s.revision = get_i64(header, "revision");
        s.leader = get_u64(r, "leader");
        return s;
    });
    if (result) result->endpoint = impl_->endpoints[impl_->current].name;
    return result;
}

Result<void> Client::watch(std::string_view key, std::string_view range_end, std::int64_t start_revision,
                           const std::function<bool(const WatchResponse&)>& on_response, std::chrono::milliseconds idle,
                           const std::function<bool()>& on_idle)
{
    auto& impl = *impl_;
    json create = {{"key", b64_encode(key)}};
    if (!range_end.empty()) create["range_end"] = b64_encode(range_end);
    if (start_revision != 0) create["start_revision"] = i64_string(start_revision);
    auto body = json{{"create_request", create}}.dump();

    // Open the stream on the member in use, or the next that answers: one round.
    std::unique_ptr<Connection> conn;
    std::unique_ptr<ResponseReader> reader;
    std::optional<Error> last;
    bool reauthenticated = false;
    for (std::size_t tried = 0; tried < impl.endpoints.size();) {
        if (impl.interrupted()) return {};
        const auto& endpoint = impl.endpoints[impl.current];
        auto deadline = Clock::now() + impl.options.request_timeout;
        auto fail = [&](const IoFailure& f) {
            last = io_error(endpoint, f);
            ++tried;
            impl.next_endpoint();
        };
        conn = std::make_unique<Connection>(endpoint, impl.ctx, impl.interrupt_fd);
        if (auto opened = conn->open(std::min(deadline, Clock::now() + impl.options.dial_timeout)); !opened) {
            if (opened.error().kind == IoFailure::Kind::interrupted) return {};
            fail(opened.error());
            continue;
        }
        reader = std::make_unique<ResponseReader>(*conn);
        // The token goes on the stream's own connection, so it must come from this member.
        if (!impl.options.username.empty() && impl.token.empty()) {
            if (auto auth = impl.authenticate(deadline); !auth) {
                if (!auth.error().unavailable) return std::unexpected(auth.error());
                last = auth.error();
                ++tried;
                impl.next_endpoint();
                continue;
            }
        }
        auto request = post_request(endpoint, "/v3/watch", body, impl.token, true);
        if (auto w = conn->write_all(request, deadline); !w) {
            if (w.error().kind == IoFailure::Kind::interrupted) return {};
            fail(w.error());
            continue;
        }
        auto head = reader->head(deadline);
        if (!head) {
            if (head.error().kind == IoFailure::Kind::interrupted) return {};
            fail(head.error());
            continue;
        }
        if (head->status != 200) {
            auto text = reader->body(deadline);
            auto g = parse_gateway_error(head->status, text ? *text : std::string());
            if (!impl.options.username.empty() && is_invalid_token(g.message) && !reauthenticated) {
                reauthenticated = true;
                impl.token.clear();
                continue;
            }
            return std::unexpected(member_error(endpoint, g));
        }
        last.reset();
        break;
    }
    if (last) return std::unexpected(*last);
    const auto& endpoint = conn->endpoint();

    // The stream: newline-separated JSON messages, each {"result": {...}} or {"error": {...}}.
    std::string pending;
    auto idle_deadline = Clock::now() + idle;
    for (;;) {
        for (std::size_t eol; (eol = pending.find('\n')) != std::string::npos;) {
            auto line = std::string_view(pending).substr(0, eol);
            if (!trim(line).empty()) {
                auto j = json::parse(line, nullptr, false);
                if (!j.is_object()) return std::unexpected(Error{"etcd " + endpoint.name + ": watch message is not JSON"});
                if (auto err = j.find("error"); err != j.end()) {
                    // Either the gateway's stream error object or a gRPC error written whole.
                    auto g = parse_gateway_error(0, err->is_object() ? err->dump() : std::string(line));
                    return std::unexpected(member_error(endpoint, g));
                }
                WatchResponse response;
                try {
                    response = decode_watch(get_object(j, "result"));
                } catch (const BadResponse& bad) {
                    return std::unexpected(Error{"etcd " + endpoint.name + ": bad watch response: " + bad.what});
                } catch (const json::exception& bad) {
                    return std::unexpected(Error{"etcd " + endpoint.name + ": bad watch response: " + bad.what()});
                }
                if (!on_response(response)) return {};
                idle_deadline = Clock::now() + idle;
            }
            pending.erase(0, eol + 1);
        }
        if (pending.size() > max_body_bytes)
            return std::unexpected(Error{"etcd " + endpoint.name + ": watch message too large"});
        auto more = reader->body_some(pending, idle_deadline);
        if (!more) {
            switch (more.error().kind) {
            case IoFailure::Kind::interrupted:
                return {};
            case IoFailure::Kind::timeout:
                if (!on_idle()) return {};
                idle_deadline = Clock::now() + idle;
                continue;
            default:
                return std::unexpected(io_error(endpoint, more.error()));
            }
        }
        if (!*more) return std::unexpected(Error{"etcd " + endpoint.name + ": watch stream ended", true});
    }
}

}  // namespace store::etcd
