#include "proxy/detail/listeners.hpp"

#include "proxy/detail/impl.hpp"
#include "proxy/detail/sockets.hpp"

#include <uv.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>

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

void Proxy::Impl::index_destinations(const std::string& key, const Route& route)
{
    for (const auto& a : {route.ipv4, route.ipv6}) {
        if (!a) continue;
        if (route.port) by_vip_port[{*a, *route.port}] = key;
        else by_vip[*a] = key;
    }
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

}  // namespace proxy
