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
#include <mutex>
#include <shared_mutex>
#include <utility>

namespace proxy {

// ---- The shared state and the control loop -------------------------------------------------

Proxy::Impl::Impl(uv_loop_t* l, Options o) : loop(l), options(std::move(o))
{
    resolver_shared = std::make_shared<detail::ResolverShared>(
        options.hosts_file, [this](bool warn, std::string message, detail::NameEvents::Fields fields) {
            event({warn ? Options::Event::Level::warn : Options::Event::Level::info, std::move(message), std::move(fields)});
        });
    rlimit nofile{};
    max_listeners = ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY
                        ? static_cast<std::size_t>(nofile.rlim_cur / 2)
                        : std::size_t{1} << 20;
    threaded = !options.workers.empty();
    if (!threaded) {
        shards.push_back(std::make_unique<Shard>(this, nullptr, loop, options));
        return;
    }
    // The workers' threads have not started: their loops may be set up from here.
    for (workers::Worker* w : options.workers) shards.push_back(std::make_unique<Shard>(this, w, w->loop(), options));
    accept_guard = std::make_unique<AcceptGuard>();
    inbox_async = new uv_async_t;
    uv_async_init(loop, inbox_async, [](uv_async_t* a) { static_cast<Proxy::Impl*>(a->data)->drain_inbox(); });
    inbox_async->data = this;
    uv_unref(as_handle(inbox_async));  // holds the control loop open only while stopping
    inbox_open = true;
}

Proxy::Impl::~Impl()
{
    if (inbox_async) {  // never stopped: the handle goes, what it would have run does not
        inbox_async->data = nullptr;
        uv_close(as_handle(inbox_async), [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
    }
}

void Proxy::Impl::on_control(std::function<void()> fn)
{
    if (!threaded) {
        fn();
        return;
    }
    std::lock_guard lock(inbox_mutex);
    if (!inbox_open) return;
    inbox.push_back(std::move(fn));
    uv_async_send(inbox_async);
}

void Proxy::Impl::drain_inbox() noexcept
{
    std::vector<std::function<void()>> work;
    {
        std::lock_guard lock(inbox_mutex);
        work.swap(inbox);
    }
    for (auto& fn : work) fn();
}

void Proxy::Impl::adopt(Service& service, Route route)
{
    auto change = service.set_route(std::move(route));
    if (!change.changed || change.tls_error.empty() || (!change.fresh && change.tls_error == change.tls_error_before)) return;
    if (!options.on_tls_unusable) return;
    auto routing = service.current();
    on_control([this, mesh = routing->route.mesh, name = routing->route.name, why = change.tls_error] {
        options.on_tls_unusable(mesh, name, why);
    });
}

void Proxy::Impl::report_tls_failure(Service& service, const std::string& reason)
{
    std::shared_ptr<const Routing> routing;
    {
        std::lock_guard lock(service.mutex);
        if (++service.tls_failures[reason] != 1) return;
        routing = service.routing;
    }
    if (!options.on_tls_failure || !routing) return;
    on_control([this, mesh = routing->route.mesh, name = routing->route.name, reason] { options.on_tls_failure(mesh, name, reason); });
}

void Proxy::Impl::event(Options::Event e)
{
    if (!options.on_event) return;
    on_control([this, e = std::move(e)] { options.on_event(e); });
}

void Proxy::Impl::watch_names()
{
    std::lock_guard order(watch_mutex);
    std::set<std::string> names;
    {
        std::shared_lock lock(services_mutex);
        for (const auto& [key, service] : services)
            if (auto routing = service->current())
                for (const auto& e : routing->route.endpoints)
                    if (e.kind == conf::AddressKind::hostname) names.insert(e.address);
    }
    for (auto& shard : shards) shard->run([s = shard.get(), names] { s->resolver->watch(names); });
}

void Proxy::Impl::maybe_stopped()
{
    if (!stopping || shards_running != 0 || closing_listeners != 0 || closing_checks != 0 || !on_stopped) return;
    auto done = std::move(on_stopped);
    on_stopped = nullptr;
    if (!threaded) {
        done();
        return;
    }
    // Every loop has closed what it had: the inbox goes too, then `done`.
    {
        std::lock_guard lock(inbox_mutex);
        inbox_open = false;
    }
    after_inbox_closed = std::move(done);
    uv_async_t* async = std::exchange(inbox_async, nullptr);
    uv_close(as_handle(async), [](uv_handle_t* h) {
        auto* self = static_cast<Proxy::Impl*>(h->data);
        delete reinterpret_cast<uv_async_t*>(h);
        auto d = std::move(self->after_inbox_closed);
        self->after_inbox_closed = nullptr;
        d();
    });
}

// ---- A loop's share --------------------------------------------------------------------------

void Shard::stop()
{
    stopping = true;
    if (redirect) {
        close_listener(redirect);
        redirect = nullptr;
    }
    resolver->stop();
    auto open = connections;
    for (Connection* c : open) c->close(false);
    if (access_log) access_log->close();  // the lines of the connections just closed too
    maybe_stopped();
}

void Shard::maybe_stopped()
{
    if (!stopping || stopped || !connections.empty() || closing_connections != 0 || closing_listeners != 0) return;
    stopped = true;
    impl->on_control([i = impl] {
        --i->shards_running;
        i->maybe_stopped();
    });
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
    auto start_checks = [&i] {
        i.checker = std::make_unique<HealthChecker>(i);
        i.checker->start();
    };
    if (i.options.mode != Options::Mode::redirect) {
        start_checks();
        return {};
    }
    const auto& hp = i.options.redirect_listen;
    auto parsed = vip::Address::parse(hp.host.empty() ? "0.0.0.0" : hp.host);
    if (!parsed) return std::unexpected("proxy.redirectListen: not an address: " + hp.host);
    // One listener per loop; with port 0 the first gets one and the others take the same.
    std::uint16_t port = hp.port;
    for (auto& shard : i.shards) {
        auto opened = i.open_redirect_listener(*shard, *parsed, port);
        if (!opened) {
            for (auto& s : i.shards)
                if (s->redirect) {
                    uv_close(s->redirect->handle(), [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
                    s->redirect = nullptr;
                }
            return std::unexpected("cannot listen on " + hp.to_string() + ": " + opened.error());
        }
        port = *opened;
    }
    i.redirect_bound = host_port(*parsed, port);
    start_checks();
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

    {
        // Bind mode: only this thread reads or changes the services map (workers get the
        // services they need with each connection), so no lock is taken.
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
            auto routing = service.current();
            const Route& current = routing->route;
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
    }

    bool failed = false;
    for (auto& [key, service] : i.services) failed |= !i.ensure_listeners(key, *service);
    i.arm_retry(failed);
    i.watch_names();
}

void Proxy::reload()
{
    auto& i = *impl_;
    if (i.stopping || i.options.mode != Options::Mode::redirect) return;
    // The lookups run without the lock: workers go on finding the services they know.
    std::vector<std::pair<std::string, std::shared_ptr<Service>>> known;
    {
        std::shared_lock lock(i.services_mutex);
        known.assign(i.services.begin(), i.services.end());
    }
    std::vector<std::pair<std::string, std::shared_ptr<Service>>> gone;
    for (auto& [key, service] : known) {
        auto routing = service->current();
        if (!routing) continue;  // being looked up by a worker right now
        auto found = i.options.find_named_route ? i.options.find_named_route(routing->route.mesh, routing->route.name)
                                                : Options::Lookup{};
        if (found.failed) continue;  // unreadable for now: keep what it was, health and counters too
        if (!found.route) {
            gone.emplace_back(key, service);
            continue;
        }
        i.adopt(*service, std::move(*found.route));
    }
    {
        std::unique_lock lock(i.services_mutex);
        for (auto& [key, service] : gone)  // open connections keep their Service alive
            if (auto it = i.services.find(key); it != i.services.end() && it->second == service) i.services.erase(it);
        i.by_vip_port.clear();
        i.by_vip.clear();
        for (const auto& [key, service] : i.services)
            if (auto routing = service->current()) i.index_destinations(key, routing->route);
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
    if (i.control_log) i.control_log->close();
    {
        std::unique_lock lock(i.services_mutex);
        for (auto& [key, s] : i.services) s->listeners.clear();
    }
    if (i.retry_timer) {
        uv_timer_stop(i.retry_timer);
        uv_close(as_handle(i.retry_timer), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
        i.retry_timer = nullptr;
    }
    if (i.checker) i.checker->stop();
    if (i.inbox_async) uv_ref(as_handle(i.inbox_async));  // the workers' reports must arrive
    i.shards_running = i.shards.size();
    for (auto& shard : i.shards) shard->run([s = shard.get()] { s->stop(); });
    i.maybe_stopped();
}

std::vector<Proxy::Problem> Proxy::problems() const
{
    std::vector<Problem> out;
    std::shared_lock lock(impl_->services_mutex);
    for (const auto& [key, s] : impl_->services)
        if (!s->listen_error.empty())
            if (auto routing = s->current()) out.push_back({routing->route.mesh, routing->route.name, s->listen_error});
    return out;
}

namespace {

AddressStatus address_status(const AddressHealth& h, std::uint64_t now)
{
    AddressStatus as;
    as.state = h.ejected(now) ? "ejected" : h.check_down ? "unhealthy" : h.consecutive_failures > 0 ? "failing" : "healthy";
    as.consecutive_failures = h.consecutive_failures;
    as.connect_failures = h.connect_failures;
    as.handshake_failures = h.handshake_failures;
    as.ejections = h.ejections;
    as.last_failure = rfc3339(h.last_failure);
    as.last_failure_reason = h.last_failure_reason;
    if (h.last_check) as.check = h.check_down || h.checks_failed_in_row > 0 ? "failing" : "passing";
    as.checks_passed = h.checks_passed;
    as.checks_failed = h.checks_failed;
    as.last_check = rfc3339(h.last_check);
    as.last_check_error = h.last_check_error;
    return as;
}

}  // namespace

Status Proxy::status() const
{
    const auto& i = *impl_;
    Status st;
    st.active = i.active;
    st.refused = i.refused;
    st.accept_errors = i.accept_guard ? i.accept_guard->errors() : 0;
    st.access_log_write_errors = i.access_log ? i.access_log->dropped_writes() : 0;
    for (const auto& shard : i.shards) {
        st.total += shard->total;
        st.refused += shard->refused;
        st.unrouted += shard->unrouted;
        st.local_failures += shard->local_failures;
        st.mark_failures += shard->mark_failures;
        st.accept_errors += shard->accept_guard.errors();
        if (shard->worker) st.workers.push_back({shard->active, shard->total});
    }
    std::uint64_t now = now_ms();
    std::shared_lock lock(i.services_mutex);
    for (const auto& [key, s] : i.services) {
        std::shared_ptr<const Routing> routing;
        std::map<std::string, std::uint64_t> tls_failures;
        std::vector<Health> health;
        {
            std::lock_guard service_lock(s->mutex);
            routing = s->routing;
            tls_failures = s->tls_failures;
            if (routing)
                for (const auto& t : routing->targets) health.push_back(*t->health);
        }
        if (!routing) continue;  // being looked up by a worker right now
        ServiceStatus ss;
        ss.mesh = routing->route.mesh;
        ss.name = routing->route.name;
        for (Listener* l : s->listeners) ss.listeners.push_back(l->address);
        ss.listen_error = s->listen_error;
        ss.active = s->active;
        ss.total = s->total;
        ss.refused = s->refused;
        ss.failed = s->failed;
        ss.bytes_up = s->bytes_up;
        ss.bytes_down = s->bytes_down;
        ss.tls_error = routing->tls_error;
        ss.tls_failures = std::move(tls_failures);
        ss.tls_handshakes = s->tls_handshakes;
        ss.tls_resumed = s->tls_resumed;
        for (const auto& e : s->endpoint_stats.all()) {
            AddressTraffic as;
            as.endpoint = e->endpoint;
            as.address = e->address;
            as.active = e->active.load(std::memory_order_relaxed);
            as.bytes_up = e->bytes_up.load(std::memory_order_relaxed);
            as.bytes_down = e->bytes_down.load(std::memory_order_relaxed);
            as.connect = {e->connect.cumulative(), static_cast<double>(e->connect.sum_us()) / 1e6};
            as.tls_handshake = {e->tls_handshake.cumulative(), static_cast<double>(e->tls_handshake.sum_us()) / 1e6};
            ss.traffic.push_back(std::move(as));
        }
        bool checked = i.checker && i.checker->enabled_for(*routing);
        for (std::size_t k = 0; k < routing->targets.size(); ++k) {
            const Target& t = *routing->targets[k];
            const Health& h = health[k];
            TargetStatus ts;
            ts.address = t.label;
            ts.priority = t.endpoint.priority;
            ts.health_checked = checked;
            if (!t.is_name()) {
                AddressStatus one = address_status(h.self, now);
                ts.state = one.state;
                ts.consecutive_failures = one.consecutive_failures;
                ts.connect_failures = one.connect_failures;
                ts.handshake_failures = one.handshake_failures;
                ts.ejections = one.ejections;
                ts.last_failure = one.last_failure;
                ts.last_failure_reason = one.last_failure_reason;
                ts.check = one.check;
                ts.checks_passed = one.checks_passed;
                ts.checks_failed = one.checks_failed;
                ss.targets.push_back(std::move(ts));
                continue;
            }
            // A DNS name sums up its addresses: ejected when none takes connections,
            // failing when some does not, its counts those of every address it has had.
            ts.connect_failures = h.gone_connect_failures;
            ts.handshake_failures = h.gone_handshake_failures;
            ts.ejections = h.gone_ejections;
            ts.checks_passed = h.gone_checks_passed;
            ts.checks_failed = h.gone_checks_failed;
            std::int64_t last = 0;
            std::size_t usable = 0, troubled = 0;
            std::uint16_t port = t.endpoint.port.value_or(routing->route.port.value_or(0));
            for (const auto& [a, ah] : h.addresses) {
                AddressStatus as = address_status(ah, now);
                as.address = host_port(a, port);
                ts.consecutive_failures = std::max(ts.consecutive_failures, ah.consecutive_failures);
                ts.connect_failures += ah.connect_failures;
                ts.handshake_failures += ah.handshake_failures;
                ts.ejections += ah.ejections;
                ts.checks_passed += ah.checks_passed;
                ts.checks_failed += ah.checks_failed;
                if (ah.last_failure > last) {
                    last = ah.last_failure;
                    ts.last_failure = as.last_failure;
                    ts.last_failure_reason = ah.last_failure_reason;
                }
                if (as.check == "failing" || (as.check == "passing" && ts.check.empty())) ts.check = as.check;
                if (ah.usable(now)) ++usable;
                if (as.state != "healthy") ++troubled;
                ts.addresses.push_back(std::move(as));
            }
            ts.state = !h.addresses.empty() && usable == 0 ? "ejected" : troubled > 0 ? "failing" : "healthy";
            // Each loop resolves for itself: the addresses any of them uses.
            for (const auto& shard : i.shards)
                for (const auto& a : shard->resolver->addresses(t.endpoint.address))
                    if (std::string text = a.to_string(); std::ranges::find(ts.resolved, text) == ts.resolved.end())
                        ts.resolved.push_back(std::move(text));
            if (ts.resolved.empty()) ts.state = "unresolved";
            ss.targets.push_back(std::move(ts));
        }
        st.services.push_back(std::move(ss));
    }
    return st;
}

void Proxy::set_timeouts(std::chrono::milliseconds connect_timeout, std::chrono::milliseconds idle_timeout)
{
    for (auto& shard : impl_->shards) {
        Shard* s = shard.get();
        s->run([s, connect_timeout, idle_timeout] {
            s->connect_timeout = connect_timeout;
            s->idle_timeout = idle_timeout;
        });
    }
}

}  // namespace proxy
