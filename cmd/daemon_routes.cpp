// The proxy's routes: listed whole on a worker thread in bind mode, looked up one at a time
// in redirect mode.
#include "cmd/daemon.hpp"

#include <malloc.h>

#include <algorithm>

namespace cmd {

// The proxy's routes: every MES of the served meshes, with its VIPs.
// Routes are built on a worker thread from a snapshot of its own: listing 100,000 MES takes
// about a second, during which DNS answers must go on. The proxy takes them on the loop.
void Daemon::update_routes()
{
    if (!proxy_ || stopping_) return;
    if (config_.proxy.mode == "redirect") {
        // Nothing to list: the proxy looks up the few routes connections use.
        proxy_->reload();
        became_ready();
        return;
    }
    if (routes_building_) {
        routes_stale_ = true;  // built again once this one is in
        return;
    }
    routes_building_ = true;
    struct Build {
        uv_work_t req{};
        Daemon* daemon = nullptr;
        std::vector<proxy::Route> routes;
        std::string error;
        std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
    };
    auto* build = new Build;
    build->daemon = this;
    build->req.data = build;
    uv_queue_work(
        &loop_, &build->req,
        [](uv_work_t* req) {
            auto* b = static_cast<Build*>(req->data);
            b->error = b->daemon->build_routes(b->routes);
        },
        [](uv_work_t* req, int) {
            std::unique_ptr<Build> b(static_cast<Build*>(req->data));
            Daemon* d = b->daemon;
            d->routes_building_ = false;
            if (d->stopping_) return;
            if (!b->error.empty()) {
                ++d->store_errors_;
                log::error("proxy", "cannot read the routes", {{"error", b->error}});
            } else {
                d->store_->unmap_pages();  // the listing walked every record
                d->apply_routes(std::move(b->routes), b->started);
            }
            d->became_ready();
            if (d->routes_stale_) {
                d->routes_stale_ = false;
                d->update_routes();
            }
        });
}

namespace {

// A MES as the proxy sees it, with the PEM behind its TLS data sources.
proxy::Route route_of(const store::Snapshot& snap, const store::Entry& e)
{
    const auto* mes = e.resource.mes();
    proxy::Route r;
    r.mesh = e.resource.mesh;
    r.name = e.resource.name;
    r.ipv4 = e.status.ipv4;
    r.ipv6 = e.status.ipv6;
    r.port = mes->port;
    r.protocol = mes->protocol;
    r.endpoints = mes->endpoints;
    // mesd.io/health-check: "true" or "false" turns active checks on or off for this MES
    // alone; another value leaves it to proxy.healthCheck.
    if (auto it = e.resource.labels.find("mesd.io/health-check"); it != e.resource.labels.end()) {
        if (it->second == "true") r.health_check = true;
        else if (it->second == "false") r.health_check = false;
    }
    if (mes->tls && mes->tls->enabled) {
        r.tls = mes->tls;
        // A Secret that is missing makes the MES refuse connections rather than carry them in
        // the clear.
        auto read = [&](const std::optional<conf::DataSource>& ds, const char* field, std::string& out) {
            if (!ds) return;
            if (ds->type != conf::DataSource::Type::secret) {
                out = ds->value;
                return;
            }
            auto secret = snap.get(conf::Kind::secret, e.resource.mesh, ds->value);
            if (secret && *secret && (*secret)->resource.secret()) out = (*secret)->resource.secret()->data;
            else if (r.tls_error.empty()) r.tls_error = std::string("tls.") + field + ": Secret " + ds->value + " not found";
        };
        read(mes->tls->ca_cert, "verification.caCert", r.tls_ca_pem);
        read(mes->tls->client_cert, "verification.clientCert", r.tls_cert_pem);
        read(mes->tls->client_key, "verification.clientKey", r.tls_key_pem);
    }
    return r;
}

}  // namespace

// Every MES of the served meshes as a route. Runs on a worker thread: it reads only the store
// (through a snapshot of its own) and config_.
std::string Daemon::build_routes(std::vector<proxy::Route>& routes) const
{
    auto snapshot = store_->snapshot();
    if (!snapshot) return snapshot.error().message;
    for (const auto& mesh : config_.meshes) {
        auto list = snapshot->list(conf::Kind::mesh_external_service, std::string_view(mesh));
        if (!list) return list.error().message;
        for (auto& e : *list)
            if (e.resource.mes()) routes.push_back(route_of(*snapshot, e));
    }
    return {};
}

// Redirect mode: a MES of a served mesh, read when the proxy first needs it (by name, or by
// the VIP and port a connection was made to). Read through the DNS side's snapshot, renewed
// at each store change, so that no further read transaction is opened on the loop.
proxy::Options::Lookup Daemon::find_route(const std::string& mesh, const std::string& name,
                                          std::optional<std::uint16_t> port)
{
    if (!workers_.empty()) {
        // On a worker's thread: source_'s snapshot is the control loop's; read through one of
        // this lookup's own.
        auto own = store_->snapshot();
        if (!own) return lookup_failed(own.error().message);
        return served_route(*own, mesh, name, port);
    }
    const auto* snapshot = source_.snapshot();
    if (!snapshot) return lookup_failed("no store snapshot");
    return served_route(*snapshot, mesh, name, port);
}

proxy::Options::Lookup Daemon::find_route(const vip::Address& address, std::uint16_t port)
{
    std::optional<store::Snapshot> own;
    const store::Snapshot* snapshot = nullptr;
    if (!workers_.empty()) {
        // On a worker's thread, as above.
        auto opened = store_->snapshot();
        if (!opened) return lookup_failed(opened.error().message);
        own.emplace(std::move(*opened));
        snapshot = &*own;
    } else {
        snapshot = source_.snapshot();
    }
    if (!snapshot) return lookup_failed("no store snapshot");
    auto owner = snapshot->owner_of(address);
    if (!owner) return lookup_failed(owner.error().message);
    if (!*owner) return {};
    return served_route(*snapshot, (*owner)->mesh, (*owner)->name, port);
}

proxy::Options::Lookup Daemon::served_route(const store::Snapshot& snapshot, const std::string& mesh,
                                            const std::string& name, std::optional<std::uint16_t> port)
{
    if (std::ranges::find(config_.meshes, mesh) == config_.meshes.end()) return {};
    auto entry = snapshot.get(conf::Kind::mesh_external_service, mesh, name);
    if (!entry) return lookup_failed(entry.error().message);
    if (!*entry || !(*entry)->resource.mes()) return {};
    auto route = route_of(snapshot, **entry);
    if (port && route.port && *route.port != *port) return {};
    return {std::move(route), false};
}

// Counted each time, logged when the reason changes (a store that cannot be read would
// otherwise log once per connection).
proxy::Options::Lookup Daemon::lookup_failed(const std::string& why)
{
    ++store_errors_;
    std::lock_guard lock(lookup_mutex_);
    if (why != last_lookup_error_) log::error("proxy", "cannot read a route", {{"error", why}});
    last_lookup_error_ = why;
    return {std::nullopt, true};
}

// A lookup that read the store ends the failure last logged: the same failure after it is
// logged again.
proxy::Options::Lookup Daemon::after_lookup(proxy::Options::Lookup lookup)
{
    std::lock_guard lock(lookup_mutex_);
    if (!lookup.failed) last_lookup_error_.clear();
    return lookup;
}

void Daemon::apply_routes(std::vector<proxy::Route> routes, std::chrono::steady_clock::time_point started)
{
    auto listed = std::chrono::steady_clock::now();
    proxy_->update(std::move(routes));
    // The listing's records were freed on the worker thread's malloc arena; hand the pages back.
    malloc_trim(0);
    auto updated = std::chrono::steady_clock::now();
    using ms = std::chrono::milliseconds;
    log::debug("proxy", "routes updated",
               {{"build_ms", std::to_string(std::chrono::duration_cast<ms>(listed - started).count())},
                {"update_ms", std::to_string(std::chrono::duration_cast<ms>(updated - listed).count())}});
    std::map<std::string, std::string> errors;
    // One line per MES that stops or starts listening, up to a few; then a count (a store of
    // 100,000 MES over the descriptor limit must not log 100,000 lines at each change).
    constexpr std::size_t logged_at_most = 10;
    std::size_t not_listening = 0, listening_again = 0;
    for (const auto& p : proxy_->problems()) {
        std::string key = p.mesh + "/" + p.name;
        errors[key] = p.listen_error;
        auto before = listen_errors_.find(key);
        if ((before == listen_errors_.end() || before->second != p.listen_error) && ++not_listening <= logged_at_most)
            log::warn("proxy", "not listening", {{"mesh", p.mesh}, {"name", p.name}, {"reason", p.listen_error}});
    }
    for (const auto& [key, error] : listen_errors_) {
        if (errors.contains(key)) continue;
        auto slash = key.find('/');
        if (++listening_again <= logged_at_most)
            log::info("proxy", "listening", {{"mesh", key.substr(0, slash)}, {"name", key.substr(slash + 1)}});
    }
    if (not_listening > logged_at_most)
        log::warn("proxy", "not listening", {{"more", std::to_string(not_listening - logged_at_most)},
                                             {"see", "/config listenError"}});
    if (listening_again > logged_at_most)
        log::info("proxy", "listening", {{"more", std::to_string(listening_again - logged_at_most)}});
    listen_errors_ = std::move(errors);
}

}  // namespace cmd
