// mesd: the daemon. Answers DNS for generated hostnames from the store, forwards the rest,
// follows store changes (from mesctl or --conf-dir) without a restart, and serves the admin
// endpoint. SIGTERM or SIGINT closes the listeners, lets in-flight work finish and exits 0.
#include "cmd/admin.hpp"
#include "cmd/log.hpp"
#include "cmd/output.hpp"
#include "conf/conf.hpp"
#include "dns/dns.hpp"
#include "proxy/proxy.hpp"
#include "store/cluster.hpp"
#include "store/store.hpp"

#include <uv.h>

#include <malloc.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

namespace log = cmd::log;

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;
constexpr std::uint64_t store_poll_ms = 200;  // store changes show within this (DESIGN: 1 s)
// The conf dir is looked at this often, and read once it has looked the same twice in a row:
// a burst of changes (a ConfigMap update, an rsync) is read once, after it.
constexpr std::uint64_t conf_dir_poll_ms = 500;
// Passes of one read of the conf dir before it is left for the next look: a read counts
// once two passes in a row saw the same bytes.
constexpr int conf_dir_max_passes = 4;
// Reader slots of dead processes are freed this often (and whenever a read finds none free):
// a check reads the table and asks the kernel, by fcntl lock, which holders are alive.
constexpr auto stale_readers_check_interval = std::chrono::seconds(5);

constexpr std::string_view usage_text =
    "usage: mesd [--config FILE] [--data-dir DIR] [--dns-listen ADDR:PORT]... [--admin-listen ADDR:PORT]\n"
    "            [--conf-dir DIR [--conf-dir-follow-links]] [--log-level debug|info|warn|error]\n"
    "            [--allow-core-dumps] [--etcd-endpoints URL,...] [--node-name NAME]\n"
    "\n"
    "Answers DNS for MeshExternalService hostnames and forwards other names upstream.\n"
    "The configuration file is --config FILE, else $MESD_CONFIG, else the built-in defaults;\n"
    "flags override it. --conf-dir applies a directory of resource YAML at start and whenever\n"
    "it changes (deleting what it no longer names); a bad file keeps the last good state.\n"
    "Links in it that lead out of it are an error unless --conf-dir-follow-links.\n"
    "--etcd-endpoints (or a `cluster` section) runs mesd as a node of a cluster: it mirrors\n"
    "the resources held in etcd into its store and keeps serving from that copy when etcd\n"
    "is away; --node-name names it there (default: the host name).\n"
    "Core dumps are off (the process holds TLS keys and Secrets); --allow-core-dumps turns\n"
    "them back on for debugging.\n";

struct Flags {
    std::optional<std::string> config;
    std::optional<std::string> data_dir;
    std::vector<std::string> dns_listen;
    std::optional<std::string> admin_listen;
    std::optional<std::string> conf_dir;
    std::optional<std::string> log_level;
    std::optional<std::string> etcd_endpoints;
    std::optional<std::string> node_name;
    bool allow_core_dumps = false;
    bool conf_dir_follow_links = false;
};

std::optional<std::string> parse_flags(int argc, char** argv, Flags& f)
{
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        std::string value;
        auto eq = arg.find('=');
        std::string name = arg.substr(0, eq);
        auto take = [&]() -> std::optional<std::string> {
            if (eq != std::string::npos) return arg.substr(eq + 1);
            if (i + 1 >= argc) return std::nullopt;
            return std::string(argv[++i]);
        };
        std::optional<std::string> v;
        if (name == "--config") v = f.config = take();
        else if (name == "--data-dir") v = f.data_dir = take();
        else if (name == "--admin-listen") v = f.admin_listen = take();
        else if (name == "--conf-dir") v = f.conf_dir = take();
        else if (name == "--log-level") v = f.log_level = take();
        else if (name == "--etcd-endpoints") v = f.etcd_endpoints = take();
        else if (name == "--node-name") v = f.node_name = take();
        else if (arg == "--conf-dir-follow-links") {
            f.conf_dir_follow_links = true;
            continue;
        }
        else if (name == "--dns-listen") {
            v = take();
            if (v) f.dns_listen.push_back(*v);
        } else if (name == "--allow-core-dumps") {
            f.allow_core_dumps = true;
            continue;
        } else if (name == "--help" || name == "-h") {
            std::cout << usage_text;
            std::exit(exit_ok);
        } else {
            return "unknown option " + arg;
        }
        if (!v) return name + " needs a value";
    }
    return std::nullopt;
}

// What a directory of YAML looks like now: names, sizes and times of its files.
std::string fingerprint(const std::string& dir)
{
    namespace fs = std::filesystem;
    std::string out;
    std::error_code ec;
    std::vector<std::string> lines;
    for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const auto& e = *it;
        // Kubernetes' `..data` and `..<timestamp>` entries: the visible links show their changes.
        if (auto name = e.path().filename().string(); !name.empty() && name.front() == '.') {
            it.disable_recursion_pending();
            continue;
        }
        auto ext = e.path().extension().string();
        if (!e.is_regular_file(ec) || (ext != ".yaml" && ext != ".yml")) continue;
        auto t = fs::last_write_time(e.path(), ec).time_since_epoch().count();
        lines.push_back(e.path().string() + " " + std::to_string(e.file_size(ec)) + " " + std::to_string(t));
    }
    std::sort(lines.begin(), lines.end());
    for (const auto& l : lines) out += l + "\n";
    return out + (ec ? "error " + ec.message() : "");
}

class Daemon {
public:
    Daemon(conf::Config config, std::unique_ptr<store::Store> store, std::optional<std::string> conf_dir,
           bool conf_dir_follow_links)
        : config_(std::move(config)), store_(std::move(store)), conf_dir_(std::move(conf_dir)),
          source_(*store_, config_.meshes), responder_(dns_settings())
    {
        uv_loop_init(&loop_);
        conf_options_.follow_outside_links = conf_dir_follow_links;
    }
    ~Daemon() { uv_loop_close(&loop_); }

    int run();

private:
    dns::Settings dns_settings() const
    {
        dns::Settings s;
        s.zones = config_.dns.zones;
        s.ttl = static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(config_.dns.ttl).count());
        s.negative_ttl =
            static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(config_.dns.negative_ttl).count());
        s.edns_udp_size = config_.dns.edns_udp_size;
        return s;
    }
    store::WriteOptions write_options() const
    {
        store::WriteOptions o;
        o.pools = store::Pools::from(config_);
        return o;
    }
    bool refresh();
    void update_routes();
    std::string build_routes(std::vector<proxy::Route>& routes) const;
    void apply_routes(std::vector<proxy::Route> routes, std::chrono::steady_clock::time_point started);
    proxy::Options::Lookup find_route(const std::string& mesh, const std::string& name, std::optional<std::uint16_t> port);
    proxy::Options::Lookup find_route(const vip::Address& address, std::uint16_t port);
    proxy::Options::Lookup served_route(const store::Snapshot& snapshot, const std::string& mesh, const std::string& name,
                                        std::optional<std::uint16_t> port);
    proxy::Options::Lookup lookup_failed(const std::string& why);
    proxy::Options::Lookup after_lookup(proxy::Options::Lookup lookup);
    void became_ready();
    proxy::Options proxy_options(const std::vector<conf::HostPort>& dns_upstreams);
    void look_at_conf_dir();
    bool apply_conf_dir(conf::LoadResult result, std::optional<store::Result<store::WriteReport>> written = {},
                        std::chrono::milliseconds write_took = {});
    void shutdown(const char* why);
    cmd::HttpReply admin(const std::string& path);
    std::string metrics_text();
    std::string config_json();

    conf::Config config_;
    std::unique_ptr<store::Store> store_;
    std::optional<std::string> conf_dir_;
    conf::LoadOptions conf_options_;
    dns::StoreSource source_;
    dns::Responder responder_;
    uv_loop_t loop_{};
    std::unique_ptr<dns::Server> server_;
    std::unique_ptr<proxy::Proxy> proxy_;
    std::map<std::string, std::string> listen_errors_;  // logged once per change
    std::string last_lookup_error_;  // redirect mode: the failure logged, until a lookup succeeds
    bool routes_building_ = false;  // a worker thread is listing the MES
    bool routes_stale_ = false;     // the store moved meanwhile: list them again
    std::unique_ptr<cmd::Admin> admin_;
    uv_timer_t store_timer_{};
    uv_timer_t conf_timer_{};
    uv_signal_t sigterm_{};
    uv_signal_t sigint_{};
    bool ready_ = false;
    bool stopping_ = false;
    std::string conf_seen_;     // the conf dir's fingerprint at the last look
    std::string conf_applied_;  // ... when it was last read whole (applied or refused)
    bool conf_reading_ = false; // a worker thread is reading it
    std::optional<conf::LoadResult> conf_pending_;  // read, waiting for the routes' listing to end
    std::uint64_t conf_dir_torn_reads_ = 0;
    std::uint64_t conf_dir_errors_ = 0;
    std::uint64_t conf_dir_applies_ = 0;
    std::uint64_t store_errors_ = 0;
    std::string store_error_;  // why the last read of the store failed; empty once one succeeds
    std::chrono::steady_clock::time_point readers_checked_{};
    // Cluster mode: the wake-up the mirror's threads send when the store changed, and the
    // mirror itself, declared last so that it stops before what its threads use goes.
    uv_async_t mirror_changed_{};
    std::mutex mirror_changed_mutex_;  // the handle may be signalled only while open
    bool mirror_changed_open_ = false;
    std::unique_ptr<store::cluster::Mirror> mirror_;
    std::string cluster_ready_text() const;
    bool cluster_store_usable();
    void start_mirror();
    std::uint64_t stale_readers_cleared_ = 0;
};

bool Daemon::refresh()
{
    auto started = std::chrono::steady_clock::now();
    // A `mesctl get` killed mid-read keeps its reader slot while mesd holds the store open;
    // enough of them and no one can read it, and their old snapshots pin pages that the
    // store then grows past. A failing read frees them too; this keeps them from piling up.
    if (started - readers_checked_ >= stale_readers_check_interval) {
        readers_checked_ = started;
        if (auto cleared = store_->clear_stale_readers(); cleared > 0) {
            stale_readers_cleared_ += cleared;
            log::warn("store", "cleared the reader slots of dead processes", {{"slots", std::to_string(cleared)}});
        }
    }
    auto moved = source_.refresh();
    if (!moved && moved.error().map_resized && source_.index()) {
        // Another process grew the map while a read or write of ours (the conf dir's, off the
        // loop) was open: the index stays, and the next poll takes the new size. Nothing is
        // wrong with the store.
        log::debug("store", "store map grown elsewhere; read again at the next poll");
        return true;
    }
    if (!moved) {
        ++store_errors_;
        // Polled every store_poll_ms: logged once per reason. The index last built stays in
        // use (its answers were right when the store was last readable), but mesd is not
        // ready until the store reads again.
        if (moved.error().message != store_error_)
            log::error("store", "cannot read the store",
                       {{"error", moved.error().message},
                        {"data_dir", config_.data_dir},
                        {"serving", source_.index() ? "the last good index" : "nothing"}});
        store_error_ = moved.error().message;
        return false;
    }
    if (!store_error_.empty()) log::info("store", "the store can be read again", {{"data_dir", config_.data_dir}});
    store_error_.clear();
    if (*moved)
        log::debug("store", "store changed",
                   {{"generation", std::to_string(source_.generation())},
                    {"names", std::to_string(source_.index()->names())},
                    {"index_bytes", std::to_string(source_.index()->bytes())},
                    {"took_ms", std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                   std::chrono::steady_clock::now() - started).count())}});
    if (*moved) update_routes();
    return true;
}

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

void Daemon::became_ready()
{
    if (ready_) return;
    ready_ = true;
    log::info("daemon", "ready", {{"generation", std::to_string(source_.generation())}, {"data_dir", config_.data_dir}});
}

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
    const auto* snapshot = source_.snapshot();
    if (!snapshot) return lookup_failed("no store snapshot");
    return served_route(*snapshot, mesh, name, port);
}

proxy::Options::Lookup Daemon::find_route(const vip::Address& address, std::uint16_t port)
{
    const auto* snapshot = source_.snapshot();
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
    if (why != last_lookup_error_) log::error("proxy", "cannot read a route", {{"error", why}});
    last_lookup_error_ = why;
    return {std::nullopt, true};
}

// A lookup that read the store ends the failure last logged: the same failure after it is
// logged again.
proxy::Options::Lookup Daemon::after_lookup(proxy::Options::Lookup lookup)
{
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

proxy::Options Daemon::proxy_options(const std::vector<conf::HostPort>& dns_upstreams)
{
    const auto& c = config_.proxy;
    proxy::Options o;
    o.mode = c.mode == "redirect" ? proxy::Options::Mode::redirect : proxy::Options::Mode::bind;
    o.redirect_listen = c.redirect_listen;
    using std::chrono::duration_cast;
    using ms = std::chrono::milliseconds;
    o.connect_timeout = duration_cast<ms>(c.connect_timeout);
    o.idle_timeout = duration_cast<ms>(c.idle_timeout);
    o.max_connections = c.max_connections;
    o.max_connections_per_service = c.max_connections_per_service;
    o.connect_attempts = c.connect_attempts;
    o.upstream_mark = c.upstream_mark;
    o.eject_after = c.eject_after;
    o.eject_base = duration_cast<ms>(c.eject_base);
    o.eject_max = duration_cast<ms>(c.eject_max);
    o.resolvers = !c.resolvers.empty() ? c.resolvers : dns_upstreams;
    o.resolve_timeout = duration_cast<ms>(c.resolve_timeout);
    o.dns_min_ttl = duration_cast<ms>(c.dns_min_ttl);
    o.dns_max_ttl = duration_cast<ms>(c.dns_max_ttl);
    o.on_tls_failure = [](const std::string& mesh, const std::string& name, const std::string& reason) {
        log::warn("proxy", "TLS handshake failed", {{"mesh", mesh}, {"name", name}, {"reason", reason}});
    };
    o.on_tls_unusable = [](const std::string& mesh, const std::string& name, const std::string& reason) {
        log::warn("proxy", "TLS settings unusable; refusing connections", {{"mesh", mesh}, {"name", name}, {"reason", reason}});
    };
    o.find_route = [this](const vip::Address& address, std::uint16_t port) { return after_lookup(find_route(address, port)); };
    o.find_named_route = [this](const std::string& mesh, const std::string& name) {
        return after_lookup(find_route(mesh, name, std::nullopt));
    };
    return o;
}

namespace {

// Reads the conf dir until two passes in a row see the same bytes, then parses what they saw.
// A pass racing a change (a `..data` flip, an editor's rename) differs from the next and is
// dropped, so a half-old, half-new view, in which names of both versions may be missing,
// is never applied and never prunes. Empty when the directory kept changing.
std::optional<conf::LoadResult> read_conf_dir(const std::string& dir, const conf::LoadOptions& options)
{
    std::vector<std::string> paths{dir};
    auto previous = conf::read_sources(paths, options);
    for (int pass = 2; pass <= conf_dir_max_passes; ++pass) {
        auto next = conf::read_sources(paths, options);
        if (next.same_as(previous)) return conf::load_sources(next, options);
        previous = std::move(next);
    }
    return std::nullopt;
}

}  // namespace

// Looks at the conf dir on a worker thread and, once a change has settled, reads, parses and
// writes it there too, in one transaction: 50,000 MES take seconds to parse and 20,000 a
// quarter of a second to write, and DNS is answered on the loop meanwhile (LMDB readers do not
// wait for a writer). Only a write that must grow the map is done on the loop, where no read
// is open while it grows.
void Daemon::look_at_conf_dir()
{
    if (stopping_) return;
    if (conf_pending_) {
        // No write while the routes are listed on a worker thread: a write may have to grow
        // the map, which LMDB allows only with no read open in this process.
        if (routes_building_) return;
        auto result = std::move(*conf_pending_);
        conf_pending_.reset();
        apply_conf_dir(std::move(result));
        return;
    }
    if (conf_reading_) return;
    conf_reading_ = true;
    struct Look {
        uv_work_t req{};
        Daemon* daemon = nullptr;
        std::string dir;
        conf::LoadOptions options;
        std::string seen, applied;  // in: the last look's fingerprint, the last read's
        store::Store* store = nullptr;
        store::WriteOptions write;
        std::string fingerprint;    // out
        bool read = false;
        std::optional<conf::LoadResult> result;
        std::optional<store::Result<store::WriteReport>> written;  // when the result was valid
        std::chrono::milliseconds write_took{};
    };
    auto* look = new Look;
    look->daemon = this;
    look->dir = *conf_dir_;
    look->options = conf_options_;
    look->options.now = std::chrono::system_clock::now();  // for certificate expiry
    look->seen = conf_seen_;
    look->applied = conf_applied_;
    look->store = store_.get();
    look->write = write_options();
    look->write.prune = true;
    look->write.grow_map = false;
    look->req.data = look;
    uv_queue_work(
        &loop_, &look->req,
        [](uv_work_t* req) {
            auto* l = static_cast<Look*>(req->data);
            l->fingerprint = fingerprint(l->dir);
            // Read once it looks the same as at the last look: a burst is read after it ends.
            if (l->fingerprint == l->applied || l->fingerprint != l->seen) return;
            l->read = true;
            l->result = read_conf_dir(l->dir, l->options);
            if (!l->result || !l->result->ok()) return;
            std::vector<conf::Resource> resources;
            resources.reserve(l->result->documents.size());
            for (const auto& doc : l->result->documents) resources.push_back(doc.resource);
            auto started = std::chrono::steady_clock::now();
            l->written = l->store->apply(resources, l->write);
            l->write_took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
        },
        [](uv_work_t* req, int) noexcept {
            std::unique_ptr<Look> l(static_cast<Look*>(req->data));
            Daemon* d = l->daemon;
            d->conf_reading_ = false;
            if (d->stopping_) return;
            if (l->fingerprint != d->conf_seen_ && l->fingerprint != d->conf_applied_)
                log::info("confd", "directory changed", {{"dir", l->dir}});
            d->conf_seen_ = l->fingerprint;
            if (!l->read) return;
            if (!l->result) {
                ++d->conf_dir_torn_reads_;
                log::info("confd", "directory changed while read; reading it again",
                          {{"dir", l->dir}, {"passes", std::to_string(conf_dir_max_passes)}});
                return;
            }
            d->conf_applied_ = l->fingerprint;
            try {
                if (l->written && !*l->written && l->written->error().map_full) {
                    d->conf_pending_ = std::move(l->result);  // written on the loop, growing the map
                    d->look_at_conf_dir();
                } else {
                    d->apply_conf_dir(std::move(*l->result), std::move(l->written), l->write_took);
                }
            } catch (const std::exception& e) {
                ++d->conf_dir_errors_;
                log::error("confd", "apply failed; keeping the last good state", {{"error", e.what()}});
            }
        });
}

bool Daemon::apply_conf_dir(conf::LoadResult result, std::optional<store::Result<store::WriteReport>> written,
                            std::chrono::milliseconds write_took)
{
    for (const auto& d : result.file_errors) log::warn("confd", d.format());
    for (const auto& doc : result.documents)
        for (const auto& d : doc.diagnostics)
            log::write(d.severity == conf::Severity::error ? log::Level::warn : log::Level::info, "confd", d.format());
    if (!result.ok()) {
        ++conf_dir_errors_;
        log::error("confd", "invalid resources; keeping the last good state",
                   {{"dir", *conf_dir_}, {"errors", std::to_string(result.error_count())}});
        return false;
    }
    std::size_t count = result.documents.size();
    bool on_loop = !written;
    if (on_loop) {
        std::vector<conf::Resource> resources;
        for (auto& doc : result.documents) resources.push_back(std::move(doc.resource));
        auto options = write_options();
        options.prune = true;
        source_.release();  // a write may grow the map; no read may be open in this process then
        auto started = std::chrono::steady_clock::now();
        written = store_->apply(resources, options);
        write_took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
    }
    auto& report = *written;
    auto indexed = std::chrono::steady_clock::now();
    refresh();
    auto index_ms = std::to_string(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - indexed).count());
    if (!report) {
        ++conf_dir_errors_;
        log::error("confd", "apply failed; keeping the last good state", {{"error", report.error().message}});
        // Valid input that could not be written (a full disk, a busy store) is read and
        // written again at the next look, not only once the directory changes.
        conf_applied_.clear();
        return false;
    }
    ++conf_dir_applies_;
    std::size_t changed = 0;
    for (const auto& c : report->changes) {
        if (c.outcome == store::Outcome::unchanged) continue;
        ++changed;
        log::info("confd", std::string(store::outcome_name(c.outcome)),
                  {{"kind", std::string(conf::kind_name(c.kind))}, {"mesh", c.mesh}, {"name", c.name}});
    }
    for (const auto& n : report->notes) log::warn("store", n);
    log::info("confd", "applied", {{"dir", *conf_dir_}, {"resources", std::to_string(count)},
                                   {"changed", std::to_string(changed)}, {"generation", std::to_string(report->generation)},
                                   {"write_ms", std::to_string(write_took.count())}, {"write_on", on_loop ? "loop" : "worker"},
                                   {"index_ms", index_ms}});
    return true;
}

namespace {

std::string label_value(const std::string& v)
{
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') out.push_back('\\');
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out.push_back(c);
    }
    return out;
}

std::string proxy_metrics(const proxy::Status& st)
{
    std::string out;
    auto family = [&](const char* name, const char* type, const char* help) {
        out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    };
    // One series of a MES, with a further label when `key` is given.
    auto series = [&](const char* name, const proxy::ServiceStatus& s, std::uint64_t value, const char* key = nullptr,
                      const std::string& label = {}) {
        out += std::string(name) + "{mesh=\"" + label_value(s.mesh) + "\",name=\"" + label_value(s.name) + "\"";
        if (key) out += std::string(",") + key + "=\"" + label_value(label) + "\"";
        out += "} " + std::to_string(value) + "\n";
    };

    struct Total {
        const char* name;
        const char* type;
        const char* help;
        std::uint64_t proxy::Status::*field;
    };
    static constexpr Total totals[] = {
        {"mesd_proxy_connections_active", "gauge", "Proxied connections open now.", &proxy::Status::active},
        {"mesd_proxy_connections_total", "counter", "Client connections accepted.", &proxy::Status::total},
        {"mesd_proxy_connections_refused_total", "counter", "Client connections reset: over a connection limit.",
         &proxy::Status::refused},
        {"mesd_proxy_unrouted_total", "counter", "Redirected connections whose destination no MES claims.",
         &proxy::Status::unrouted},
        {"mesd_proxy_local_failures_total", "counter", "Connections reset because mesd had no socket to spare.",
         &proxy::Status::local_failures},
        {"mesd_proxy_mark_failures_total", "counter", "Connections to endpoints made without proxy.upstreamMark.",
         &proxy::Status::mark_failures},
        {"mesd_proxy_accept_errors_total", "counter", "Accepts that failed for want of descriptors; accepting paused.",
         &proxy::Status::accept_errors},
    };
    for (const auto& t : totals) {
        family(t.name, t.type, t.help);
        out += std::string(t.name) + " " + std::to_string(st.*t.field) + "\n";
    }

    struct Row {
        const char* name;
        const char* type;
        const char* help;
        std::uint64_t proxy::ServiceStatus::*field;
    };
    static constexpr Row rows[] = {
        {"mesd_mes_connections_active", "gauge", "Open connections per MES.", &proxy::ServiceStatus::active},
        {"mesd_mes_connections_total", "counter", "Connections accepted per MES.", &proxy::ServiceStatus::total},
        {"mesd_mes_connections_refused_total", "counter", "Connections reset over a limit, per MES.", &proxy::ServiceStatus::refused},
        {"mesd_mes_connections_failed_total", "counter", "Connections reset because no endpoint could be reached, per MES.",
         &proxy::ServiceStatus::failed},
        {"mesd_mes_bytes_sent_total", "counter", "Bytes from clients to the endpoints, per MES.", &proxy::ServiceStatus::bytes_up},
        {"mesd_mes_bytes_received_total", "counter", "Bytes from the endpoints to clients, per MES.",
         &proxy::ServiceStatus::bytes_down},
    };
    for (const auto& row : rows) {
        family(row.name, row.type, row.help);
        for (const auto& s : st.services) series(row.name, s, s.*row.field);
    }
    family("mesd_mes_endpoint_connect_failures_total", "counter", "Failed or timed-out connects, per endpoint.");
    for (const auto& s : st.services)
        for (const auto& t : s.targets) series("mesd_mes_endpoint_connect_failures_total", s, t.connect_failures, "endpoint", t.address);
    family("mesd_mes_endpoint_ejections_total", "counter", "Times an endpoint was ejected after repeated failures.");
    for (const auto& s : st.services)
        for (const auto& t : s.targets) series("mesd_mes_endpoint_ejections_total", s, t.ejections, "endpoint", t.address);
    // TLS series only for the MES that speak TLS.
    family("mesd_mes_tls_handshakes_total", "counter", "TLS handshakes to endpoints completed, per MES.");
    for (const auto& s : st.services)
        if (s.tls_handshakes) series("mesd_mes_tls_handshakes_total", s, s.tls_handshakes);
    family("mesd_mes_tls_resumed_total", "counter", "TLS handshakes to endpoints that resumed a session, per MES.");
    for (const auto& s : st.services)
        if (s.tls_handshakes) series("mesd_mes_tls_resumed_total", s, s.tls_resumed);
    family("mesd_mes_tls_handshake_failures_total", "counter", "TLS handshakes to endpoints that failed, by reason.");
    for (const auto& s : st.services)
        for (const auto& [reason, n] : s.tls_failures) series("mesd_mes_tls_handshake_failures_total", s, n, "reason", reason);
    family("mesd_mes_endpoint_healthy", "gauge", "1 when an endpoint is neither ejected nor unresolved.");
    for (const auto& s : st.services)
        for (const auto& t : s.targets)
            series("mesd_mes_endpoint_healthy", s, t.state == "healthy" || t.state == "failing" ? 1 : 0, "endpoint", t.address);
    return out;
}

}  // namespace

std::string Daemon::metrics_text()
{
    const auto& m = server_->metrics();
    std::string out;
    auto counter = [&](const char* name, const char* help, std::uint64_t v) {
        out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " +
               std::to_string(v) + "\n";
    };
    auto gauge = [&](const char* name, const char* help, std::uint64_t v) {
        out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n" + name + " " +
               std::to_string(v) + "\n";
    };
    out += "# HELP mesd_dns_queries_total DNS queries received, by question type.\n# TYPE mesd_dns_queries_total counter\n";
    // Labels come from fixed lists (dns::known_qtypes and the others), the rest as "other":
    // no client can grow this page.
    auto by_code = [&](const char* name, const char* label, const dns::CodeCounts& counts) {
        counts.each([&](std::string_view value, std::uint64_t n) {
            out += std::string(name) + "{" + label + "=\"" + std::string(value) + "\"} " + std::to_string(n) + "\n";
        });
    };
    by_code("mesd_dns_queries_total", "qtype", m.queries_by_qtype);
    out += "# HELP mesd_dns_replies_total DNS replies sent, by rcode.\n# TYPE mesd_dns_replies_total counter\n";
    by_code("mesd_dns_replies_total", "rcode", m.replies_by_rcode);
    out += "# HELP mesd_dns_queries_by_opcode_total DNS queries received, by opcode.\n"
           "# TYPE mesd_dns_queries_by_opcode_total counter\n";
    by_code("mesd_dns_queries_by_opcode_total", "opcode", m.queries_by_opcode);
    counter("mesd_dns_answered_total", "Queries answered from mesd's own data.", m.answered);
    counter("mesd_dns_answered_fast_total", "Of those, answers written by the fast path (no ldns, no allocation).",
            m.answered_fast);
    counter("mesd_dns_forwarded_total", "Queries forwarded upstream.", m.forwarded);
    counter("mesd_dns_dropped_total", "Packets dropped: responses or shorter than a header.", m.dropped);
    counter("mesd_dns_truncated_total", "UDP replies sent with TC.", m.truncated);
    counter("mesd_dns_rate_limited_dropped_total", "UDP answers not sent: their source prefix was over dns.rateLimit.",
            m.rate_limited_dropped);
    counter("mesd_dns_rate_limited_slipped_total", "UDP answers sent as TC alone: their source prefix was over dns.rateLimit.",
            m.rate_limited_slipped);
    counter("mesd_dns_upstream_timeouts_total", "Upstream queries that timed out.", m.upstream_timeouts);
    counter("mesd_dns_upstream_failures_total", "Forwarded queries answered SERVFAIL after every upstream failed.",
            m.upstream_failures);
    counter("mesd_dns_upstream_mismatched_total", "Upstream answers ignored for a wrong ID, source or question.",
            m.upstream_mismatched);
    counter("mesd_dns_upstream_tcp_retries_total", "Truncated upstream answers retried over TCP.", m.upstream_tcp_retries);
    counter("mesd_dns_forward_overload_total", "Queries refused because maxInFlight were outstanding.", m.forward_overload);
    counter("mesd_dns_tcp_connections_total", "TCP connections accepted.", m.tcp_connections);
    counter("mesd_dns_tcp_refused_total", "TCP connections closed at once: over tcpMaxClients with none to evict.",
            m.tcp_refused);
    counter("mesd_dns_tcp_io_timeouts_total",
            "TCP connections closed: a message not received, or a reply not taken, within tcpIoTimeout.",
            m.tcp_io_timeouts);
    counter("mesd_dns_tcp_refused_per_ip_total", "TCP connections closed at once: over tcpMaxClientsPerIp.",
            m.tcp_refused_per_ip);
    counter("mesd_dns_tcp_evicted_total", "TCP connections closed to make room for a new one at tcpMaxClients.",
            m.tcp_evicted);
    counter("mesd_dns_tcp_accept_errors_total", "TCP accepts that failed for want of descriptors; accepting paused.",
            m.tcp_accept_errors);
    {
        auto admin_stats = admin_->stats();
        counter("mesd_admin_connections_evicted_total",
                "Admin connections closed before their request to make room for a new one.", admin_stats.evicted);
        counter("mesd_admin_accept_errors_total", "Admin accepts that failed for want of descriptors; accepting paused.",
                admin_stats.accept_errors);
    }
    gauge("mesd_dns_forward_in_flight", "Upstream queries outstanding.", server_->in_flight());
    counter("mesd_dns_forward_loops_total", "Queries mesd forwarded that came back to it, answered SERVFAIL.",
            m.forward_loops);
    counter("mesd_dns_forward_joined_total",
            "Queries not sent upstream: they waited for the answer to the same question being forwarded.",
            m.forward_joined);
    counter("mesd_dns_upstream_probes_total", "Queries sent to a backed-off upstream to see if it answers again.",
            m.upstream_probes);
    counter("mesd_dns_forward_backed_off_total", "Queries answered SERVFAIL at once: every upstream backed off.",
            m.forward_backed_off);
    {
        // One series per upstream now in use, best first.
        auto upstreams = server_->upstreams();
        auto family = [&](const char* name, const char* type, const char* help, auto value) {
            out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
            for (const auto& u : upstreams) {
                char v[64];
                std::snprintf(v, sizeof v, "%.6f", static_cast<double>(value(u)));
                out += std::string(name) + "{upstream=\"" + u.address + "\"} " + v + "\n";
            }
        };
        family("mesd_dns_upstream_srtt_seconds", "gauge", "Smoothed round-trip time of an upstream's UDP answers (0 before the first).",
               [](const dns::UpstreamStatus& u) { return u.srtt_seconds; });
        family("mesd_dns_upstream_rttvar_seconds", "gauge", "Variation of an upstream's round-trip time.",
               [](const dns::UpstreamStatus& u) { return u.rttvar_seconds; });
        family("mesd_dns_upstream_consecutive_failures", "gauge", "Timeouts in a row of an upstream.",
               [](const dns::UpstreamStatus& u) { return u.failures; });
        family("mesd_dns_upstream_backed_off", "gauge", "1 while an upstream is tried after every healthy one.",
               [](const dns::UpstreamStatus& u) { return u.backed_off ? 1 : 0; });
        family("mesd_dns_upstream_answers_total", "counter", "Answers from an upstream.",
               [](const dns::UpstreamStatus& u) { return u.answers; });
        family("mesd_dns_upstream_attempt_timeouts_total", "counter", "Queries to an upstream that timed out.",
               [](const dns::UpstreamStatus& u) { return u.timeouts; });
    }
    out += "# HELP mesd_dns_latency_seconds Time from receiving a query to sending its reply.\n"
           "# TYPE mesd_dns_latency_seconds histogram\n";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < dns::Metrics::bounds.size(); ++i) {
        cumulative += m.latency_buckets[i];
        char le[32];
        std::snprintf(le, sizeof le, "%g", dns::Metrics::bounds[i]);
        out += "mesd_dns_latency_seconds_bucket{le=\"" + std::string(le) + "\"} " + std::to_string(cumulative) + "\n";
    }
    cumulative += m.latency_buckets.back();
    out += "mesd_dns_latency_seconds_bucket{le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
    char sum[64];
    std::snprintf(sum, sizeof sum, "%.9f", m.latency_sum);
    out += "mesd_dns_latency_seconds_sum " + std::string(sum) + "\nmesd_dns_latency_seconds_count " +
           std::to_string(m.latency_count) + "\n";
    gauge("mesd_store_generation", "The store generation being served.", source_.generation());
    auto usage = store_->usage();
    gauge("mesd_vips_in_use", "VIPs allocated to MeshExternalServices.", usage ? usage->vips : 0);
    counter("mesd_store_errors_total", "Failed reads of the store.", store_errors_);
    auto readers = store_->readers();
    gauge("mesd_store_readers", "Reader slots of the store held, by every process, stale ones included.", readers.in_use);
    gauge("mesd_store_readers_max", "Reader slots of the store; reads fail while all are held.", readers.max);
    counter("mesd_store_stale_readers_cleared_total", "Reader slots of dead processes freed.", stale_readers_cleared_);
    gauge("mesd_store_read_only", "1 when the store was opened read-only.", store_->read_only().empty() ? 0 : 1);
    gauge("mesd_store_unreadable", "1 while the store cannot be read (answers come from the last good index).",
          store_error_.empty() ? 0 : 1);
    counter("mesd_conf_dir_applies_total", "Successful applies of --conf-dir.", conf_dir_applies_);
    counter("mesd_conf_dir_errors_total", "Applies of --conf-dir refused for invalid input or failed.", conf_dir_errors_);
    counter("mesd_conf_dir_torn_reads_total", "Reads of --conf-dir left because it changed under every pass.",
            conf_dir_torn_reads_);
    if (mirror_) {
        auto st = mirror_->state();
        auto lag = st.connected || st.current_at == std::chrono::system_clock::time_point{}
                       ? 0
                       : std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now() - st.current_at).count();
        gauge("mesd_cluster_connected", "1 while the node watches etcd; 0 while it serves from its copy.", st.connected);
        gauge("mesd_cluster_revision", "The etcd revision the node's copy holds.", static_cast<std::uint64_t>(st.revision));
        gauge("mesd_cluster_lag_seconds", "Seconds since the node last knew its copy was current (0 while watching).",
              static_cast<std::uint64_t>(std::max<std::int64_t>(0, lag)));
        counter("mesd_cluster_resyncs_total", "Whole copies read from etcd (first start, compacted history).", st.resyncs);
        counter("mesd_cluster_updates_total", "Watch responses from etcd applied to the store.", st.batches);
        counter("mesd_cluster_errors_total", "Lost connections, failed watches and store writes.", st.errors);
    }
    if (proxy_) out += proxy_metrics(proxy_->status());
    return out;
}

std::string Daemon::config_json()
{
    cmd::Value root = cmd::Value::object();
    root.set("generation", static_cast<std::int64_t>(source_.generation()));
    if (mirror_) {
        auto st = mirror_->state();
        cmd::Value& cluster = root.set("cluster", cmd::Value::object());
        cluster.set("node", config_.cluster.node_name);
        cluster.set("connected", st.connected);
        cluster.set("endpoint", st.endpoint);
        cluster.set("revision", st.revision);
        cluster.set("resyncs", static_cast<std::int64_t>(st.resyncs));
        if (!st.last_error.empty()) cluster.set("lastError", st.last_error);
    }
    cmd::Value& zones = root.set("zones", cmd::Value::array());
    for (const auto& z : config_.dns.zones) zones.push(z);
    cmd::Value& names = root.set("names", cmd::Value::array());
    if (const auto* snap = source_.snapshot()) {
        for (const auto& mesh : config_.meshes) {
            auto list = snap->list(conf::Kind::mesh_external_service, std::string_view(mesh));
            if (!list) continue;
            for (const auto& e : *list) {
                for (const auto& a : e.status.hostnames.addresses) {
                    cmd::Value& n = names.push(cmd::Value::object());
                    n.set("hostname", a.hostname);
                    if (e.status.ipv4) n.set("ipv4", e.status.ipv4->to_string());
                    if (e.status.ipv6) n.set("ipv6", e.status.ipv6->to_string());
                    n.set("mesh", e.resource.mesh);
                    n.set("name", e.resource.name);
                }
            }
        }
    }
    if (proxy_) {
        auto st = proxy_->status();
        cmd::Value& services = root.set("services", cmd::Value::array());
        for (const auto& s : st.services) {
            cmd::Value& v = services.push(cmd::Value::object());
            v.set("mesh", s.mesh);
            v.set("name", s.name);
            cmd::Value& listeners = v.set("listeners", cmd::Value::array());
            for (const auto& l : s.listeners) listeners.push(l);
            if (!s.listen_error.empty()) v.set("listenError", s.listen_error);
            if (!s.tls_error.empty()) v.set("tlsError", s.tls_error);
            v.set("active", static_cast<std::int64_t>(s.active));
            v.set("total", static_cast<std::int64_t>(s.total));
            cmd::Value& endpoints = v.set("endpoints", cmd::Value::array());
            for (const auto& t : s.targets) {
                cmd::Value& e = endpoints.push(cmd::Value::object());
                e.set("address", t.address);
                e.set("priority", static_cast<std::int64_t>(t.priority));
                e.set("health", t.state);
                e.set("connectFailures", static_cast<std::int64_t>(t.connect_failures));
                e.set("ejections", static_cast<std::int64_t>(t.ejections));
                if (!t.resolved.empty()) {
                    cmd::Value& r = e.set("resolved", cmd::Value::array());
                    for (const auto& a : t.resolved) r.push(a);
                }
            }
        }
    }
    return root.json();
}

cmd::HttpReply Daemon::admin(const std::string& path)
{
    if (path == "/metrics") return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_text()};
    if (path == "/ready") {
        // Answers from an index the store can no longer refresh are stale: let traffic go
        // to a replica that can read its store.
        if (!store_error_.empty() && !stopping_)
            return cmd::HttpReply{503, "text/plain", "not ready: cannot read the store: " + store_error_ + "\n"};
        if (mirror_ && ready_ && !stopping_) {
            // A node with a complete copy serves it while etcd is away, and says so.
            auto text = cluster_ready_text();
            return cmd::HttpReply{text.starts_with("ready") ? 200 : 503, "text/plain", text + "\n"};
        }
        return ready_ && !stopping_ ? cmd::HttpReply{200, "text/plain", "ready\n"}
                                    : cmd::HttpReply{503, "text/plain", "not ready\n"};
    }
    if (path == "/config") return {200, "application/json", config_json()};
    return {404, "text/plain", "not found: try /metrics, /ready or /config\n"};
}

void Daemon::shutdown(const char* why)
{
    if (stopping_) return;
    stopping_ = true;
    log::info("daemon", "stopping", {{"signal", why}});
    uv_timer_stop(&store_timer_);
    uv_timer_stop(&conf_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&store_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&conf_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigterm_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigint_), nullptr);
    if (mirror_) {
        std::lock_guard lock(mirror_changed_mutex_);
        mirror_changed_open_ = false;
        uv_close(reinterpret_cast<uv_handle_t*>(&mirror_changed_), nullptr);
    }
    server_->stop([this] {
        log::info("dns", "listeners closed, in-flight queries finished");
        proxy_->stop([this] {
            log::info("proxy", "listeners and connections closed");
            admin_->stop([] {});
        });
    });
}

int Daemon::run()
{
    if (!store_->read_only().empty()) {
        // Served as it is: VIPs stay as the last write left them, whatever the pools say now.
        log::warn("store", "opened read-only: serving it as it is, no writes",
                  {{"data_dir", config_.data_dir}, {"reason", store_->read_only()}});
    } else if (config_.cluster.enabled) {
        // VIPs come from etcd as they are: nothing of the pools is applied here.
    } else {
        auto synced = store_->sync_pools(write_options());
        if (!synced) {
            log::error("store", "cannot record the VIP pools", {{"error", synced.error().message}, {"data_dir", config_.data_dir}});
            return exit_failed;
        }
        for (const auto& n : synced->notes) log::warn("store", n);
    }
    if (conf_dir_) {
        conf_seen_ = conf_applied_ = fingerprint(*conf_dir_);
        if (auto result = read_conf_dir(*conf_dir_, conf_options_)) apply_conf_dir(std::move(*result));
        else conf_applied_.clear();  // it kept changing: read again at the first look
    }
    if (!refresh()) return exit_failed;
    if (config_.cluster.enabled && !cluster_store_usable()) return exit_failed;

    dns::ServerOptions options;
    options.listen = config_.dns.listen;
    options.tcp_idle_timeout = config_.dns.tcp_idle_timeout;
    options.tcp_max_clients = config_.dns.tcp_max_clients;
    options.tcp_io_timeout = config_.dns.tcp_io_timeout;
    options.tcp_max_clients_per_ip = config_.dns.tcp_max_clients_per_ip;
    options.forward_enabled = config_.dns.forward.enabled;
    options.upstreams = config_.dns.forward.upstreams;
    options.forward_timeout = config_.dns.forward.timeout;
    options.allow = config_.dns.forward.allow;
    options.max_in_flight = config_.dns.forward.max_in_flight;
    const auto& rate_limit = config_.dns.rate_limit;
    options.rate_limit = {rate_limit.responses_per_second, rate_limit.burst, rate_limit.slip,
                          rate_limit.ipv4_prefix_length, rate_limit.ipv6_prefix_length, rate_limit.table_size,
                          rate_limit.exempt};
    options.forward_max_wait = config_.dns.forward.max_wait;
    options.resolv_conf = "/etc/resolv.conf";  // when dns.forward.upstreams is empty
    options.on_warn = [](std::string_view message, std::string_view key, const std::string& value) {
        log::warn("dns", message, {{key, value}});
    };
    server_ = std::make_unique<dns::Server>(&loop_, responder_, source_, options);
    if (auto started = server_->start(); !started) {
        log::error("dns", "cannot listen", {{"error", started.error()}});
        server_->stop([] {});
        uv_run(&loop_, UV_RUN_DEFAULT);
        return exit_failed;
    }
    std::string upstreams;
    for (const auto& u : server_->upstreams()) upstreams += (upstreams.empty() ? "" : ",") + u.address;
    for (const auto& b : server_->bound())
        log::info("dns", "listening", {{"addr", b}, {"forward", options.forward_enabled ? upstreams : "off"}});
    if (rate_limit.responses_per_second > 0)
        log::info("dns", "rate limiting UDP answers",
                  {{"per_second", std::to_string(rate_limit.responses_per_second)},
                   {"burst", std::to_string(rate_limit.burst ? rate_limit.burst : rate_limit.responses_per_second)},
                   {"slip", std::to_string(rate_limit.slip)},
                   {"prefixes", "/" + std::to_string(rate_limit.ipv4_prefix_length) + " /" +
                                    std::to_string(rate_limit.ipv6_prefix_length)},
                   {"exempt", std::to_string(rate_limit.exempt.size()) + " networks"}});

    admin_ = std::make_unique<cmd::Admin>(&loop_, [this](const std::string& path) { return admin(path); });
    auto admin_addr = admin_->start(config_.admin.listen);
    if (!admin_addr) {
        log::error("admin", "cannot listen", {{"error", admin_addr.error()}});
        server_->stop([this] { admin_->stop([] {}); });
        uv_run(&loop_, UV_RUN_DEFAULT);
        return exit_failed;
    }
    log::info("admin", "listening", {{"addr", *admin_addr}});

    // The proxy last: in bind mode it may open many listeners, and the admin endpoint must
    // have its descriptor whatever happens to them.
    auto resolvers = !config_.dns.forward.upstreams.empty() ? config_.dns.forward.upstreams
                                                            : dns::system_upstreams(config_.dns.listen);
    proxy_ = std::make_unique<proxy::Proxy>(&loop_, proxy_options(resolvers));
    if (auto started = proxy_->start(); !started) {
        log::error("proxy", "cannot listen", {{"error", started.error()}});
        server_->stop([this] { proxy_->stop([this] { admin_->stop([] {}); }); });
        uv_run(&loop_, UV_RUN_DEFAULT);
        return exit_failed;
    }
    if (config_.proxy.mode == "redirect") log::info("proxy", "listening", {{"addr", proxy_->bound()}, {"mode", "redirect"}});
    // Once every listener is up: a failed start above leaves no mirror thread or wake-up
    // handle behind to keep the loop from ending.
    if (config_.cluster.enabled) start_mirror();
    update_routes();


    uv_timer_init(&loop_, &store_timer_);
    store_timer_.data = this;
    uv_timer_start(&store_timer_, [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->refresh(); }, store_poll_ms,
                   store_poll_ms);
    uv_timer_init(&loop_, &conf_timer_);
    conf_timer_.data = this;
    if (conf_dir_)
        uv_timer_start(&conf_timer_, [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->look_at_conf_dir(); },
                       conf_dir_poll_ms, conf_dir_poll_ms);
    uv_signal_init(&loop_, &sigterm_);
    uv_signal_init(&loop_, &sigint_);
    sigterm_.data = sigint_.data = this;
    uv_signal_start(&sigterm_, [](uv_signal_t* s, int) { static_cast<Daemon*>(s->data)->shutdown("SIGTERM"); }, SIGTERM);
    uv_signal_start(&sigint_, [](uv_signal_t* s, int) { static_cast<Daemon*>(s->data)->shutdown("SIGINT"); }, SIGINT);

    // DNS answers from now on; "ready" once the proxy has its first routes too (they are
    // listed on a worker thread).
    uv_run(&loop_, UV_RUN_DEFAULT);
    if (mirror_) mirror_->stop();
    log::info("daemon", "stopped");
    return exit_ok;
}

bool Daemon::cluster_store_usable()
{
    auto snap = store_->snapshot();
    if (!snap) {
        log::error("cluster", "cannot read the store", {{"error", snap.error().message}});
        return false;
    }
    auto recorded = snap->mirror_state();
    auto counts = snap->list(std::nullopt, std::nullopt);
    if (!recorded || !counts) {
        log::error("cluster", "cannot read the store", {{"data_dir", config_.data_dir}});
        return false;
    }
    // The store's own resources would be replaced by etcd's: refuse, rather than lose them.
    if (recorded->revision == 0 && !counts->empty()) {
        log::error("cluster", "the store holds resources written in single-node mode; copy them into etcd with "
                              "`mesctl cluster import` first, or start with an empty data dir",
                   {{"data_dir", config_.data_dir}, {"resources", std::to_string(counts->size())}});
        return false;
    }
    return true;
}

void Daemon::start_mirror()
{
    uv_async_init(&loop_, &mirror_changed_, [](uv_async_t* a) { static_cast<Daemon*>(a->data)->refresh(); });
    mirror_changed_.data = this;
    mirror_changed_open_ = true;
    store::cluster::Mirror::Hooks hooks;
    hooks.changed = [this] {
        std::lock_guard lock(mirror_changed_mutex_);
        if (mirror_changed_open_) uv_async_send(&mirror_changed_);
    };
    hooks.log = [](store::cluster::Mirror::Hooks::Level level, std::string_view message,
                   const store::cluster::Mirror::Hooks::Fields& fields) {
        std::vector<log::Field> out;
        for (const auto& [k, v] : fields) out.emplace_back(k, v);
        using L = store::cluster::Mirror::Hooks::Level;
        auto lv = level == L::info ? log::Level::info : level == L::warn ? log::Level::warn : log::Level::error;
        log::write(lv, "cluster", message, std::span<const log::Field>(out));
    };
    mirror_ = std::make_unique<store::cluster::Mirror>(*store_, config_, std::move(hooks));
    std::string endpoints;
    for (const auto& e : config_.cluster.etcd.endpoints) endpoints += (endpoints.empty() ? "" : ",") + e;
    log::info("cluster", "node of a cluster",
              {{"node", config_.cluster.node_name}, {"etcd", endpoints}, {"prefix", config_.cluster.etcd.prefix},
               {"revision", std::to_string(mirror_->state().revision)}});
    mirror_->start();
}

std::string Daemon::cluster_ready_text() const
{
    if (!mirror_) return {};
    auto st = mirror_->state();
    if (!st.synced) return "not ready: waiting for the first copy from etcd";
    if (st.connected) return "ready";
    return "ready: serving from cache (etcd unreachable" + (st.last_error.empty() ? "" : ": " + st.last_error) +
           "; revision " + std::to_string(st.revision) + ")";
}

// Shares the descriptor limit out, as Unbound's checkrlimits() does at start: fixed needs
// first (the store, the listeners, the loop's own descriptors, upstream and resolver
// sockets), then the admin endpoint's connections, then DNS over TCP, and the proxy what is
// left at two descriptors a connection. A setting that does not fit is lowered with a warning
// rather than left to fail with EMFILE at run time, where it would take /ready down with it.
void share_descriptors(conf::Config& config, rlim_t limit)
{
    constexpr std::uint64_t fixed = 64;  // store, loop, signals, thread pool, upstream sockets, logs
    const std::uint64_t listeners = 2 * config.dns.listen.size() + 2;  // UDP and TCP each; admin; redirect
    const std::uint64_t admin = cmd::Admin::max_connections;
    const std::uint64_t total = limit == RLIM_INFINITY ? std::uint64_t{1} << 32 : static_cast<std::uint64_t>(limit);
    const std::uint64_t reserved = fixed + listeners + admin;
    const std::uint64_t available = total > reserved + 4 ? total - reserved : 4;
    // DNS over TCP keeps dns.tcpMaxClients when it fits in half of what is left; otherwise it
    // and the proxy share it.
    std::uint64_t dns_tcp = config.dns.tcp_max_clients;
    if (dns_tcp > available / 2) {
        dns_tcp = available / 2;
        log::warn("daemon", "open files limit too low for dns.tcpMaxClients; lowered",
                  {{"tcpMaxClients", std::to_string(config.dns.tcp_max_clients)}, {"now", std::to_string(dns_tcp)},
                   {"limit", std::to_string(total)}});
        config.dns.tcp_max_clients = static_cast<std::uint32_t>(dns_tcp);
    }
    const std::uint64_t proxy = std::max<std::uint64_t>(1, (available - dns_tcp) / 2);
    if (config.proxy.max_connections > proxy) {
        if (config.proxy.max_connections_set)
            log::warn("daemon", "open files limit too low for proxy.maxConnections; lowered",
                      {{"maxConnections", std::to_string(config.proxy.max_connections)}, {"now", std::to_string(proxy)},
                       {"limit", std::to_string(total)}});
        config.proxy.max_connections = static_cast<std::uint32_t>(proxy);
    }
    log::info("daemon", "descriptors shared out",
              {{"reserved", std::to_string(reserved)}, {"admin_connections", std::to_string(admin)},
               {"dns_tcp_clients", std::to_string(config.dns.tcp_max_clients)},
               {"proxy_connections", std::to_string(config.proxy.max_connections)}});
}

// Off unless asked for: a core file (or a debugger attached by another process of the same
// user) would expose the TLS client keys and Secrets mesd holds in memory. PR_SET_DUMPABLE 0
// also makes /proc/PID's files root's, so another process of the same user cannot read
// mesd's environment or memory; RLIMIT_CORE 0 covers a dump made despite it.
void disable_core_dumps()
{
    rlimit core{0, 0};
    ::setrlimit(RLIMIT_CORE, &core);
    ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

}  // namespace

int main(int argc, char** argv)
{
    // A peer that goes away while mesd writes to it is an error on that write, not the end
    // of the daemon (libuv writes with write(2), which raises SIGPIPE by default).
    std::signal(SIGPIPE, SIG_IGN);
    // Each proxied connection holds two descriptors: take all the hard limit allows.
    if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &nofile);
    }
    Flags flags;
    if (auto err = parse_flags(argc, argv, flags)) {
        std::cerr << "mesd: " << *err << "\n\n" << usage_text;
        return exit_usage;
    }
    // Before the configuration, and with it any key or Secret, is read.
    if (!flags.allow_core_dumps) disable_core_dumps();
    // The name index and route lists are rebuilt whole on every store change: with glibc's
    // sliding mmap threshold their large arrays soon come from the heap and leave it
    // fragmented. A fixed threshold keeps them mapped, and each one freed goes back to the
    // kernel (a node of a cluster takes thousands of changes during a large apply).
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    auto loaded = conf::load_config(flags.config);
    if (flags.etcd_endpoints) conf::set_etcd_endpoints(loaded, *flags.etcd_endpoints, "--etcd-endpoints");
    if (flags.node_name) {
        if (!conf::is_node_name(*flags.node_name)) {
            std::cerr << "mesd: --node-name " << conf::escape_controls(*flags.node_name)
                      << ": must be 1-253 letters, digits, '.', '-' or '_'\n";
            return exit_usage;
        }
        loaded.config.cluster.node_name = *flags.node_name;
    }
    if (loaded.config.cluster.enabled && loaded.config.cluster.node_name.empty()) {
        char host[256] = {};
        loaded.config.cluster.node_name = ::gethostname(host, sizeof host - 1) == 0 && host[0] ? host : "mesd";
    }
    if (!loaded.ok()) {
        for (const auto& d : loaded.errors) std::cerr << d.format() << '\n';
        return exit_usage;
    }
    conf::Config config = std::move(loaded.config);
    if (flags.data_dir) config.data_dir = *flags.data_dir;
    if (!flags.dns_listen.empty()) {
        config.dns.listen.clear();
        for (const auto& text : flags.dns_listen) {
            auto hp = conf::parse_host_port(text);
            if (!hp) {
                std::cerr << "mesd: --dns-listen " << text << ": must be ADDRESS:PORT with an IP address\n";
                return exit_usage;
            }
            config.dns.listen.push_back(*hp);
        }
    }
    if (flags.admin_listen) {
        auto hp = conf::parse_host_port(*flags.admin_listen);
        if (!hp) {
            std::cerr << "mesd: --admin-listen " << *flags.admin_listen << ": must be ADDRESS:PORT with an IP address\n";
            return exit_usage;
        }
        config.admin.listen = *hp;
    }
    if (flags.log_level) config.log.level = *flags.log_level;
    log::Level level{};
    if (!log::parse_level(config.log.level, level)) {
        std::cerr << "mesd: --log-level " << config.log.level << ": must be debug, info, warn or error\n";
        return exit_usage;
    }
    log::set_level(level);
    if (flags.allow_core_dumps) log::warn("daemon", "core dumps allowed: they may hold TLS keys and Secrets");
    // What the raise above got, shared out: every TCP client and proxied connection holds
    // descriptors from it, and the admin endpoint must keep one free under any flood.
    if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
        log::info("daemon", "open files limit",
                  {{"soft", std::to_string(nofile.rlim_cur)}, {"hard", std::to_string(nofile.rlim_max)}});
        share_descriptors(config, nofile.rlim_cur);
    }
    if (flags.conf_dir && config.cluster.enabled) {
        // Two sources of truth would undo each other's writes: in cluster mode etcd is the one.
        std::cerr << "mesd: --conf-dir cannot be used in cluster mode: apply the directory with "
                     "`mesctl apply --prune -f DIR` (it writes to etcd)\n";
        return exit_usage;
    }
    if (flags.conf_dir && !std::filesystem::is_directory(*flags.conf_dir)) {
        std::cerr << "mesd: --conf-dir " << *flags.conf_dir << ": not a directory\n";
        return exit_usage;
    }

    auto opened = store::Store::open(store::Options{config.data_dir});
    if (!opened) {
        log::error("store", "cannot open the store", {{"error", opened.error().message}});
        return exit_failed;
    }
    try {
        Daemon daemon(std::move(config), std::move(*opened), flags.conf_dir, flags.conf_dir_follow_links);
        return daemon.run();
    } catch (const std::exception& e) {
        log::error("daemon", "fatal", {{"error", e.what()}});
        return exit_failed;
    }
}
