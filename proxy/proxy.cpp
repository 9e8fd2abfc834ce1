// The proxy's I/O on libuv: listeners, balancing over targets with ejection, connect
// attempts with a timeout, and the byte pump. Every handle belongs to one object that frees
// itself in its last close callback; callbacks that may outlive their connection (a DNS
// lookup) hold a weak token and do nothing once it has expired.
#include "proxy/proxy.hpp"

#include "proxy/detail/impl.hpp"
#include "proxy/detail/sockets.hpp"

#include <uv.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>

namespace proxy {

void Proxy::Impl::adopt(Service& service, Route route)
{
    bool fresh = service.route.name.empty();
    if (!fresh && service.route == route && service.targets.empty() == route.endpoints.empty()) return;
    std::string before = service.tls_error;
    service.set_route(std::move(route));
    if (!service.tls_error.empty() && (fresh || service.tls_error != before) && options.on_tls_unusable)
        options.on_tls_unusable(service.route.mesh, service.route.name, service.tls_error);
}

void Proxy::Impl::watch_names()
{
    std::set<std::string> names;
    for (const auto& [key, service] : services)
        for (const auto& e : service->route.endpoints)
            if (e.kind == conf::AddressKind::hostname) names.insert(e.address);
    resolver->watch(names);
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
