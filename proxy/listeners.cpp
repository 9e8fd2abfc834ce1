#include "proxy/detail/listeners.hpp"

#include "proxy/detail/impl.hpp"
#include "proxy/detail/sockets.hpp"

#include <uv.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <shared_mutex>
#include <utility>

namespace proxy {

namespace {

// getsockopt names from <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>,
// whose other contents clash with the libc headers.
constexpr int so_original_dst = 80;
constexpr int ip6t_so_original_dst = 80;

constexpr std::uint64_t listen_retry_ms = 5000;

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

// ---- Accepting -----------------------------------------------------------------------------

void Shard::accept(Listener* l)
{
    auto* conn = new Connection(impl, this);
    conn->client.conn = conn;
    uv_tcp_init(loop, &conn->client.h.tcp);
    conn->client.open = true;
    conn->client.h.tcp.data = conn;
    bool accepted = uv_accept(as_stream(&l->h.tcp), as_stream(&conn->client.h.tcp)) == 0;
    if (!accepted || !accept_guard.serving(as_stream(&l->h.tcp))) {
        if (accepted) ++refused;  // closed unserved: a pause after running out of descriptors
        conn->closing = true;
        conn->client.open = false;
        uv_close(as_handle(&conn->client.h.tcp), [](uv_handle_t* h) { delete static_cast<Connection*>(h->data); });
        return;
    }
    std::shared_ptr<Service> service;
    std::uint16_t port = l->port;
    if (!l->service_key.empty()) {
        std::shared_lock lock(impl->services_mutex);
        auto it = impl->services.find(l->service_key);
        if (it != impl->services.end()) service = it->second;
    } else {
        uv_os_fd_t fd = -1;
        uv_fileno(as_handle(&conn->client.h.tcp), &fd);
        if (auto dst = original_destination(fd)) {
            port = dst->second;
            if (impl->access_log) conn->dialled_vip = host_port(dst->first, dst->second);
            service = impl->redirected(dst->first, dst->second);
        }
    }
    admit(conn, std::move(service), port);  // TCP_NODELAY comes from the listener (Linux copies it to accepted sockets)
}

void Shard::take(int fd, std::shared_ptr<Service> service, std::uint16_t port)
{
    --assigned;
    auto* conn = new Connection(impl, this);
    conn->client.conn = conn;
    uv_tcp_init(loop, &conn->client.h.tcp);
    conn->client.h.tcp.data = conn;
    if (stopping || uv_tcp_open(&conn->client.h.tcp, fd) != 0) {
        ::close(fd);
        ++refused;
        conn->closing = true;
        uv_close(as_handle(&conn->client.h.tcp), [](uv_handle_t* h) { delete static_cast<Connection*>(h->data); });
        return;
    }
    conn->client.open = true;
    admit(conn, std::move(service), port);
}

void Shard::admit(Connection* conn, std::shared_ptr<Service> service, std::uint16_t port)
{
    ++impl->active;
    ++active;
    ++total;
    connections.insert(conn);
    conn->opened(service.get());
    if (!service) {
        ++unrouted;
        conn->end_by(detail::end_reason::no_route);
        conn->close(true);
        return;
    }
    // Both limits are counts every loop shares: the connection is counted first, then
    // compared, so that two loops admitting at once cannot both take the last place.
    bool over = impl->active > impl->options.max_connections;
    bool over_service = false;
    if (!over) {
        std::uint64_t before = service->active.fetch_increment();
        if (impl->options.max_connections_per_service && before >= impl->options.max_connections_per_service) {
            --service->active;
            over_service = true;
        }
    }
    if (over || over_service) {
        ++refused;
        ++service->refused;
        conn->end_by(detail::end_reason::refused_limit);
        // Over its MES's limit, an HTTP client is told (503). Over maxConnections, which
        // bounds mesd's descriptors, every client is reset at once: an answer would hold the
        // descriptor a while longer.
        if (over_service) conn->give_up(detail::Unreachable::overflow, service.get());
        else conn->close(true);
        return;
    }
    conn->start(std::move(service), port);
}

namespace {

// A descriptor on its way to a worker: closed if the work never runs (the worker finished).
struct Descriptor {
    int fd;
    explicit Descriptor(int f) : fd(f) {}
    ~Descriptor()
    {
        if (fd >= 0) ::close(fd);
    }
    Descriptor(const Descriptor&) = delete;
    Descriptor& operator=(const Descriptor&) = delete;
    int release() { return std::exchange(fd, -1); }
};

// Accepts per wake-up of one listener, so that a flood on one VIP leaves the others a turn.
constexpr int accepts_per_turn = 64;

}  // namespace

void Proxy::Impl::accept_polled(Listener* l) noexcept
{
    std::shared_ptr<Service> service;
    {
        std::shared_lock lock(services_mutex);
        if (auto it = services.find(l->service_key); it != services.end()) service = it->second;
    }
    for (int n = 0; n < accepts_per_turn; ++n) {
        int fd = ::accept4(l->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EINTR || err == ECONNABORTED) continue;
            accept_guard->on_error(loop, l->fd, uv_translate_sys_error(err));  // EAGAIN: nothing left
            return;
        }
        if (!accept_guard->serving(loop)) {
            ::close(fd);
            ++refused;
            continue;
        }
        // Descriptors on their way to a worker count against maxConnections already: a flood
        // accepted faster than the workers take it up must not run the process out of
        // descriptors before any worker has compared it with the limit.
        std::uint64_t on_their_way = 0;
        for (const auto& s : shards) on_their_way += s->assigned.load();
        if (active.load() + on_their_way >= options.max_connections) {
            // Reset, as a connection over a limit is on a worker: the client sees at once that
            // it was refused rather than an empty reply.
            linger reset{1, 0};
            ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
            log_refused(fd, service.get());
            ::close(fd);
            ++refused;
            if (service) ++service->refused;
            continue;
        }
        Shard& shard = least_busy();
        ++shard.assigned;
        auto socket = std::make_shared<Descriptor>(fd);
        shard.worker->post([s = &shard, socket, service, port = l->port] { s->take(socket->release(), service, port); });
    }
}

Shard& Proxy::Impl::least_busy()
{
    std::size_t n = shards.size();
    std::size_t best = next_shard % n;
    std::uint64_t best_load = UINT64_MAX;
    for (std::size_t k = 0; k < n; ++k) {
        std::size_t at = (next_shard + k) % n;
        const Shard& s = *shards[at];
        std::uint64_t load = s.active.load() + s.assigned.load();
        if (load < best_load) {
            best = at;
            best_load = load;
        }
    }
    next_shard = best + 1;
    return *shards[best];
}

std::shared_ptr<Service> Proxy::Impl::redirected(const vip::Address& address, std::uint16_t port)
{
    {
        std::shared_lock lock(services_mutex);
        const std::string* key = nullptr;
        if (auto exact = by_vip_port.find({address, port}); exact != by_vip_port.end()) key = &exact->second;
        else if (auto any = by_vip.find(address); any != by_vip.end()) key = &any->second;
        if (key)
            if (auto it = services.find(*key); it != services.end()) return it->second;
    }
    // A miss: the route is read without the lock (another loop may read it at the same
    // time; both put the same route in force).
    if (!options.find_route) return nullptr;
    auto route = options.find_route(address, port).route;
    if (!route) return nullptr;
    std::string found = route->key();
    std::shared_ptr<Service> service;
    {
        std::unique_lock lock(services_mutex);
        auto& slot = services[found];
        if (!slot) slot = std::make_shared<Service>();
        service = slot;
    }
    adopt(*service, std::move(*route));
    auto routing = service->current();
    {
        std::unique_lock lock(services_mutex);
        if (auto it = services.find(found); it != services.end() && it->second == service) index_destinations(found, routing->route);
    }
    if (std::ranges::any_of(routing->route.endpoints, [](const auto& e) { return e.kind == conf::AddressKind::hostname; }))
        watch_names();
    return service;
}

void Proxy::Impl::index_destinations(const std::string& key, const Route& route)
{
    for (const auto& a : {route.ipv4, route.ipv6}) {
        if (!a) continue;
        if (route.port) by_vip_port[{*a, *route.port}] = key;
        else by_vip[*a] = key;
    }
}

// ---- Listeners -----------------------------------------------------------------------------

namespace {

void on_connection(uv_stream_t* s, int status) noexcept
{
    auto* listener = static_cast<Listener*>(s->data);
    if (status == 0) listener->shard->accept(listener);
    else listener->shard->accept_guard.on_error(s, status);
}

// A listening socket of our own, for a polled listener: as uv_tcp_bind and uv_listen make
// theirs (SO_REUSEADDR), with TCP_NODELAY for the accepted sockets to inherit.
int listening_socket(const sockaddr_storage& addr, int backlog, int& fd)
{
    fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return uv_translate_sys_error(errno);
    int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    socklen_t len = addr.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0 || ::listen(fd, backlog) != 0) {
        int rc = uv_translate_sys_error(errno);
        ::close(fd);
        fd = -1;
        return rc;
    }
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    return 0;
}

}  // namespace

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
    auto addr = to_sockaddr(a, port);
    int rc = 0;
    if (threaded) {
        // One socket for every worker: the control loop accepts and hands each connection on.
        l->polled = true;
        rc = listening_socket(addr, 1024, l->fd);
        if (rc == 0 && (rc = uv_poll_init_socket(loop, &l->h.poll, l->fd)) != 0) {
            ::close(l->fd);
            l->fd = -1;
        }
        if (rc == 0) {
            l->h.poll.data = l;
            uv_poll_start(&l->h.poll, UV_READABLE, [](uv_poll_t* p, int status, int) {
                if (status == 0) {
                    auto* listener = static_cast<Listener*>(p->data);
                    listener->impl->accept_polled(listener);
                }
            });
        }
    } else {
        l->shard = shards.front().get();
        uv_tcp_init(loop, &l->h.tcp);
        l->h.tcp.data = l;
        rc = uv_tcp_bind(&l->h.tcp, reinterpret_cast<const sockaddr*>(&addr), 0);
        if (rc == 0) set_nodelay(&l->h.tcp);
        if (rc == 0) rc = uv_listen(as_stream(&l->h.tcp), 1024, on_connection);
    }
    if (rc != 0) {
        std::string why = "cannot listen on " + l->address + ": " + uv_strerror(rc);
        if (rc == UV_EADDRNOTAVAIL)
            why += " (the VIP pool is not a local address here: route it locally, e.g. ip route add local " +
                   std::string(a.family == vip::Family::v4 ? "242.0.0.0/8" : "fd00:fd02::/64") + " dev lo)";
        if (l->polled) delete l;  // no handle was made
        else uv_close(as_handle(&l->h.tcp), [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
        return why;
    }
    listeners[l->address] = l;
    services[key]->listeners.push_back(l);
    return {};
}

std::expected<std::uint16_t, std::string> Proxy::Impl::open_redirect_listener(Shard& shard, const vip::Address& a,
                                                                               std::uint16_t port)
{
    auto* l = new Listener;
    l->impl = this;
    l->shard = &shard;
    l->redirect = true;
    auto addr = to_sockaddr(a, port);
    int rc = uv_tcp_init_ex(shard.loop, &l->h.tcp, addr.ss_family);
    if (rc != 0) {
        delete l;  // never added to the loop
        return std::unexpected(std::string(uv_strerror(rc)));
    }
    l->h.tcp.data = l;
    if (threaded) {
        // Every loop listens on the same address; the kernel spreads the connections.
        uv_os_fd_t fd = -1;
        int on = 1;
        if (uv_fileno(as_handle(&l->h.tcp), &fd) != 0 || ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0)
            rc = uv_translate_sys_error(errno);
    }
    if (rc == 0) rc = uv_tcp_bind(&l->h.tcp, reinterpret_cast<const sockaddr*>(&addr), 0);
    if (rc == 0) set_nodelay(&l->h.tcp);
    if (rc == 0) rc = uv_listen(as_stream(&l->h.tcp), 4096, on_connection);
    if (rc != 0) {
        uv_close(as_handle(&l->h.tcp), [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
        return std::unexpected(std::string(uv_strerror(rc)));
    }
    sockaddr_storage bound{};
    int len = sizeof bound;
    uv_tcp_getsockname(&l->h.tcp, reinterpret_cast<sockaddr*>(&bound), &len);
    shard.redirect = l;
    return bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                       : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
}

bool Proxy::Impl::ensure_listeners(const std::string& key, Service& service)
{
    auto routing = service.current();
    const Route& route = routing->route;
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

// A listener of the control loop (bind mode's).
void Proxy::Impl::close_listener(Listener* l)
{
    ++closing_listeners;
    if (l->polled) uv_poll_stop(&l->h.poll);
    uv_close(l->handle(), [](uv_handle_t* h) {
        auto* self = static_cast<Listener*>(h->data);
        Proxy::Impl* impl = self->impl;
        if (self->fd >= 0) ::close(self->fd);  // a polled socket outlives its handle
        delete self;
        --impl->closing_listeners;
        impl->maybe_stopped();
    });
}

// Redirect mode's listener on this loop.
void Shard::close_listener(Listener* l)
{
    ++closing_listeners;
    uv_close(l->handle(), [](uv_handle_t* h) {
        auto* self = static_cast<Listener*>(h->data);
        Shard* shard = self->shard;
        delete self;
        --shard->closing_listeners;
        shard->maybe_stopped();
    });
}

}  // namespace proxy
