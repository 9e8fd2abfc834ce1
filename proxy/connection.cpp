#include "proxy/detail/connection.hpp"

#include "proxy/detail/impl.hpp"

#include <uv.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace proxy {

namespace {

// After an HTTP answer of mesd's own (502, 503, 400), how long the client is still read
// (and what it sends dropped) before the socket closes: Envoy's delayed_close_timeout.
constexpr std::uint64_t answer_linger_ms = 1000;
// The same for a client refused over maxConnectionsPerService: it holds a descriptor and a
// place under the global maxConnections while it lingers, so a flood against one capped MES
// must not fill the global limit for a second per connection and starve every other MES.
constexpr std::uint64_t overflow_linger_ms = 100;
// What is read and dropped before and after that answer: past it the socket closes anyway.
constexpr std::size_t answer_discard_limit = std::size_t{1} << 20;

}  // namespace

Connection::Connection(Proxy::Impl* i, Shard* s)
    : impl(i), shard(s), connect_timeout(s->connect_timeout), idle_timeout(s->idle_timeout)
{
}

Connection::~Connection()
{
    if (ssl) SSL_free(ssl);
}

void Connection::start(std::shared_ptr<Service> svc, std::uint16_t port)
{
    service = std::move(svc);  // its `active` was counted when the connection was admitted
    dialled_port = port;
    ++service->total;
    uv_timer_init(shard->loop, &timer);
    timer.data = this;
    timer_open = true;
    auto routing = service->current();
    if (!routing || !routing->tls_error.empty()) {  // never carried in the clear instead
        ++service->failed;
        end_by(routing ? detail::end_reason::tls_failed : detail::end_reason::no_healthy_endpoint);
        give_up(routing ? detail::Unreachable::tls_unusable : detail::Unreachable::no_healthy);
        return;
    }
    try_next();
}

void Connection::try_next()
{
    if (closing) return;
    auto target = attempts < impl->options.connect_attempts ? pick() : nullptr;
    if (!target) {
        ++service->failed;
        end_by(attempts == 0       ? detail::end_reason::no_healthy_endpoint
               : last_failure_tls ? detail::end_reason::tls_failed
                                  : detail::end_reason::connect_failed);
        give_up(attempts == 0           ? detail::Unreachable::no_healthy
                : last_failure_tls     ? detail::Unreachable::tls_handshake
                : last_failure_timeout ? detail::Unreachable::connect_timeout
                                       : detail::Unreachable::connect_failed);
        return;
    }
    ++attempts;
    last_failure_tls = false;
    last_failure_timeout = false;
    const Target* t = target.get();
    if (t->endpoint.kind != conf::AddressKind::hostname && !used_up(*t)) tried.push_back(target);
    std::uint16_t port = t->endpoint.port.value_or(dialled_port);
    switch (t->endpoint.kind) {
    case conf::AddressKind::ipv4:
    case conf::AddressKind::ipv6: {
        auto a = vip::Address::parse(t->endpoint.address);
        if (!a) {
            fail(target, std::nullopt, FailureKind::connect, "not an address");
            return;
        }
        connect_tcp(std::move(target), to_sockaddr(*a, port));
        return;
    }
    case conf::AddressKind::unix_socket:
        connect_unix(std::move(target));
        return;
    case conf::AddressKind::hostname: {
        std::weak_ptr<bool> token = alive;
        shard->resolver->resolve(t->endpoint.address, [this, token, target, port](const detail::Resolver::Entry& e) {
            if (token.expired() || closing) return;
            if (e.addresses.empty()) {
                if (!used_up(*target)) tried.push_back(target);
                fail(target, std::nullopt, FailureKind::connect, "does not resolve" + (e.error.empty() ? "" : ": " + e.error));
                return;
            }
            auto chosen = choose_address(target, e.addresses);
            if (!chosen) {  // each address failed in a way certain to repeat
                try_next();
                return;
            }
            connect_tcp(target, to_sockaddr(*chosen, port), chosen);
        });
        return;
    }
    }
}

void Connection::fail(const std::shared_ptr<const Target>& t, const std::optional<vip::Address>& address, FailureKind kind,
                      const std::string& reason)
{
    record_failure(*t, address, kind, reason);
    try_next();
}

void Connection::arm_connect_timeout()
{
    uv_timer_start(
        &timer,
        [](uv_timer_t* h) {
            auto* self = static_cast<Connection*>(h->data);
            if (!self->attempt) return;
            Attempt* a = self->attempt;
            self->attempt = nullptr;
            a->abandoned = true;
            auto target = a->target;
            auto address = a->address;
            close_attempt(a);
            self->last_failure_timeout = true;
            self->fail(target, address, FailureKind::connect, "connect timed out");
        },
        static_cast<std::uint64_t>(connect_timeout.count()), 0);
}

void Connection::close_attempt(Attempt* a)
{
    a->side.open = false;
    a->side.handle()->data = a;  // reading may have pointed it at the side
    uv_close(a->side.handle(), [](uv_handle_t* h) { delete static_cast<Attempt*>(h->data); });
}

void Connection::connect_tcp(std::shared_ptr<const Target> target, sockaddr_storage addr, std::optional<vip::Address> address)
{
    auto* a = new Attempt;
    a->conn = this;
    a->target = std::move(target);
    a->address = address;
    a->side.conn = this;
    a->addr = addr;
    a->started_ns = uv_hrtime();
    if (int rc = uv_tcp_init_ex(shard->loop, &a->side.h.tcp, addr.ss_family); rc != 0) {
        // No socket (out of file descriptors): mesd's trouble, not the endpoint's. The
        // handle was never added to the loop, so it is freed here, not closed.
        delete a;
        ++service->failed;
        ++shard->local_failures;
        end_by(detail::end_reason::local_error);
        give_up(detail::Unreachable::local);
        return;
    }
    a->side.h.tcp.data = a;
    a->side.open = true;
    a->req.data = a;
    attempt = a;
    if (impl->options.upstream_mark) {
        // Lets redirect rules tell mesd's own connections apart (needs CAP_NET_ADMIN).
        uv_os_fd_t fd = -1;
        unsigned mark = impl->options.upstream_mark;
        if (uv_fileno(as_handle(&a->side.h.tcp), &fd) != 0 ||
            ::setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0)
            ++shard->mark_failures;
    }
    int rc = uv_tcp_connect(&a->req, &a->side.h.tcp, reinterpret_cast<const sockaddr*>(&addr), on_connect);
    if (rc != 0) {
        attempt = nullptr;
        auto t = a->target;
        close_attempt(a);
        fail(t, address, FailureKind::connect, uv_strerror(rc));
        return;
    }
    // Reading is asked for now, while libuv registers the socket for the connect: once
    // connected it changes the registration once, where asking afterwards costs a failed
    // add and a change. libuv completes the connect before it reads anything.
    start_reading(a->side);
    arm_connect_timeout();
}

void Connection::connect_unix(std::shared_ptr<const Target> target)
{
    auto* a = new Attempt;
    a->conn = this;
    std::string path(target->endpoint.unix_path());
    a->target = std::move(target);
    a->side.conn = this;
    a->side.is_pipe = true;
    a->started_ns = uv_hrtime();
    uv_pipe_init(shard->loop, &a->side.h.pipe, 0);
    a->side.h.pipe.data = a;
    a->side.open = true;
    a->req.data = a;
    attempt = a;
    uv_pipe_connect(&a->req, &a->side.h.pipe, path.c_str(), on_connect);
    arm_connect_timeout();
}

void Connection::on_connect(uv_connect_t* req, int status)
{
    auto* a = static_cast<Attempt*>(req->data);
    if (a->abandoned) return;  // timed out or closed; the close callback frees it
    Connection* self = a->conn;
    self->attempt = nullptr;
    uv_timer_stop(&self->timer);
    if (status != 0) {
        auto t = a->target;
        auto address = a->address;
        close_attempt(a);
        self->fail(t, address, FailureKind::connect, uv_strerror(status));
        return;
    }
    self->upstream = &a->side;
    self->attempt = a;  // owns the upstream side from now on
    self->connected(*a);
    if (!a->side.is_pipe) set_nodelay(&a->side.h.tcp);
    auto routing = self->service->current();
    if (!routing->tls_error.empty()) {
        // The MES's TLS settings became unusable while this connect was under way (a
        // Secret deleted): refused, never carried in the clear instead.
        ++self->service->failed;
        self->end_by(detail::end_reason::tls_failed);
        self->give_up(detail::Unreachable::tls_unusable);
        return;
    }
    if (routing->tls) {
        // The handshake runs under the same connect timeout; the client waits unread.
        self->tls = routing->tls;
        self->tls_target = a->target;
        const auto& ep = a->target->endpoint;
        bool is_ip = ep.kind == conf::AddressKind::ipv4 || ep.kind == conf::AddressKind::ipv6;
        self->ssl = self->tls->start(ep.address, is_ip, a->target->label);
        if (!self->ssl) {
            self->end_by(detail::end_reason::tls_failed);
            self->give_up(detail::Unreachable::tls_handshake);
            return;
        }
        self->handshaking = true;
        self->handshake_started_ns = uv_hrtime();
        self->arm_connect_timeout_for_handshake();
        self->start_reading(a->side);
        self->drive_handshake();
        return;
    }
    self->record_success(*a->target, a->address);
    self->start_http(*a->target);
    self->pump();
}

void Connection::arm_connect_timeout_for_handshake()
{
    uv_timer_start(
        &timer,
        [](uv_timer_t* h) {
            auto* self = static_cast<Connection*>(h->data);
            if (self->handshaking) self->tls_failed("TLS handshake timed out");
        },
        static_cast<std::uint64_t>(connect_timeout.count()), 0);
}

// ---- the pump

void Connection::pump()
{
    last_activity = uv_now(shard->loop);
    arm_idle();
    start_reading(client);
    start_reading(*upstream);
}

void Connection::arm_idle()
{
    auto idle = static_cast<std::uint64_t>(idle_timeout.count());
    std::uint64_t since = uv_now(shard->loop) - last_activity;
    uv_timer_start(
        &timer,
        [](uv_timer_t* h) {
            auto* self = static_cast<Connection*>(h->data);
            auto limit = static_cast<std::uint64_t>(self->idle_timeout.count());
            if (uv_now(self->shard->loop) - self->last_activity >= limit) {
                self->end_by(detail::end_reason::idle_timeout);
                self->close(false);
            } else {
                self->arm_idle();
            }
        },
        since >= idle ? 0 : idle - since, 0);
}

void Connection::start_reading(Side& s)
{
    if (s.reading || s.eof || !s.open) return;
    s.reading = true;
    s.paused = false;
    s.handle()->data = &s;
    uv_read_start(s.stream(), on_alloc, on_read);
}

void Connection::stop_reading(Side& s)
{
    if (!s.reading) return;
    s.reading = false;
    uv_read_stop(s.stream());
}

void Connection::on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf)
{
    auto* s = static_cast<Side*>(h->data);
    *buf = uv_buf_init(s->conn->shard->pool.take(), static_cast<unsigned>(block_size));
}

void Connection::on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf)
{
    auto* s = static_cast<Side*>(stream->data);
    Connection* self = s->conn;
    if (self->answering) {  // see answer()
        self->shard->pool.give(buf->base);
        if (s != &self->client || nread == 0) return;
        if (nread > 0) {
            self->discarded += static_cast<std::size_t>(nread);
            if (self->discarded > answer_discard_limit) self->close(false);
            return;
        }
        self->stop_reading(self->client);
        self->client.eof = true;
        if (nread != UV_EOF || self->client.shut) self->close(false);
        return;
    }
    if (nread > 0) {
        self->forward(*s, buf->base, static_cast<std::size_t>(nread));
        return;
    }
    self->shard->pool.give(buf->base);
    if (nread == 0) return;
    if (self->handshaking && s == self->upstream) {
        self->tls_failed(nread == UV_EOF ? "the server closed the connection during the handshake"
                                         : std::string("connection lost during the handshake: ") + uv_strerror(static_cast<int>(nread)));
        return;
    }
    if (nread == UV_EOF) {
        if (self->http && self->http->waiting()) {
            if (s == &self->client) {
                // Done sending, but what it sent last is held: its FIN goes after that.
                self->stop_reading(self->client);
                self->eof_held = true;
                return;
            }
            self->http->drop_held();  // the endpoint ends without answering: nothing will
        }
        self->half_close(*s);
        if (self->http && !self->closing) self->check_hold();
        return;
    }
    // A reset (or another error) on one side resets the other.
    self->close(nread == UV_ECONNRESET, s);
}

void Connection::forward(Side& from, char* block, std::size_t size)
{
    bool to_client = &from != &client;
    last_activity = uv_now(shard->loop);
    if (h2 && !to_client) {
        count(false, size);
        std::string out;
        bool ok = h2->feed(block, size, out);
        shard->pool.give(block);
        if (!ok) {  // not HTTP/2: nothing sensible can be sent to the client mid-stream
            end_by(detail::end_reason::bad_request);
            close(true);
            return;
        }
        deliver_up(out);
        return;
    }
    if (http && !to_client) {
        count(false, size);
        std::string out;
        bool ok = http->feed(block, size, out);
        shard->pool.give(block);
        if (!ok) {
            refuse_request();
            return;
        }
        deliver_up(out);
        if (!closing) check_hold();
        return;
    }
    if (http && !ssl) {  // a response: watched, passed on as it is
        count(true, size);
        bool answered = http->watch(block, size);
        if (!send_block(client, from, block, size)) return;
        if (answered) release_held();
        return;
    }
    if (ssl) {
        if (to_client) {
            BIO_write(SSL_get_rbio(ssl), block, static_cast<int>(size));
            shard->pool.give(block);
            if (handshaking) drive_handshake();
            else read_tls();
        } else {
            count(false, size);
            int n = SSL_write(ssl, block, static_cast<int>(size));  // into a memory BIO: all or an error
            shard->pool.give(block);
            if (n <= 0) {
                end_by(detail::end_reason::tls_failed);
                close(true);
                return;
            }
            flush_tls();
        }
        return;
    }
    count(to_client, size);
    send_block(other(from), from, block, size);
}

// Writes `block` (ours until written) to `to`; stops reading `from` while `to` has more
// than the high watermark queued. False when the connection was closed.
bool Connection::send_block(Side& to, Side& from, char* block, std::size_t size)
{
    bool to_client = &to == &client;
    std::size_t written = 0;
    if (uv_stream_get_write_queue_size(to.stream()) == 0) {
        uv_buf_t b = uv_buf_init(block, static_cast<unsigned>(size));
        int n = uv_try_write(to.stream(), &b, 1);
        if (n > 0) written = static_cast<std::size_t>(n);
        else if (n != UV_EAGAIN && n != UV_ENOSYS) {
            shard->pool.give(block);
            close(n == UV_ECONNRESET || n == UV_EPIPE, &to);
            return false;
        }
    }
    if (written == size) {
        shard->pool.give(block);
        return true;
    }
    auto* w = new WriteReq;
    w->block = block;
    w->conn = this;
    w->to_client = to_client;
    w->req.data = w;
    uv_buf_t rest = uv_buf_init(block + written, static_cast<unsigned>(size - written));
    int rc = uv_write(&w->req, to.stream(), &rest, 1, on_write);
    if (rc != 0) {
        shard->pool.give(block);
        delete w;
        close(false);
        return false;
    }
    if (uv_stream_get_write_queue_size(to.stream()) > impl->options.high_watermark) {
        stop_reading(from);
        from.paused = true;
    }
    return true;
}

// Plaintext bound for the endpoint, in the clear or through TLS.
void Connection::deliver_up(const std::string& out)
{
    if (ssl) {
        if (!out.empty() && SSL_write(ssl, out.data(), static_cast<int>(out.size())) <= 0) {
            close(true);
            return;
        }
        flush_tls();
        return;
    }
    for (std::size_t at = 0; at < out.size();) {
        std::size_t n = std::min(block_size, out.size() - at);
        char* block = shard->pool.take();
        std::memcpy(block, out.data() + at, n);
        if (!send_block(*upstream, client, block, n)) return;
        at += n;
    }
}

// Not HTTP: a 400 to the client, then the connection ends.
void Connection::refuse_request()
{
    end_by(detail::end_reason::bad_request);
    stop_reading(client);
    answer(detail::HostRewriter::bad_request(), answer_linger_ms);
}

// What the client sent after a request asking to switch protocols was held until the
// endpoint's answer (http.hpp): it goes now, raw after a switch, else as requests.
void Connection::release_held()
{
    std::string out;
    if (!http->release(out)) {
        refuse_request();
        return;
    }
    deliver_up(out);
    if (!closing) check_hold();
}

void Connection::check_hold()
{
    bool full = http->waiting() && http->held() >= detail::HostRewriter::hold_limit;
    if (full && !held_back) {
        // Not backpressure (on_write does not resume it): only the endpoint's answer does.
        stop_reading(client);
        held_back = true;
    } else if (!full && held_back) {
        held_back = false;
        if (!client.paused && !eof_held) start_reading(client);
    }
    if (eof_held && !http->waiting()) {
        eof_held = false;
        half_close(client);
    }
}

// protocol: http to a DNS-named endpoint: requests get its hostname as Host.
void Connection::start_http(const Target& target)
{
    if (target.endpoint.kind == conf::AddressKind::hostname && service->current()->route.protocol == conf::Protocol::http)
        http = std::make_unique<detail::HostRewriter>(target.endpoint.address);
    start_h2(target);
}

// protocol: http2 or grpc to a DNS-named endpoint: requests get its hostname as :authority,
// the same string HTTP/1 requests get as Host.
void Connection::start_h2(const Target& target)
{
    auto protocol = service->current()->route.protocol;
    if (target.endpoint.kind == conf::AddressKind::hostname && (protocol == conf::Protocol::http2 || protocol == conf::Protocol::grpc))
        h2 = std::make_unique<detail::AuthorityRewriter>(target.endpoint.address);
}

// ---- TLS to the endpoint

// Sends what OpenSSL has written (handshake records, application data, alerts).
bool Connection::flush_tls()
{
    BIO* out = SSL_get_wbio(ssl);
    while (BIO_ctrl_pending(out) > 0) {
        char* block = shard->pool.take();
        int n = BIO_read(out, block, static_cast<int>(block_size));
        if (n <= 0) {
            shard->pool.give(block);
            break;
        }
        if (!send_block(*upstream, client, block, static_cast<std::size_t>(n))) return false;
    }
    return true;
}

void Connection::drive_handshake()
{
    int r = SSL_do_handshake(ssl);
    if (!flush_tls()) return;
    if (r != 1) {
        int err = SSL_get_error(ssl, r);
        if (err == SSL_ERROR_WANT_READ) return;
        // A chain that does not verify fails every handshake with this endpoint alike.
        tls_failed(detail::TlsContext::failure_reason(ssl, err), SSL_get_verify_result(ssl) != X509_V_OK);
        return;
    }
    const auto& ep = tls_target->endpoint;
    bool is_ip = ep.kind == conf::AddressKind::ipv4 || ep.kind == conf::AddressKind::ipv6;
    if (auto why = tls->check_names(ssl, ep.address, is_ip); !why.empty()) {
        tls_failed(why, true);
        return;
    }
    handshaking = false;
    uv_timer_stop(&timer);
    handshaken();
    start_http(*tls_target);
    ++service->tls_handshakes;
    if (SSL_session_reused(ssl)) ++service->tls_resumed;
    record_success(*tls_target, attempt->address);
    pump();
    read_tls();  // records that came with the end of the handshake
}

// Plaintext from the endpoint, to the client.
void Connection::read_tls()
{
    while (!closing) {
        char* block = shard->pool.take();
        int n = SSL_read(ssl, block, static_cast<int>(block_size));
        if (n > 0) {
            count(true, static_cast<std::size_t>(n));
            bool answered = http && http->watch(block, static_cast<std::size_t>(n));
            if (!send_block(client, *upstream, block, static_cast<std::size_t>(n))) return;
            if (answered) {
                release_held();
                if (closing || answering) return;  // answering: what the held bytes were is refused
            }
            continue;
        }
        shard->pool.give(block);
        int err = SSL_get_error(ssl, n);
        if (err == SSL_ERROR_WANT_READ) break;
        if (err == SSL_ERROR_ZERO_RETURN) {  // close_notify: the endpoint is done sending
            if (!flush_tls()) return;
            half_close(*upstream);
            return;
        }
        // A renegotiation refused, a bad record: the connection cannot go on.
        impl->report_tls_failure(*service, detail::TlsContext::failure_reason(ssl, err));
        end_by(detail::end_reason::tls_failed);
        close(true);
        return;
    }
    flush_tls();
}

void Connection::tls_failed(const std::string& reason, bool certain)
{
    impl->report_tls_failure(*service, reason);
    // The attempt failed: its socket goes, the next endpoint is tried. One whose failure is
    // certain to repeat is not tried again by this client (others still are).
    last_failure_tls = true;
    if (stats) {
        stats->active.fetch_sub(1, std::memory_order_relaxed);
        stats.reset();
    }
    auto target = tls_target;
    auto address = attempt->address;
    if (certain) {
        if (target->is_name() && address) hopeless_addresses.emplace_back(target, *address);
        else hopeless.push_back(target);
    }
    SSL_free(ssl);
    ssl = nullptr;
    tls_target.reset();
    handshaking = false;
    Attempt* a = attempt;
    stop_reading(*upstream);
    upstream = nullptr;
    attempt = nullptr;
    a->side.handle()->data = a;
    close_attempt(a);
    uv_timer_stop(&timer);
    fail(target, address, FailureKind::handshake, reason);
}

void Connection::on_write(uv_write_t* req, int status)
{
    auto* w = static_cast<WriteReq*>(req->data);
    Connection* self = w->conn;
    self->shard->pool.give(w->block);
    bool to_client = w->to_client;
    delete w;
    if (status == UV_ECANCELED || self->closing) return;
    if (status != 0) {
        self->close(status == UV_ECONNRESET || status == UV_EPIPE, to_client ? &self->client : self->upstream);
        return;
    }
    if (self->answering) return;  // the answer's write: the client is read and dropped already
    Side& to = to_client ? self->client : *self->upstream;
    Side& from = self->other(to);
    if (from.paused && !(&from == &self->client && self->held_back) &&
        uv_stream_get_write_queue_size(to.stream()) <= self->impl->options.low_watermark)
        self->start_reading(from);
}

// `s` sent FIN: pass it on once what it sent before is written, keep the other way open.
void Connection::half_close(Side& s)
{
    end_by(&s == &client ? detail::end_reason::client_closed : detail::end_reason::endpoint_closed);
    s.eof = true;
    stop_reading(s);
    Side& to = other(s);
    // The other side has ended too and nothing waits to be written to it: closing will
    // send it our FIN, so no shutdown(2) is needed (the commonest path: a response, then
    // both sides leave).
    if (to.eof && uv_stream_get_write_queue_size(to.stream()) == 0) {
        maybe_done();
        return;
    }
    if (!to.shutting) {
        if (ssl && &to == upstream) {  // close_notify first, then FIN
            SSL_shutdown(ssl);
            if (!flush_tls()) return;
        }
        to.shutting = true;
        if (uv_stream_get_write_queue_size(to.stream()) == 0 && shutdown_now(to)) {
            maybe_done();
            return;
        }
        auto* req = new uv_shutdown_t;
        req->data = &to;
        int rc = uv_shutdown(req, to.stream(), [](uv_shutdown_t* r, int status) {
            auto* side = static_cast<Side*>(r->data);
            delete r;
            if (status == UV_ECANCELED) return;
            Connection* c = side->conn;
            side->shut = true;
            if (c->closing) return;
            if (status != 0) c->close(false);
            else c->maybe_done();
        });
        if (rc != 0) {
            delete req;
            close(false);
            return;
        }
    }
    maybe_done();
}

// Nothing waits to be written to `s`: its FIN goes now, with shutdown(2) itself.
// uv_shutdown would send it a loop turn later and then re-register the socket with the
// events it already has. False when it could not be done here (uv_shutdown then tries,
// and reports the error).
bool Connection::shutdown_now(Side& s)
{
    uv_os_fd_t fd = -1;
    if (uv_fileno(s.handle(), &fd) != 0 || ::shutdown(fd, SHUT_WR) != 0) return false;
    s.shut = true;
    return true;
}

// Both sides sent FIN, and what we owe each (queued bytes, a FIN in progress) is out.
void Connection::maybe_done()
{
    auto settled = [](Side& x) {
        return !(x.shutting && !x.shut) && uv_stream_get_write_queue_size(x.stream()) == 0;
    };
    if (client.eof && upstream && upstream->eof && settled(client) && settled(*upstream)) close(false);
}

// ---- nothing reached

void Connection::give_up(detail::Unreachable why, const Service* svc)
{
    if (!svc) svc = service.get();
    auto routing = svc ? svc->current() : nullptr;
    // tcp, http2 and grpc: a reset, the one signal every protocol understands (an HTTP/2
    // client would need a GOAWAY or a stream reset, not an HTTP/1 status line).
    if (!routing || routing->route.protocol != conf::Protocol::http || shard->stopping) {
        close(true);
        return;
    }
    answer(detail::failure_response(why), why == detail::Unreachable::overflow ? overflow_linger_ms : answer_linger_ms);
}

// The client gets `reply` and then a FIN, never a reset: the kernel answers a close with
// unread bytes in the receive buffer with a reset, which can reach the client before it has
// read the reply and discard it. So what the client has sent so far (its request, usually)
// is read first, without waiting for more (a client that sends nothing is answered all the
// same), and after the reply reading goes on, dropping what comes, until the client closes
// or `linger_ms` has passed (RFC 9112 9.6).
void Connection::answer(const std::string& reply, std::uint64_t linger_ms)
{
    if (closing) return;
    answering = true;
    if (upstream) stop_reading(*upstream);  // it closes with the connection
    if (!timer_open) {  // refused before start(): over a limit
        uv_timer_init(shard->loop, &timer);
        timer.data = this;
        timer_open = true;
    }
    uv_timer_stop(&timer);
    stop_reading(client);
    uv_os_fd_t fd = -1;
    if (uv_fileno(client.handle(), &fd) == 0) {
        char* block = shard->pool.take();
        while (discarded < answer_discard_limit) {
            ssize_t n = ::recv(fd, block, block_size, MSG_DONTWAIT);
            if (n > 0) {
                discarded += static_cast<std::size_t>(n);
                continue;
            }
            if (n == 0) client.eof = true;
            else if (errno == EINTR) continue;
            else if (errno != EAGAIN && errno != EWOULDBLOCK) {
                shard->pool.give(block);
                close(false);  // the client is gone
                return;
            }
            break;
        }
        shard->pool.give(block);
    }
    char* block = shard->pool.take();
    std::size_t size = std::min(reply.size(), block_size);
    std::memcpy(block, reply.data(), size);
    if (!send_block(client, client, block, size)) return;
    client.shutting = true;
    auto* req = new uv_shutdown_t;
    req->data = this;
    int rc = uv_shutdown(req, client.stream(), [](uv_shutdown_t* r, int status) {
        auto* c = static_cast<Connection*>(r->data);
        delete r;
        if (status == UV_ECANCELED || c->closing) return;
        c->client.shut = true;
        if (status != 0 || c->client.eof) c->close(false);
    });
    if (rc != 0) {
        delete req;
        close(false);
        return;
    }
    start_reading(client);
    uv_timer_start(
        &timer, [](uv_timer_t* h) { static_cast<Connection*>(h->data)->close(false); }, linger_ms, 0);
}

// Closes both sides (resetting them when `reset`), then frees itself.
void Connection::close(bool reset, Side* reset_by)
{
    if (closing) return;
    closing = true;
    // A clean end keeps the TLS session resumable: freed without a shutdown recorded,
    // OpenSSL marks it not resumable (and with TLS 1.3 that is the ticket just kept).
    if (ssl && !reset && !handshaking) SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    alive.reset();
    if (service) {
        --service->active;
    }
    if (shard->stopping) end_reason = detail::end_reason::stopping;
    else if (reset_by) end_by(reset_by == &client ? detail::end_reason::client_closed : detail::end_reason::endpoint_closed);
    ended();
    --impl->active;
    --shard->active;
    shard->connections.erase(this);
    ++shard->closing_connections;
    uv_timer_stop(&timer);
    if (attempt && !upstream) {  // a connect in progress
        attempt->abandoned = true;
        close_attempt(attempt);
        attempt = nullptr;
    }
    auto close_side = [&](Side& s, bool rst) {
        if (!s.open) return;
        s.open = false;
        ++pending_closes;
        s.handle()->data = this;
        auto cb = [](uv_handle_t* h) {
            auto* c = static_cast<Connection*>(h->data);
            c->closed_one();
        };
        if (rst && !s.is_pipe) {
            // SO_LINGER 0 makes the close an RST. Set here rather than through
            // uv_tcp_close_reset, which refuses while a shutdown is pending.
            uv_os_fd_t fd = -1;
            linger l{1, 0};
            if (uv_fileno(s.handle(), &fd) == 0) ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        }
        uv_close(s.handle(), cb);
    };
    close_side(client, reset && reset_by != &client);
    if (upstream) {
        // The upstream side lives in the attempt, freed with the connection.
        close_side(*upstream, reset && reset_by != upstream);
    }
    if (timer_open) {
        timer_open = false;
        ++pending_closes;
        uv_close(as_handle(&timer), [](uv_handle_t* h) { static_cast<Connection*>(h->data)->closed_one(); });
    }
    if (pending_closes == 0) finish();
}

void Connection::closed_one()
{
    if (--pending_closes == 0) finish();
}

void Connection::finish()
{
    Shard* s = shard;
    if (upstream) delete attempt;
    delete this;
    --s->closing_connections;
    s->maybe_stopped();
}

}  // namespace proxy
