// The proxy's I/O on libuv: listeners, balancing over targets with ejection, connect
// attempts with a timeout, and the byte pump. Every handle belongs to one object that frees
// itself in its last close callback; callbacks that may outlive their connection (a DNS
// lookup) hold a weak token and do nothing once it has expired.
#include "proxy/proxy.hpp"

#include "proxy/detail/http.hpp"
#include "proxy/detail/resolver.hpp"
#include "proxy/detail/tls.hpp"
#include "proxy/accept.hpp"

#include <uv.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <set>

namespace proxy {

namespace {

// getsockopt names from <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>,
// whose other contents clash with the libc headers.
constexpr int so_original_dst = 80;
constexpr int ip6t_so_original_dst = 80;

constexpr std::size_t block_size = std::size_t{64} << 10;
constexpr std::size_t pooled_blocks = 16;  // free blocks kept for reuse (1 MiB)
constexpr std::uint64_t listen_retry_ms = 5000;

std::string host_port(const vip::Address& a, std::uint16_t port)
{
    return a.family == vip::Family::v6 ? "[" + a.to_string() + "]:" + std::to_string(port)
                                       : a.to_string() + ":" + std::to_string(port);
}

sockaddr_storage to_sockaddr(const vip::Address& a, std::uint16_t port)
{
    sockaddr_storage ss{};
    if (a.family == vip::Family::v4) {
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        in->sin_addr.s_addr = htonl(static_cast<std::uint32_t>(a.value));
    } else {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        auto bytes = a.bytes();
        std::memcpy(&in6->sin6_addr, bytes.data(), 16);
    }
    return ss;
}

template <class H>
uv_handle_t* as_handle(H* h)
{
    return reinterpret_cast<uv_handle_t*>(h);
}
template <class H>
uv_stream_t* as_stream(H* h)
{
    return reinterpret_cast<uv_stream_t*>(h);
}

void set_nodelay(uv_tcp_t* tcp) { uv_tcp_nodelay(tcp, 1); }

}  // namespace

std::optional<std::pair<vip::Address, std::uint16_t>> original_destination(int fd)
{
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockopt(fd, SOL_IP, so_original_dst, &ss, &len) == 0 && ss.ss_family == AF_INET) {
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        return std::pair{vip::Address{vip::Family::v4, ntohl(in->sin_addr.s_addr)}, ntohs(in->sin_port)};
    }
    len = sizeof ss;
    if (getsockopt(fd, SOL_IPV6, ip6t_so_original_dst, &ss, &len) == 0 && ss.ss_family == AF_INET6) {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
        auto a = vip::Address::from_bytes(std::string_view(reinterpret_cast<const char*>(&in6->sin6_addr), 16));
        if (a) return std::pair{*a, ntohs(in6->sin6_port)};
    }
    return std::nullopt;
}

// ---- Targets and services ------------------------------------------------------------------

struct Target {
    conf::Endpoint endpoint;
    std::string label;  // "10.0.0.1:443", "example.com", "unix:///run/x.sock"
    std::uint32_t consecutive_failures = 0;
    std::uint64_t connect_failures = 0;
    std::uint64_t ejections = 0;
    std::uint32_t backoff_steps = 0;  // ejections since the last success
    std::uint64_t ejected_until = 0;  // uv_now() ms
    std::size_t next_address = 0;     // DNS names: round robin over the addresses

    bool is_name() const { return endpoint.kind == conf::AddressKind::hostname; }
    bool same_place(const conf::Endpoint& e) const
    {
        return e.address == endpoint.address && e.kind == endpoint.kind && e.port == endpoint.port;
    }
};

struct Listener;

struct Service {
    Route route;
    std::vector<std::shared_ptr<Target>> targets;  // by priority, then as configured
    std::map<std::uint8_t, std::size_t> cursor;      // round robin per priority
    std::vector<Listener*> listeners;
    std::string listen_error;
    std::uint64_t active = 0, total = 0, refused = 0, failed = 0, bytes_up = 0, bytes_down = 0;
    std::shared_ptr<detail::TlsContext> tls;
    std::string tls_error;
    std::map<std::string, std::uint64_t> tls_failures;
    std::uint64_t tls_handshakes = 0, tls_resumed = 0;

    void set_route(Route r)
    {
        bool tls_changed = !(r.tls == route.tls && r.tls_ca_pem == route.tls_ca_pem && r.tls_cert_pem == route.tls_cert_pem &&
                             r.tls_key_pem == route.tls_key_pem && r.protocol == route.protocol && r.tls_error == route.tls_error);
        if (tls_changed || targets.empty()) {
            // A new context (new trust, new certificate) for new connections; open ones keep theirs.
            tls.reset();
            tls_error = r.tls_error;
            if (r.tls && r.tls->enabled && tls_error.empty()) {
                auto made = detail::TlsContext::make(*r.tls, r.protocol, {r.tls_ca_pem, r.tls_cert_pem, r.tls_key_pem});
                if (made) tls = *made;
                else tls_error = made.error();
            }
        }
        std::vector<std::shared_ptr<Target>> next;
        for (const auto& e : r.endpoints) {
            std::shared_ptr<Target> t;
            for (auto& old : targets)
                if (old && old->same_place(e)) {
                    t = old;
                    old.reset();
                    break;
                }
            if (!t) {
                t = std::make_shared<Target>();
                t->label = e.address;
                if (e.kind != conf::AddressKind::unix_socket && e.port) {
                    t->label = e.kind == conf::AddressKind::ipv6 ? "[" + e.address + "]:" + std::to_string(*e.port)
                                                                  : e.address + ":" + std::to_string(*e.port);
                }
            }
            t->endpoint = e;
            next.push_back(std::move(t));
        }
        std::ranges::stable_sort(next, {}, [](const auto& t) { return t->endpoint.priority; });
        targets = std::move(next);
        route = std::move(r);
    }
};

struct Listener {
    uv_tcp_t tcp;
    Proxy::Impl* impl = nullptr;
    std::string service_key;  // bind mode; empty in redirect mode
    std::string address;      // "127.242.0.1:80"
    std::uint16_t port = 0;
};

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
    std::shared_ptr<Target> target;
    bool abandoned = false;  // timed out or the connection went away
};

struct WriteReq {
    uv_write_t req{};
    char* block = nullptr;
    Connection* conn = nullptr;
    bool to_client = false;
};

struct Proxy::Impl {
    uv_loop_t* loop;
    Options options;
    std::map<std::string, std::shared_ptr<Service>> services;
    std::map<std::string, Listener*> listeners;  // bind mode, by address
    Listener* redirect = nullptr;
    std::string redirect_bound;
    // Redirect mode: the services looked up so far, by VIP and port, and by VIP for routes
    // without a port.
    std::map<std::pair<vip::Address, std::uint16_t>, std::string> by_vip_port;
    std::map<vip::Address, std::string> by_vip;
    std::set<Connection*> connections;
    std::unique_ptr<detail::Resolver> resolver;
    BlockPool pool;
    std::uint64_t active = 0, total = 0, refused = 0, unrouted = 0;
    std::uint64_t local_failures = 0;  // connects not even started: no socket to be had
    std::uint64_t mark_failures = 0;   // SO_MARK refused (no CAP_NET_ADMIN)
    AcceptGuard accept_guard;
    std::size_t closing_connections = 0;
    uv_timer_t* retry_timer = nullptr;  // bind mode: listeners that failed are tried again
    bool stopping = false;
    std::function<void()> on_stopped;
    std::size_t closing_listeners = 0;

    std::size_t max_listeners = 0;

    Impl(uv_loop_t* l, Options o) : loop(l), options(std::move(o))
    {
        rlimit nofile{};
        max_listeners = ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY
                            ? static_cast<std::size_t>(nofile.rlim_cur / 2)
                            : std::size_t{1} << 20;
        resolver = std::make_unique<detail::Resolver>(loop, options.resolvers, options.resolve_timeout,
                                                      options.dns_min_ttl, options.dns_max_ttl);
    }

    void accept(Listener* l);
    // Redirect mode: the service for a connection to `address`:`port`, looked up on a miss.
    std::shared_ptr<Service> redirected(const vip::Address& address, std::uint16_t port);
    // Puts `route` in force for `service`; reports TLS settings that became unusable.
    void adopt(Service& service, Route route);
    void index_destinations(const std::string& key, const Route& route);
    void watch_names();
    void close_listener(Listener* l);
    void report_tls_failure(Service& service, const std::string& reason)
    {
        if (++service.tls_failures[reason] == 1 && options.on_tls_failure)
            options.on_tls_failure(service.route.mesh, service.route.name, reason);
    }
    // Bind mode: opens the listeners `service` lacks; false when one could not be opened.
    bool ensure_listeners(const std::string& key, Service& service);
    // While some listener could not be opened, try again every few seconds (the pool's
    // local route may be added later, a port may be freed).
    void arm_retry(bool needed);
    std::string open_listener(const std::string& key, const vip::Address& a, std::uint16_t port);
    void maybe_stopped();
};

struct Connection {
    Proxy::Impl* impl;
    std::shared_ptr<Service> service;
    std::uint16_t dialled_port = 0;
    Side client;
    Side* upstream = nullptr;  // points into `attempt` once connected
    Attempt* attempt = nullptr;
    uv_timer_t timer{};
    bool timer_open = false;
    std::uint32_t attempts = 0;
    std::vector<std::shared_ptr<Target>> tried;  // targets this connection has used up
    // DNS-named targets: the addresses tried, so that each attempt takes another one.
    std::vector<std::pair<std::shared_ptr<Target>, vip::Address>> tried_addresses;
    bool retrying = false;  // every target was tried once: further attempts go round again
    std::uint64_t last_activity = 0;
    bool closing = false;
    int pending_closes = 0;
    std::shared_ptr<bool> alive = std::make_shared<bool>(true);
    // TLS origination: the session over the upstream side, while and after its handshake.
    std::shared_ptr<detail::TlsContext> tls;
    std::shared_ptr<Target> tls_target;
    SSL* ssl = nullptr;
    bool handshaking = false;
    std::unique_ptr<detail::HostRewriter> http;  // protocol: http to a DNS-named endpoint

    explicit Connection(Proxy::Impl* i) : impl(i) {}
    ~Connection()
    {
        if (ssl) SSL_free(ssl);
    }

    Side& other(Side& s) { return &s == &client ? *upstream : client; }

    void start(std::shared_ptr<Service> svc, std::uint16_t port)
    {
        service = std::move(svc);
        dialled_port = port;
        ++service->active;
        ++service->total;
        uv_timer_init(impl->loop, &timer);
        timer.data = this;
        timer_open = true;
        if (!service->tls_error.empty()) {  // never carried in the clear instead
            ++service->failed;
            close(true);
            return;
        }
        try_next();
    }

    // ---- balancing

    bool used_up(const Target& t) const
    {
        return std::ranges::any_of(tried, [&](const auto& x) { return x.get() == &t; });
    }

    Target* pick()
    {
        std::uint64_t now = uv_now(impl->loop);
        auto& targets = service->targets;
        auto usable = [&](const Target& t, bool panic) {
            return (retrying || !used_up(t)) && (panic || t.ejected_until <= now);
        };
        for (bool panic : {false, true}) {
            // The lowest priority with a usable target, then round robin inside it.
            for (std::size_t i = 0; i < targets.size();) {
                std::uint8_t prio = targets[i]->endpoint.priority;
                std::size_t end = i;
                while (end < targets.size() && targets[end]->endpoint.priority == prio) ++end;
                std::size_t count = end - i;
                std::size_t& cur = service->cursor[prio];
                for (std::size_t k = 0; k < count; ++k) {
                    Target* t = targets[i + (cur + k) % count].get();
                    if (usable(*t, panic)) {
                        cur = (cur + k + 1) % count;
                        return t;
                    }
                }
                if (panic) break;  // panic mode: only the lowest priority
                i = end;
            }
        }
        // Everything was tried once and attempts are left: go round again (a single
        // endpoint gets connectAttempts tries, as Envoy's max_connect_attempts gives).
        if (!retrying && !tried.empty()) {
            retrying = true;
            return pick();
        }
        return nullptr;
    }

    // The address of a DNS-named target to try next: IPv4 first (round robin within the
    // family), another address on each attempt, round again once all were tried.
    std::optional<vip::Address> choose_address(const std::shared_ptr<Target>& t, const std::vector<vip::Address>& addrs)
    {
        auto tried_here = [&](const vip::Address& a) {
            return std::ranges::any_of(tried_addresses, [&](const auto& x) { return x.first == t && x.second == a; });
        };
        std::optional<vip::Address> chosen;
        for (auto family : {vip::Family::v4, vip::Family::v6}) {
            std::vector<std::size_t> of_family;
            for (std::size_t i = 0; i < addrs.size(); ++i)
                if (addrs[i].family == family) of_family.push_back(i);
            for (std::size_t k = 0; k < of_family.size() && !chosen; ++k) {
                const auto& a = addrs[of_family[(t->next_address + k) % of_family.size()]];
                if (!tried_here(a)) {
                    chosen = a;
                    t->next_address += k + 1;
                }
            }
            if (chosen) break;
        }
        if (!chosen) chosen = addrs[t->next_address++ % addrs.size()];
        tried_addresses.emplace_back(t, *chosen);
        if (std::ranges::all_of(addrs, tried_here)) tried.push_back(t);
        return chosen;
    }

    void record_failure(Target& t)
    {
        ++t.connect_failures;
        if (++t.consecutive_failures < impl->options.eject_after) return;
        auto base = static_cast<std::uint64_t>(impl->options.eject_base.count());
        auto cap = static_cast<std::uint64_t>(impl->options.eject_max.count());
        std::uint64_t ms = base << std::min<std::uint32_t>(t.backoff_steps, 20);
        t.ejected_until = uv_now(impl->loop) + std::min(ms, cap);
        ++t.backoff_steps;
        ++t.ejections;
        t.consecutive_failures = 0;
    }

    static void record_success(Target& t)
    {
        t.consecutive_failures = 0;
        t.backoff_steps = 0;
        t.ejected_until = 0;
    }

    void try_next()
    {
        if (closing) return;
        Target* t = attempts < impl->options.connect_attempts ? pick() : nullptr;
        if (!t) {
            ++service->failed;
            close(true);
            return;
        }
        ++attempts;
        std::shared_ptr<Target> target;
        for (auto& s : service->targets)
            if (s.get() == t) target = s;
        if (t->endpoint.kind != conf::AddressKind::hostname && !used_up(*t)) tried.push_back(target);
        std::uint16_t port = t->endpoint.port.value_or(dialled_port);
        switch (t->endpoint.kind) {
        case conf::AddressKind::ipv4:
        case conf::AddressKind::ipv6: {
            auto a = vip::Address::parse(t->endpoint.address);
            if (!a) {
                fail(target);
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
            impl->resolver->resolve(t->endpoint.address, [this, token, target, port](const detail::Resolver::Entry& e) {
                if (token.expired() || closing) return;
                if (e.addresses.empty()) {
                    if (!used_up(*target)) tried.push_back(target);
                    fail(target);
                    return;
                }
                connect_tcp(target, to_sockaddr(*choose_address(target, e.addresses), port));
            });
            return;
        }
        }
    }

    void fail(const std::shared_ptr<Target>& t)
    {
        record_failure(*t);
        try_next();
    }

    void arm_connect_timeout()
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
                close_attempt(a);
                self->fail(target);
            },
            static_cast<std::uint64_t>(impl->options.connect_timeout.count()), 0);
    }

    static void close_attempt(Attempt* a)
    {
        a->side.open = false;
        a->side.handle()->data = a;  // reading may have pointed it at the side
        uv_close(a->side.handle(), [](uv_handle_t* h) { delete static_cast<Attempt*>(h->data); });
    }

    void connect_tcp(std::shared_ptr<Target> target, sockaddr_storage addr)
    {
        auto* a = new Attempt;
        a->conn = this;
        a->target = std::move(target);
        a->side.conn = this;
        if (int rc = uv_tcp_init_ex(impl->loop, &a->side.h.tcp, addr.ss_family); rc != 0) {
            // No socket (out of file descriptors): mesd's trouble, not the endpoint's. The
            // handle was never added to the loop, so it is freed here, not closed.
            delete a;
            ++service->failed;
            ++impl->local_failures;
            close(true);
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
                ++impl->mark_failures;
        }
        int rc = uv_tcp_connect(&a->req, &a->side.h.tcp, reinterpret_cast<const sockaddr*>(&addr), on_connect);
        if (rc != 0) {
            attempt = nullptr;
            auto t = a->target;
            close_attempt(a);
            fail(t);
            return;
        }
        // Reading is asked for now, while libuv registers the socket for the connect: once
        // connected it changes the registration once, where asking afterwards costs a failed
        // add and a change. libuv completes the connect before it reads anything.
        start_reading(a->side);
        arm_connect_timeout();
    }

    void connect_unix(std::shared_ptr<Target> target)
    {
        auto* a = new Attempt;
        a->conn = this;
        std::string path(target->endpoint.unix_path());
        a->target = std::move(target);
        a->side.conn = this;
        a->side.is_pipe = true;
        uv_pipe_init(impl->loop, &a->side.h.pipe, 0);
        a->side.h.pipe.data = a;
        a->side.open = true;
        a->req.data = a;
        attempt = a;
        uv_pipe_connect(&a->req, &a->side.h.pipe, path.c_str(), on_connect);
        arm_connect_timeout();
    }

    static void on_connect(uv_connect_t* req, int status)
    {
        auto* a = static_cast<Attempt*>(req->data);
        if (a->abandoned) return;  // timed out or closed; the close callback frees it
        Connection* self = a->conn;
        self->attempt = nullptr;
        uv_timer_stop(&self->timer);
        if (status != 0) {
            auto t = a->target;
            close_attempt(a);
            self->fail(t);
            return;
        }
        self->upstream = &a->side;
        self->attempt = a;  // owns the upstream side from now on
        if (!a->side.is_pipe) set_nodelay(&a->side.h.tcp);
        if (!self->service->tls_error.empty()) {
            // The MES's TLS settings became unusable while this connect was under way (a
            // Secret deleted): refused, never carried in the clear instead.
            ++self->service->failed;
            self->close(true);
            return;
        }
        if (self->service->tls) {
            // The handshake runs under the same connect timeout; the client waits unread.
            self->tls = self->service->tls;
            self->tls_target = a->target;
            const auto& ep = a->target->endpoint;
            bool is_ip = ep.kind == conf::AddressKind::ipv4 || ep.kind == conf::AddressKind::ipv6;
            self->ssl = self->tls->start(ep.address, is_ip, a->target->label);
            if (!self->ssl) {
                self->close(true);
                return;
            }
            self->handshaking = true;
            self->arm_connect_timeout_for_handshake();
            self->start_reading(a->side);
            self->drive_handshake();
            return;
        }
        record_success(*a->target);
        self->start_http(*a->target);
        self->pump();
    }

    void arm_connect_timeout_for_handshake()
    {
        uv_timer_start(
            &timer,
            [](uv_timer_t* h) {
                auto* self = static_cast<Connection*>(h->data);
                if (self->handshaking) self->tls_failed("TLS handshake timed out");
            },
            static_cast<std::uint64_t>(impl->options.connect_timeout.count()), 0);
    }

    // ---- the pump

    void pump()
    {
        last_activity = uv_now(impl->loop);
        arm_idle();
        start_reading(client);
        start_reading(*upstream);
    }

    void arm_idle()
    {
        auto idle = static_cast<std::uint64_t>(impl->options.idle_timeout.count());
        std::uint64_t since = uv_now(impl->loop) - last_activity;
        uv_timer_start(
            &timer,
            [](uv_timer_t* h) {
                auto* self = static_cast<Connection*>(h->data);
                auto limit = static_cast<std::uint64_t>(self->impl->options.idle_timeout.count());
                if (uv_now(self->impl->loop) - self->last_activity >= limit) self->close(false);
                else self->arm_idle();
            },
            since >= idle ? 0 : idle - since, 0);
    }

    void start_reading(Side& s)
    {
        if (s.reading || s.eof || !s.open) return;
        s.reading = true;
        s.paused = false;
        s.handle()->data = &s;
        uv_read_start(s.stream(), on_alloc, on_read);
    }

    void stop_reading(Side& s)
    {
        if (!s.reading) return;
        s.reading = false;
        uv_read_stop(s.stream());
    }

    static void on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf)
    {
        auto* s = static_cast<Side*>(h->data);
        *buf = uv_buf_init(s->conn->impl->pool.take(), static_cast<unsigned>(block_size));
    }

    static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf)
    {
        auto* s = static_cast<Side*>(stream->data);
        Connection* self = s->conn;
        if (nread > 0) {
            self->forward(*s, buf->base, static_cast<std::size_t>(nread));
            return;
        }
        self->impl->pool.give(buf->base);
        if (nread == 0) return;
        if (self->handshaking && s == self->upstream) {
            self->tls_failed(nread == UV_EOF ? "the server closed the connection during the handshake"
                                             : std::string("connection lost during the handshake: ") + uv_strerror(static_cast<int>(nread)));
            return;
        }
        if (nread == UV_EOF) {
            self->half_close(*s);
            return;
        }
        // A reset (or another error) on one side resets the other.
        self->close(nread == UV_ECONNRESET, s);
    }

    void forward(Side& from, char* block, std::size_t size)
    {
        bool to_client = &from != &client;
        last_activity = uv_now(impl->loop);
        if (http && !to_client) {
            service->bytes_up += size;
            std::string out;
            bool ok = http->feed(block, size, out);
            impl->pool.give(block);
            if (!ok) {
                refuse_request();
                return;
            }
            deliver_up(out);
            return;
        }
        if (ssl) {
            if (to_client) {
                BIO_write(SSL_get_rbio(ssl), block, static_cast<int>(size));
                impl->pool.give(block);
                if (handshaking) drive_handshake();
                else read_tls();
            } else {
                service->bytes_up += size;
                int n = SSL_write(ssl, block, static_cast<int>(size));  // into a memory BIO: all or an error
                impl->pool.give(block);
                if (n <= 0) {
                    close(true);
                    return;
                }
                flush_tls();
            }
            return;
        }
        (to_client ? service->bytes_down : service->bytes_up) += size;
        send_block(other(from), from, block, size);
    }

    // Writes `block` (ours until written) to `to`; stops reading `from` while `to` has more
    // than the high watermark queued. False when the connection was closed.
    bool send_block(Side& to, Side& from, char* block, std::size_t size)
    {
        bool to_client = &to == &client;
        std::size_t written = 0;
        if (uv_stream_get_write_queue_size(to.stream()) == 0) {
            uv_buf_t b = uv_buf_init(block, static_cast<unsigned>(size));
            int n = uv_try_write(to.stream(), &b, 1);
            if (n > 0) written = static_cast<std::size_t>(n);
            else if (n != UV_EAGAIN && n != UV_ENOSYS) {
                impl->pool.give(block);
                close(n == UV_ECONNRESET || n == UV_EPIPE, &to);
                return false;
            }
        }
        if (written == size) {
            impl->pool.give(block);
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
            impl->pool.give(block);
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
    void deliver_up(const std::string& out)
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
            char* block = impl->pool.take();
            std::memcpy(block, out.data() + at, n);
            if (!send_block(*upstream, client, block, n)) return;
            at += n;
        }
    }

    // Not HTTP: a 400 to the client, then the connection ends.
    void refuse_request()
    {
        stop_reading(client);
        stop_reading(*upstream);
        const auto& reply = detail::HostRewriter::bad_request();
        char* block = impl->pool.take();
        std::memcpy(block, reply.data(), reply.size());
        if (!send_block(client, *upstream, block, reply.size())) return;
        auto* req = new uv_shutdown_t;
        req->data = this;
        int rc = uv_shutdown(req, client.stream(), [](uv_shutdown_t* r, int) {
            auto* c = static_cast<Connection*>(r->data);
            delete r;
            if (!c->closing) c->close(false);
        });
        if (rc != 0) {
            delete req;
            close(false);
        }
    }

    // protocol: http to a DNS-named endpoint: requests get its hostname as Host.
    void start_http(const Target& target)
    {
        if (service->route.protocol == conf::Protocol::http && target.endpoint.kind == conf::AddressKind::hostname)
            http = std::make_unique<detail::HostRewriter>(target.endpoint.address);
    }

    // ---- TLS to the endpoint

    // Sends what OpenSSL has written (handshake records, application data, alerts).
    bool flush_tls()
    {
        BIO* out = SSL_get_wbio(ssl);
        while (BIO_ctrl_pending(out) > 0) {
            char* block = impl->pool.take();
            int n = BIO_read(out, block, static_cast<int>(block_size));
            if (n <= 0) {
                impl->pool.give(block);
                break;
            }
            if (!send_block(*upstream, client, block, static_cast<std::size_t>(n))) return false;
        }
        return true;
    }

    void drive_handshake()
    {
        int r = SSL_do_handshake(ssl);
        if (!flush_tls()) return;
        if (r != 1) {
            int err = SSL_get_error(ssl, r);
            if (err == SSL_ERROR_WANT_READ) return;
            tls_failed(detail::TlsContext::failure_reason(ssl, err));
            return;
        }
        const auto& ep = tls_target->endpoint;
        bool is_ip = ep.kind == conf::AddressKind::ipv4 || ep.kind == conf::AddressKind::ipv6;
        if (auto why = tls->check_names(ssl, ep.address, is_ip); !why.empty()) {
            tls_failed(why);
            return;
        }
        handshaking = false;
        uv_timer_stop(&timer);
        start_http(*tls_target);
        ++service->tls_handshakes;
        if (SSL_session_reused(ssl)) ++service->tls_resumed;
        record_success(*tls_target);
        pump();
        read_tls();  // records that came with the end of the handshake
    }

    // Plaintext from the endpoint, to the client.
    void read_tls()
    {
        while (!closing) {
            char* block = impl->pool.take();
            int n = SSL_read(ssl, block, static_cast<int>(block_size));
            if (n > 0) {
                service->bytes_down += static_cast<std::size_t>(n);
                if (!send_block(client, *upstream, block, static_cast<std::size_t>(n))) return;
                continue;
            }
            impl->pool.give(block);
            int err = SSL_get_error(ssl, n);
            if (err == SSL_ERROR_WANT_READ) break;
            if (err == SSL_ERROR_ZERO_RETURN) {  // close_notify: the endpoint is done sending
                if (!flush_tls()) return;
                half_close(*upstream);
                return;
            }
            // A renegotiation refused, a bad record: the connection cannot go on.
            impl->report_tls_failure(*service, detail::TlsContext::failure_reason(ssl, err));
            close(true);
            return;
        }
        flush_tls();
    }

    void tls_failed(const std::string& reason)
    {
        impl->report_tls_failure(*service, reason);
        // The attempt failed: its socket goes, the next endpoint is tried.
        auto target = tls_target;
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
        fail(target);
    }

    static void on_write(uv_write_t* req, int status)
    {
        auto* w = static_cast<WriteReq*>(req->data);
        Connection* self = w->conn;
        self->impl->pool.give(w->block);
        bool to_client = w->to_client;
        delete w;
        if (status == UV_ECANCELED || self->closing) return;
        if (status != 0) {
            self->close(status == UV_ECONNRESET || status == UV_EPIPE, to_client ? &self->client : self->upstream);
            return;
        }
        Side& to = to_client ? self->client : *self->upstream;
        Side& from = self->other(to);
        if (from.paused && uv_stream_get_write_queue_size(to.stream()) <= self->impl->options.low_watermark)
            self->start_reading(from);
    }

    // `s` sent FIN: pass it on once what it sent before is written, keep the other way open.
    void half_close(Side& s)
    {
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
    bool shutdown_now(Side& s)
    {
        uv_os_fd_t fd = -1;
        if (uv_fileno(s.handle(), &fd) != 0 || ::shutdown(fd, SHUT_WR) != 0) return false;
        s.shut = true;
        return true;
    }

    // Both sides sent FIN, and what we owe each (queued bytes, a FIN in progress) is out.
    void maybe_done()
    {
        auto settled = [](Side& x) {
            return !(x.shutting && !x.shut) && uv_stream_get_write_queue_size(x.stream()) == 0;
        };
        if (client.eof && upstream && upstream->eof && settled(client) && settled(*upstream)) close(false);
    }

    // Closes both sides (resetting them when `reset`), then frees itself.
    void close(bool reset, Side* reset_by = nullptr)
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
        --impl->active;
        impl->connections.erase(this);
        ++impl->closing_connections;
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

    void closed_one()
    {
        if (--pending_closes == 0) finish();
    }

    void finish()
    {
        Proxy::Impl* i = impl;
        if (upstream) delete attempt;
        delete this;
        --i->closing_connections;
        i->maybe_stopped();
    }
};

// ---- Listeners -----------------------------------------------------------------------------

void Proxy::Impl::accept(Listener* l)
{
    auto* conn = new Connection(this);
    conn->client.conn = conn;
    uv_tcp_init(loop, &conn->client.h.tcp);
    conn->client.open = true;
    conn->client.h.tcp.data = conn;
    bool accepted = uv_accept(as_stream(&l->tcp), as_stream(&conn->client.h.tcp)) == 0;
    if (!accepted || !accept_guard.serving(as_stream(&l->tcp))) {
        if (accepted) ++refused;  // closed unserved: a pause after running out of descriptors
        conn->closing = true;
        conn->client.open = false;
        uv_close(as_handle(&conn->client.h.tcp), [](uv_handle_t* h) { delete static_cast<Connection*>(h->data); });
        return;
    }
    ++active;
    ++total;
    connections.insert(conn);  // TCP_NODELAY comes from the listener (Linux copies it to accepted sockets)

    std::shared_ptr<Service> service;
    std::uint16_t port = l->port;
    if (!l->service_key.empty()) {
        auto it = services.find(l->service_key);
        if (it != services.end()) service = it->second;
    } else {
        uv_os_fd_t fd = -1;
        uv_fileno(as_handle(&conn->client.h.tcp), &fd);
        if (auto dst = original_destination(fd)) {
            port = dst->second;
            service = redirected(dst->first, dst->second);
        }
    }
    if (!service) {
        ++unrouted;
        conn->close(true);
        return;
    }
    bool over = active > options.max_connections ||
                (options.max_connections_per_service && service->active >= options.max_connections_per_service);
    if (over) {
        ++refused;
        ++service->refused;
        conn->close(true);
        return;
    }
    conn->start(std::move(service), port);
}

std::shared_ptr<Service> Proxy::Impl::redirected(const vip::Address& address, std::uint16_t port)
{
    const std::string* key = nullptr;
    if (auto exact = by_vip_port.find({address, port}); exact != by_vip_port.end()) key = &exact->second;
    else if (auto any = by_vip.find(address); any != by_vip.end()) key = &any->second;
    if (key)
        if (auto it = services.find(*key); it != services.end()) return it->second;
    if (!options.find_route) return nullptr;
    auto route = options.find_route(address, port).route;
    if (!route) return nullptr;
    std::string found = route->key();
    auto& service = services[found];
    if (!service) service = std::make_shared<Service>();
    adopt(*service, std::move(*route));
    index_destinations(found, service->route);
    if (std::ranges::any_of(service->route.endpoints, [](const auto& e) { return e.kind == conf::AddressKind::hostname; }))
        watch_names();
    return service;
}

void Proxy::Impl::adopt(Service& service, Route route)
{
    bool fresh = service.route.name.empty();
    if (!fresh && service.route == route && service.targets.empty() == route.endpoints.empty()) return;
    std::string before = service.tls_error;
    service.set_route(std::move(route));
    if (!service.tls_error.empty() && (fresh || service.tls_error != before) && options.on_tls_unusable)
        options.on_tls_unusable(service.route.mesh, service.route.name, service.tls_error);
}

void Proxy::Impl::index_destinations(const std::string& key, const Route& route)
{
    for (const auto& a : {route.ipv4, route.ipv6}) {
        if (!a) continue;
        if (route.port) by_vip_port[{*a, *route.port}] = key;
        else by_vip[*a] = key;
    }
}

void Proxy::Impl::watch_names()
{
    std::set<std::string> names;
    for (const auto& [key, service] : services)
        for (const auto& e : service->route.endpoints)
            if (e.kind == conf::AddressKind::hostname) names.insert(e.address);
    resolver->watch(names);
}

std::string Proxy::Impl::open_listener(const std::string& key, const vip::Address& a, std::uint16_t port)
{
    // Each listener holds a descriptor; half of the open-files limit is kept for the
    // connections themselves (two descriptors each) and everything else mesd opens.
    if (listeners.size() >= max_listeners)
        return "cannot listen on " + host_port(a, port) + ": bind mode already holds " + std::to_string(listeners.size()) +
               " listeners, as many as the open-files limit leaves room for (raise it, e.g. LimitNOFILE, or use "
               "proxy.mode: redirect)";
    auto* l = new Listener;
    l->impl = this;
    l->service_key = key;
    l->address = host_port(a, port);
    l->port = port;
    uv_tcp_init(loop, &l->tcp);
    l->tcp.data = l;
    auto addr = to_sockaddr(a, port);
    int rc = uv_tcp_bind(&l->tcp, reinterpret_cast<const sockaddr*>(&addr), 0);
    if (rc == 0) set_nodelay(&l->tcp);
    if (rc == 0)
        rc = uv_listen(as_stream(&l->tcp), 1024, [](uv_stream_t* s, int status) {
            auto* listener = static_cast<Listener*>(s->data);
            if (status == 0) listener->impl->accept(listener);
            else listener->impl->accept_guard.on_error(s, status);
        });
    if (rc != 0) {
        std::string why = "cannot listen on " + l->address + ": " + uv_strerror(rc);
        if (rc == UV_EADDRNOTAVAIL)
            why += " (the VIP pool is not a local address here: route it locally, e.g. ip route add local " +
                   std::string(a.family == vip::Family::v4 ? "242.0.0.0/8" : "fd00:fd02::/64") + " dev lo)";
        uv_close(as_handle(&l->tcp), [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
        return why;
    }
    listeners[l->address] = l;
    services[key]->listeners.push_back(l);
    return {};
}

bool Proxy::Impl::ensure_listeners(const std::string& key, Service& service)
{
    const Route& route = service.route;
    std::vector<vip::Address> vips;
    if (route.ipv4) vips.push_back(*route.ipv4);
    if (route.ipv6) vips.push_back(*route.ipv6);
    if (!route.port) {
        service.listen_error = "match.port is not set: bind mode listens on one port per VIP (use proxy.mode: redirect)";
        return true;  // nothing a retry would change
    }
    if (vips.empty()) {
        service.listen_error = "no VIP";
        return true;
    }
    std::string errors;
    for (const auto& a : vips) {
        auto addr = host_port(a, *route.port);
        if (std::ranges::any_of(service.listeners, [&](Listener* l) { return l->address == addr; })) continue;
        if (auto err = open_listener(key, a, *route.port); !err.empty()) errors += (errors.empty() ? "" : "; ") + err;
    }
    service.listen_error = errors;
    return errors.empty();
}

void Proxy::Impl::arm_retry(bool needed)
{
    if (!retry_timer) {
        retry_timer = new uv_timer_t;
        uv_timer_init(loop, retry_timer);
        retry_timer->data = this;
        uv_unref(as_handle(retry_timer));
    }
    if (!needed || stopping) {
        uv_timer_stop(retry_timer);
        return;
    }
    if (uv_is_active(as_handle(retry_timer))) return;
    uv_timer_start(
        retry_timer,
        [](uv_timer_t* t) {
            auto* self = static_cast<Proxy::Impl*>(t->data);
            bool failed = false;
            for (auto& [key, service] : self->services) failed |= !self->ensure_listeners(key, *service);
            self->arm_retry(failed);
        },
        listen_retry_ms, 0);
}

void Proxy::Impl::close_listener(Listener* l)
{
    ++closing_listeners;
    uv_close(as_handle(&l->tcp), [](uv_handle_t* h) {
        auto* self = static_cast<Listener*>(h->data);
        Proxy::Impl* impl = self->impl;
        delete self;
        --impl->closing_listeners;
        impl->maybe_stopped();
    });
}

void Proxy::Impl::maybe_stopped()
{
    if (!stopping || !connections.empty() || closing_connections != 0 || closing_listeners != 0 || !on_stopped) return;
    auto done = std::move(on_stopped);
    on_stopped = nullptr;
    done();
}

// ---- Proxy ---------------------------------------------------------------------------------

Proxy::Proxy(void* uv_loop, Options options)
    : impl_(std::make_unique<Impl>(static_cast<uv_loop_t*>(uv_loop), std::move(options)))
{
}

Proxy::~Proxy() = default;

std::expected<void, std::string> Proxy::start()
{
    auto& i = *impl_;
    if (i.options.mode != Options::Mode::redirect) return {};
    auto* l = new Listener;
    l->impl = &i;
    uv_tcp_init(i.loop, &l->tcp);
    l->tcp.data = l;
    const auto& hp = i.options.redirect_listen;
    auto parsed = vip::Address::parse(hp.host.empty() ? "0.0.0.0" : hp.host);
    if (!parsed) {
        delete l;
        return std::unexpected("proxy.redirectListen: not an address: " + hp.host);
    }
    auto addr = to_sockaddr(*parsed, hp.port);
    int rc = uv_tcp_bind(&l->tcp, reinterpret_cast<const sockaddr*>(&addr), 0);
    if (rc == 0) set_nodelay(&l->tcp);
    if (rc == 0)
        rc = uv_listen(as_stream(&l->tcp), 4096, [](uv_stream_t* s, int status) {
            auto* listener = static_cast<Listener*>(s->data);
            if (status == 0) listener->impl->accept(listener);
            else listener->impl->accept_guard.on_error(s, status);
        });
    if (rc != 0) {
        uv_close(as_handle(&l->tcp), [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
        return std::unexpected("cannot listen on " + hp.to_string() + ": " + uv_strerror(rc));
    }
    sockaddr_storage bound{};
    int len = sizeof bound;
    uv_tcp_getsockname(&l->tcp, reinterpret_cast<sockaddr*>(&bound), &len);
    std::uint16_t port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                                     : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    i.redirect_bound = host_port(*parsed, port);
    i.redirect = l;
    return {};
}

std::string Proxy::bound() const { return impl_->redirect_bound; }

void Proxy::update(std::vector<Route> routes)
{
    auto& i = *impl_;
    if (i.stopping || i.options.mode != Options::Mode::bind) return;
    // Routes and services are walked side by side in key order: one pass, no second map
    // (100,000 MES are a common size for a store).
    std::vector<std::pair<std::string, Route>> next;
    next.reserve(routes.size());
    for (auto& r : routes) {
        std::string key = r.key();
        next.emplace_back(std::move(key), std::move(r));
    }
    std::ranges::sort(next, {}, &std::pair<std::string, Route>::first);

    auto drop = [&](std::map<std::string, std::shared_ptr<Service>>::iterator it) {
        // Gone: stop accepting; open connections keep their Service alive.
        for (Listener* l : it->second->listeners) {
            i.listeners.erase(l->address);
            i.close_listener(l);
        }
        it->second->listeners.clear();
        return i.services.erase(it);
    };

    auto it = i.services.begin();
    for (auto& [key, route] : next) {
        while (it != i.services.end() && it->first < key) it = drop(it);
        if (it == i.services.end() || it->first != key) it = i.services.emplace_hint(it, key, std::make_shared<Service>());
        Service& service = *it->second;
        ++it;
        i.adopt(service, std::move(route));
        const Route& current = service.route;
        // Listeners this route no longer wants close now; new ones open below,
        // once every route has let go of its old addresses (one may take over another's).
        std::vector<std::string> wanted;
        if (current.port)
            for (const auto& a : {current.ipv4, current.ipv6})
                if (a) wanted.push_back(host_port(*a, *current.port));
        for (auto l = service.listeners.begin(); l != service.listeners.end();) {
            if (std::ranges::find(wanted, (*l)->address) != wanted.end()) {
                ++l;
                continue;
            }
            i.listeners.erase((*l)->address);
            i.close_listener(*l);
            l = service.listeners.erase(l);
        }
    }
    while (it != i.services.end()) it = drop(it);

    bool failed = false;
    for (auto& [key, service] : i.services) failed |= !i.ensure_listeners(key, *service);
    i.arm_retry(failed);
    i.watch_names();
}

void Proxy::reload()
{
    auto& i = *impl_;
    if (i.stopping || i.options.mode != Options::Mode::redirect) return;
    i.by_vip_port.clear();
    i.by_vip.clear();
    for (auto it = i.services.begin(); it != i.services.end();) {
        Service& service = *it->second;
        auto found = i.options.find_named_route ? i.options.find_named_route(service.route.mesh, service.route.name)
                                                : Options::Lookup{};
        if (found.failed) {  // unreadable for now: keep what it was, health and counters too
            i.index_destinations(it->first, service.route);
            ++it;
            continue;
        }
        if (!found.route) {
            it = i.services.erase(it);  // open connections keep their Service alive
            continue;
        }
        i.adopt(service, std::move(*found.route));
        i.index_destinations(it->first, service.route);
        ++it;
    }
    i.watch_names();
}

void Proxy::stop(std::function<void()> done)
{
    auto& i = *impl_;
    i.stopping = true;
    i.on_stopped = std::move(done);
    for (auto& [key, l] : i.listeners) i.close_listener(l);
    i.listeners.clear();
    for (auto& [key, s] : i.services) s->listeners.clear();
    if (i.redirect) {
        i.close_listener(i.redirect);
        i.redirect = nullptr;
    }
    i.resolver->stop();
    if (i.retry_timer) {
        uv_timer_stop(i.retry_timer);
        uv_close(as_handle(i.retry_timer), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
        i.retry_timer = nullptr;
    }
    auto open = i.connections;
    for (Connection* c : open) c->close(false);
    i.maybe_stopped();
}

std::vector<Proxy::Problem> Proxy::problems() const
{
    std::vector<Problem> out;
    for (const auto& [key, s] : impl_->services)
        if (!s->listen_error.empty()) out.push_back({s->route.mesh, s->route.name, s->listen_error});
    return out;
}

Status Proxy::status() const
{
    const auto& i = *impl_;
    Status st;
    st.active = i.active;
    st.total = i.total;
    st.refused = i.refused;
    st.unrouted = i.unrouted;
    st.local_failures = i.local_failures;
    st.mark_failures = i.mark_failures;
    st.accept_errors = i.accept_guard.errors();
    std::uint64_t now = uv_now(i.loop);
    for (const auto& [key, s] : i.services) {
        ServiceStatus ss;
        ss.mesh = s->route.mesh;
        ss.name = s->route.name;
        for (Listener* l : s->listeners) ss.listeners.push_back(l->address);
        ss.listen_error = s->listen_error;
        ss.active = s->active;
        ss.total = s->total;
        ss.refused = s->refused;
        ss.failed = s->failed;
        ss.bytes_up = s->bytes_up;
        ss.bytes_down = s->bytes_down;
        ss.tls_error = s->tls_error;
        ss.tls_failures = s->tls_failures;
        ss.tls_handshakes = s->tls_handshakes;
        ss.tls_resumed = s->tls_resumed;
        for (const auto& t : s->targets) {
            TargetStatus ts;
            ts.address = t->label;
            ts.priority = t->endpoint.priority;
            ts.consecutive_failures = t->consecutive_failures;
            ts.connect_failures = t->connect_failures;
            ts.ejections = t->ejections;
            if (t->ejected_until > now) ts.state = "ejected";
            else if (t->consecutive_failures > 0) ts.state = "failing";
            else ts.state = "healthy";
            if (t->is_name()) {
                const auto* e = i.resolver->find(t->endpoint.address);
                if (e)
                    for (const auto& a : e->addresses) ts.resolved.push_back(a.to_string());
                if (!e || e->addresses.empty()) ts.state = "unresolved";
            }
            ss.targets.push_back(std::move(ts));
        }
        st.services.push_back(std::move(ss));
    }
    return st;
}

}  // namespace proxy
