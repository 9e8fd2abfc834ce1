// A proxied connection: the client's socket, the connect attempts to the route's targets,
// the byte pump between the two sides, TLS origination and the HTTP Host rewrite. Each
// connection frees itself in its last close callback. The pump and the connects are in
// connection.cpp, the choice of targets in balancer.cpp.
#pragma once

#include "proxy/proxy.hpp"

#include "proxy/detail/access_log.hpp"
#include "proxy/detail/balancer.hpp"
#include "proxy/detail/h2.hpp"
#include "proxy/detail/http.hpp"
#include "proxy/detail/sockets.hpp"
#include "proxy/detail/tls.hpp"

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace proxy {

constexpr std::size_t block_size = std::size_t{64} << 10;
constexpr std::size_t pooled_blocks = 16;  // free blocks kept for reuse (1 MiB)

// ---- Buffers -------------------------------------------------------------------------------

class BlockPool {
public:
    ~BlockPool()
    {
        for (char* b : free_) delete[] b;
    }
    char* take()
    {
        if (free_.empty()) return new char[block_size];
        char* b = free_.back();
        free_.pop_back();
        return b;
    }
    void give(char* b)
    {
        if (!b) return;
        if (free_.size() < pooled_blocks) free_.push_back(b);
        else delete[] b;
    }

private:
    std::vector<char*> free_;
};

// ---- Connections ---------------------------------------------------------------------------

struct Connection;
struct Shard;

// One side of a proxied connection: the client's TCP socket, or the endpoint's TCP or unix
// socket.
struct Side {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    bool is_pipe = false;
    bool open = false;          // initialised and not yet closed
    bool reading = false;
    bool paused = false;        // reading stopped for backpressure
    bool eof = false;           // the peer shut its sending side down
    bool shut = false;          // our shutdown of this side's sending direction is done
    bool shutting = false;
    Connection* conn = nullptr;

    uv_stream_t* stream() { return is_pipe ? as_stream(&h.pipe) : as_stream(&h.tcp); }
    uv_handle_t* handle() { return is_pipe ? as_handle(&h.pipe) : as_handle(&h.tcp); }
};

// A connect attempt to one target; its handle becomes the connection's upstream side on
// success, or is closed.
struct Attempt {
    Side side;
    uv_connect_t req{};
    Connection* conn = nullptr;
    std::shared_ptr<const Target> target;
    std::optional<vip::Address> address;  // a DNS-named target: the address dialled
    bool abandoned = false;  // timed out or the connection went away
    sockaddr_storage addr{};      // TCP: where it connects
    std::uint64_t started_ns = 0;  // uv_hrtime()
};

struct WriteReq {
    uv_write_t req{};
    char* block = nullptr;
    Connection* conn = nullptr;
    bool to_client = false;
};

// A connection lives on one loop (its shard's) from accept to close; it reaches shared
// state (its Service, the global count) only through what guards that.
struct Connection {
    Proxy::Impl* impl;
    Shard* shard;
    // proxy.connectTimeout and proxy.idleTimeout when it was accepted (a reload changes them
    // for later connections only).
    std::chrono::milliseconds connect_timeout;
    std::chrono::milliseconds idle_timeout;
    std::shared_ptr<Service> service;
    std::uint16_t dialled_port = 0;
    Side client;
    Side* upstream = nullptr;  // points into `attempt` once connected
    Attempt* attempt = nullptr;
    uv_timer_t timer{};
    bool timer_open = false;
    std::uint32_t attempts = 0;
    std::vector<std::shared_ptr<const Target>> tried;  // targets this connection has used up
    // DNS-named targets: the addresses tried, so that each attempt takes another one.
    std::vector<std::pair<std::shared_ptr<const Target>, vip::Address>> tried_addresses;
    // Targets and addresses whose failure is certain to repeat (a certificate that does not
    // verify): not tried again by this connection.
    std::vector<std::shared_ptr<const Target>> hopeless;
    std::vector<std::pair<std::shared_ptr<const Target>, vip::Address>> hopeless_addresses;
    bool retrying = false;  // every target was tried once: further attempts go round again
    std::uint64_t last_activity = 0;
    bool closing = false;
    int pending_closes = 0;
    std::shared_ptr<bool> alive = std::make_shared<bool>(true);
    // TLS origination: the session over the upstream side, while and after its handshake.
    std::shared_ptr<detail::TlsContext> tls;
    std::shared_ptr<const Target> tls_target;
    SSL* ssl = nullptr;
    bool handshaking = false;
    std::unique_ptr<detail::HostRewriter> http;  // protocol: http to a DNS-named endpoint
    std::unique_ptr<detail::AuthorityRewriter> h2;  // protocol: http2 or grpc to a DNS-named endpoint
    bool held_back = false;  // http: the client is not read while a switch waits with hold_limit held
    bool eof_held = false;   // http: the client's FIN came while its last bytes are held
    // protocol http, nothing reached (or not HTTP): the client is being answered, then closed
    // (see answer()); what it sends meanwhile is read and dropped.
    bool answering = false;
    std::size_t discarded = 0;
    // What an operator sees of it (the access log, the endpoint figures): see opened(),
    // connected(), handshaken() and ended().
    std::unique_ptr<detail::AccessRecord> record;  // the access log is on
    std::shared_ptr<detail::EndpointStats> stats;  // the endpoint address it reached
    std::uint64_t started_ns = 0;                   // uv_hrtime() when admitted
    std::uint64_t handshake_started_ns = 0;
    const char* end_reason = nullptr;  // detail::end_reason; the first cause found wins
    std::string dialled_vip;           // redirect mode: the original destination, for the log
    bool last_failure_tls = false;     // the last attempt failed in its TLS handshake
    bool last_failure_timeout = false; // the last attempt timed out connecting

    Connection(Proxy::Impl* i, Shard* s);  // takes the shard's timeouts of the moment
    ~Connection();

    Side& other(Side& s) { return &s == &client ? *upstream : client; }

    void start(std::shared_ptr<Service> svc, std::uint16_t port);

    // ---- what an operator sees: the access log's record and the endpoint figures
    void opened(const Service* svc);  // admitted (or refused: `svc` may be null)
    void connected(const Attempt& a);
    void handshaken();
    void ended();                     // from close(): the line goes to the shard's buffer
    void count(bool to_client, std::size_t n)
    {
        (to_client ? service->bytes_down : service->bytes_up) += n;
        if (stats) (to_client ? stats->bytes_down : stats->bytes_up).fetch_add(n, std::memory_order_relaxed);
        if (record) (to_client ? record->bytes_down : record->bytes_up) += n;
    }
    void end_by(const char* why)
    {
        if (!end_reason) end_reason = why;
    }

    // ---- balancing (balancer.cpp): each takes the service's mutex
    bool used_up(const Target& t) const;
    bool is_hopeless(const Target& t) const;
    std::shared_ptr<const Target> pick();
    std::optional<vip::Address> choose_address(const std::shared_ptr<const Target>& t, const std::vector<vip::Address>& addrs);
    // `address`: the one dialled for a DNS-named target (ignored for others).
    void record_failure(const Target& t, const std::optional<vip::Address>& address, FailureKind kind, const std::string& reason);
    void record_success(const Target& t, const std::optional<vip::Address>& address);
    HealthSubject subject(const Target& t, const std::optional<vip::Address>& address) const;  // under the mutex

    // ---- connect attempts
    void try_next();
    void fail(const std::shared_ptr<const Target>& t, const std::optional<vip::Address>& address, FailureKind kind,
              const std::string& reason);
    void arm_connect_timeout();
    static void close_attempt(Attempt* a);
    void connect_tcp(std::shared_ptr<const Target> target, sockaddr_storage addr, std::optional<vip::Address> address = std::nullopt);
    void connect_unix(std::shared_ptr<const Target> target);
    static void on_connect(uv_connect_t* req, int status);
    void arm_connect_timeout_for_handshake();

    // ---- the pump
    void pump();
    void arm_idle();
    void start_reading(Side& s);
    void stop_reading(Side& s);
    static void on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf);
    static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
    void forward(Side& from, char* block, std::size_t size);
    bool send_block(Side& to, Side& from, char* block, std::size_t size);
    void deliver_up(const std::string& out);
    void refuse_request();
    void start_http(const Target& target);
    void start_h2(const Target& target);
    void release_held();  // http: the switch the held bytes waited on was answered
    void check_hold();    // reads the client, or not, as the hold asks

    // ---- nothing reached
    // The client is reset, or, for protocol http (`svc`'s route; the connection's service
    // when null), told why with a 502 or 503 (answer()). The end reason is set before.
    void give_up(detail::Unreachable why, const Service* svc = nullptr);
    void answer(const std::string& reply, std::uint64_t linger_ms);

    // ---- TLS to the endpoint
    bool flush_tls();
    void drive_handshake();
    void read_tls();
    // `certain`: the failure will repeat on this endpoint (its certificate does not verify).
    void tls_failed(const std::string& reason, bool certain = false);

    // ---- writes done, half-close and close
    static void on_write(uv_write_t* req, int status);
    void half_close(Side& s);
    bool shutdown_now(Side& s);
    void maybe_done();
    void close(bool reset, Side* reset_by = nullptr);
    void closed_one();
    void finish();
};

}  // namespace proxy
