// The daemon's life: start (run), the store's polling (refresh), readiness, the admin
// endpoint's dispatch, SIGHUP, and the shutdown on SIGTERM or SIGINT.
#include "cmd/daemon.hpp"
#include "cmd/privilege.hpp"

#include <algorithm>
#include <csignal>

namespace cmd {

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
    if (*moved && ready_ && notifier_.enabled()) notifier_.send("STATUS=" + status_text());
    if (*moved) {
        // Idle workers take the new index up now rather than at their next query, so that
        // the old one is freed at once.
        for (std::size_t i = 0; i < dns_.size() && i < workers_.size(); ++i)
            workers_[i]->post([this, i] { dns_[i].view->begin_batch(); });
        update_routes();
    }
    return true;
}

void Daemon::became_ready()
{
    if (ready_) return;
    ready_ = true;
    log::info("daemon", "ready", {{"generation", std::to_string(source_.generation())}, {"data_dir", config_.data_dir}});
    // The moment systemd starts the units ordered after mesd: DNS answers from the index and
    // the proxy listens on (or looks up) the routes of the store as it was read.
    if (notifier_.enabled()) notifier_.send("READY=1\nSTATUS=" + status_text());
}

std::string Daemon::status_text() const
{
    const auto* index = source_.index();
    std::string text = "serving " + std::to_string(index ? index->owners() : 0) + " MES (" +
                       std::to_string(index ? index->names() : 0) + " hostnames) on " +
                       std::to_string(serving_workers()) + (serving_workers() == 1 ? " worker" : " workers");
    if (!store_error_.empty()) text += "; cannot read the store: " + store_error_;
    return text;
}

// WATCHDOG=1 from a timer on the control loop: a loop stuck in a callback stops pinging, and
// systemd (WatchdogSec=) restarts mesd. The workers' loops are not watched: each serves on
// while the control loop is stuck, and is stopped with it.
void Daemon::start_watchdog()
{
    auto every = notifier_.watchdog();
    if (!every) return;
    notifier_.send("WATCHDOG=1");
    auto ms = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(every->count()) / 1000);
    uv_timer_init(&loop_, &watchdog_timer_);
    watchdog_open_ = true;
    uv_update_time(&loop_);  // the loop has not turned yet: its clock is that of uv_loop_init
    watchdog_timer_.data = this;
    uv_timer_start(&watchdog_timer_, [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->notifier_.send("WATCHDOG=1"); },
                   ms, ms);
}

void Daemon::stop_watchdog()
{
    if (!watchdog_open_) return;
    watchdog_open_ = false;
    uv_timer_stop(&watchdog_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&watchdog_timer_), nullptr);
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
    o.health_check.enabled = c.health_check.enabled;
    o.health_check.interval = duration_cast<ms>(c.health_check.interval);
    o.health_check.timeout = duration_cast<ms>(c.health_check.timeout);
    o.health_check.healthy_threshold = c.health_check.healthy_threshold;
    o.health_check.unhealthy_threshold = c.health_check.unhealthy_threshold;
    o.resolvers = !c.resolvers.empty() ? c.resolvers : dns_upstreams;
    o.resolve_timeout = duration_cast<ms>(c.resolve_timeout);
    o.dns_min_ttl = duration_cast<ms>(c.dns_min_ttl);
    o.dns_max_ttl = duration_cast<ms>(c.dns_max_ttl);
    o.hosts_file = c.hosts_file;
    o.access_log.path = c.access_log.path;
    o.access_log.format = c.access_log.format == "json" ? proxy::Options::AccessLog::Format::json
                                                        : proxy::Options::AccessLog::Format::logfmt;
    o.on_tls_failure = [](const std::string& mesh, const std::string& name, const std::string& reason) {
        log::warn("proxy", "TLS handshake failed", {{"mesh", mesh}, {"name", name}, {"reason", reason}});
    };
    o.on_event = [](const proxy::Options::Event& e) {
        std::vector<log::Field> fields;
        for (const auto& [k, v] : e.fields) fields.emplace_back(k, v);
        log::write(e.level == proxy::Options::Event::Level::warn ? log::Level::warn : log::Level::info, "proxy", e.message, fields);
    };
    o.on_tls_unusable = [](const std::string& mesh, const std::string& name, const std::string& reason) {
        log::warn("proxy", "TLS settings unusable; refusing connections", {{"mesh", mesh}, {"name", name}, {"reason", reason}});
    };
    for (auto& w : workers_) o.workers.push_back(w.get());
    o.find_route = [this](const vip::Address& address, std::uint16_t port) { return after_lookup(find_route(address, port)); };
    o.find_named_route = [this](const std::string& mesh, const std::string& name) {
        return after_lookup(find_route(mesh, name, std::nullopt));
    };
    return o;
}

cmd::HttpReply Daemon::ready_reply()
{
    // Answers from an index the store can no longer refresh are stale: let traffic go
    // to a replica that can read its store.
    if (!store_error_.empty() && !stopping_)
        return cmd::HttpReply{503, "text/plain", "not ready: cannot read the store: " + store_error_ + "\n", {}};
    if (mirror_ && ready_ && !stopping_) {
        // A node with a complete copy serves it while etcd is away, and says so.
        auto text = cluster_ready_text();
        return cmd::HttpReply{text.starts_with("ready") ? 200 : 503, "text/plain", text + "\n", {}};
    }
    return ready_ && !stopping_ ? cmd::HttpReply{200, "text/plain", "ready\n", {}}
                                : cmd::HttpReply{503, "text/plain", "not ready\n", {}};
}

cmd::HttpReply Daemon::admin(const cmd::HttpRequest& request)
{
    const std::string& path = request.path;
    if (path == "/metrics") return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(), {}};
    if (path == "/ready") return ready_reply();
    if (path == "/config") return {200, "application/json", config_json(), {}};
    if (path == "/status.json")
        return {200, "application/json", status_json(request.param("page")).dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n",
                {{"Cache-Control", "no-store"}}};
    if (path == "/" || path == "/index.html")
        return {200, "text/html; charset=utf-8", cmd::status_html(status_json(request.param("page"))),
                {{"Content-Security-Policy", cmd::status_page_csp},
                 {"X-Content-Type-Options", "nosniff"},
                 {"Referrer-Policy", "no-referrer"},
                 {"Cache-Control", "no-store"}}};
    return {404, "text/plain", "not found: try /, /status.json, /metrics, /ready or /config\n", {}};
}

void Daemon::shutdown(const char* why)
{
    if (stopping_) return;
    stopping_ = true;
    log::info("daemon", "stopping", {{"signal", why}});
    if (notifier_.enabled()) notifier_.send(std::string("STOPPING=1\nSTATUS=stopping (") + why + "): draining");
    uv_timer_stop(&store_timer_);
    uv_timer_stop(&conf_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&store_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&conf_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigterm_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigint_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sighup_), nullptr);
    if (mirror_) {
        std::lock_guard lock(mirror_changed_mutex_);
        mirror_changed_open_ = false;
        uv_close(reinterpret_cast<uv_handle_t*>(&mirror_changed_), nullptr);
    }
    // DNS first (its in-flight forwards finish), then the proxy, then the admin endpoint,
    // then the workers' loops: each stage closes what it holds on every worker before the
    // next begins. The watchdog pings on through the drain, which systemd's stop timeout
    // bounds, and stops with the last stage (the loop ends once it has).
    stop_dns([this] {
        if (!dns_.empty()) log::info("dns", "listeners closed, in-flight queries finished");
        auto then_admin = [this] {
            auto last = [this] {
                stop_watchdog();
                end_workers();
            };
            if (admin_) admin_->stop(last);
            else last();
        };
        if (!proxy_) return then_admin();
        proxy_->stop([this, then_admin] {
            log::info("proxy", "listeners and connections closed");
            then_admin();
        });
    });
}

// SIGHUP: what is reopened or read again: the access log (logrotate has renamed it), then
// the configuration file (daemon_reload.cpp); each step logs its own failure and the others
// still run.
void Daemon::hangup()
{
    if (stopping_) return;
    log::info("daemon", "SIGHUP",
              {{"reopening", config_.proxy.access_log.path.empty() ? "nothing" : "the access log"},
               {"config", config_file_.empty() ? "none" : config_file_}});
    if (proxy_)
        if (auto reopened = proxy_->reopen_access_log(); !reopened)
            log::error("proxy", "cannot reopen the access log; lines go on to the old file", {{"error", reopened.error()}});
    reload_config();
}

// A start that failed half way: what was opened is closed as at a shutdown (the workers'
// threads run for that), and mesd exits.
int Daemon::abandon_start()
{
    shutdown("start failed");
    start_workers();
    uv_run(&loop_, UV_RUN_DEFAULT);
    join_workers();
    return exit_failed;
}

void Daemon::keep_default_generators(bool on, std::vector<conf::Resource>& resources)
{
    if (!on) return;
    for (auto& g : conf::default_hostname_generators()) {
        bool named = std::ranges::any_of(resources, [&](const conf::Resource& r) {
            return r.kind == g.kind && r.mesh == g.mesh && r.name == g.name;
        });
        if (!named) resources.push_back(std::move(g));
    }
}

bool Daemon::ensure_default_generators()
{
    if (!config_.default_hostname_generators) return true;
    std::vector<conf::Resource> missing;
    {
        auto snap = store_->snapshot();
        if (!snap) {
            log::error("store", "cannot read the store", {{"error", snap.error().message}});
            return false;
        }
        for (auto& g : conf::default_hostname_generators()) {
            auto found = snap->get(g.kind, g.mesh, g.name);
            if (!found) {
                log::error("store", "cannot read the store", {{"error", found.error().message}});
                return false;
            }
            if (!*found) missing.push_back(std::move(g));
        }
    }
    if (missing.empty()) return true;
    source_.release();  // a write may grow the map; no read may be open in this process then
    auto written = store_->apply(missing, write_options());
    if (!written) {
        log::error("store", "cannot create the default hostname generators", {{"error", written.error().message}});
        return false;
    }
    for (const auto& g : missing) log::info("store", "hostname generator created", {{"name", g.name}});
    return true;
}

dns::ServerOptions Daemon::dns_options() const
{
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
    return options;
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
        if (!ensure_default_generators()) return exit_failed;
    }
    if (conf_dir_) {
        conf_seen_ = conf_applied_ = fingerprint(*conf_dir_);
        if (auto result = read_conf_dir(*conf_dir_, conf_options_)) apply_conf_dir(std::move(*result));
        else conf_applied_.clear();  // it kept changing: read again at the first look
    }
    if (!refresh()) return exit_failed;
    if (config_.cluster.enabled && !cluster_store_usable()) return exit_failed;

    // Set up now, started once everything listens: a start that fails closes them as a
    // shutdown does.
    uv_timer_init(&loop_, &store_timer_);
    uv_timer_init(&loop_, &conf_timer_);
    uv_signal_init(&loop_, &sigterm_);
    uv_signal_init(&loop_, &sigint_);
    uv_signal_init(&loop_, &sighup_);
    // Pings from here on, the rest of the start included (the loop turns for the first time
    // below, once everything listens).
    start_watchdog();
    if (auto n = worker_count(); n > 1) make_workers(n);
    log::info("daemon", "workers",
              {{"count", std::to_string(serving_workers())},
               {"affinity", workers_.empty() ? "none" : config_.worker_affinity}});

    dns::ServerOptions options = dns_options();
    if (auto started = start_dns(options); !started) {
        log::error("dns", "cannot listen", {{"error", started.error()}});
        return abandon_start();
    }
    const auto& first = *dns_.front().server;
    std::string upstreams;
    for (const auto& u : first.upstreams()) upstreams += (upstreams.empty() ? "" : ",") + u.address;
    for (const auto& b : first.bound())
        log::info("dns", "listening", {{"addr", b}, {"forward", options.forward_enabled ? upstreams : "off"}});
    const auto& rate_limit = config_.dns.rate_limit;
    if (rate_limit.responses_per_second > 0)
        log::info("dns", "rate limiting UDP answers",
                  {{"per_second", std::to_string(rate_limit.responses_per_second)},
                   {"burst", std::to_string(rate_limit.burst ? rate_limit.burst : rate_limit.responses_per_second)},
                   {"slip", std::to_string(rate_limit.slip)},
                   {"prefixes", "/" + std::to_string(rate_limit.ipv4_prefix_length) + " /" +
                                    std::to_string(rate_limit.ipv6_prefix_length)},
                   {"exempt", std::to_string(rate_limit.exempt.size()) + " networks"}});

    admin_ = std::make_unique<cmd::Admin>(&loop_, [this](const cmd::HttpRequest& request) { return admin(request); });
    auto admin_addr = admin_->start(config_.admin.listen);
    if (!admin_addr) {
        log::error("admin", "cannot listen", {{"error", admin_addr.error()}});
        return abandon_start();
    }
    log::info("admin", "listening", {{"addr", *admin_addr}});

    // The proxy last: in bind mode it may open many listeners, and the admin endpoint must
    // have its descriptor whatever happens to them.
    auto resolvers = !config_.dns.forward.upstreams.empty() ? config_.dns.forward.upstreams
                                                            : dns::system_upstreams(config_.dns.listen);
    if (auto taken = redirect_port_taken(); !taken.empty()) {
        log::error("proxy", "cannot listen", {{"error", taken}});
        return abandon_start();
    }
    proxy_ = std::make_unique<proxy::Proxy>(&loop_, proxy_options(resolvers));
    if (auto opened = proxy_->open_access_log(); !opened) {
        log::error("proxy", "cannot open the access log", {{"error", opened.error()}});
        return abandon_start();
    }
    if (!config_.proxy.access_log.path.empty())
        log::info("proxy", "access log", {{"path", config_.proxy.access_log.path}, {"format", config_.proxy.access_log.format}});
    if (auto started = proxy_->start(); !started) {
        log::error("proxy", "cannot listen", {{"error", started.error()}});
        return abandon_start();
    }
    if (config_.proxy.mode == "redirect") log::info("proxy", "listening", {{"addr", proxy_->bound()}, {"mode", "redirect"}});
    // Everything that needs privileges is bound and open: the configured user, capabilities
    // and sandbox from here on, before any thread of mesd's starts (capability sets are per
    // thread; see privilege.hpp). `user` and `sandbox` change only with a restart.
    if (auto confined = confine(config_); !confined) {
        log::error("daemon", "cannot drop privileges or enter the sandbox", {{"error", confined.error()}});
        return abandon_start();
    }
    // Every listener is bound: the workers may run now (until here only this thread touched
    // their loops).
    start_workers();
    // Once every listener is up: a failed start above leaves no mirror thread or wake-up
    // handle behind to keep the loop from ending.
    if (config_.cluster.enabled) start_mirror();
    update_routes();

    store_timer_.data = this;
    uv_timer_start(&store_timer_, [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->refresh(); }, store_poll_ms,
                   store_poll_ms);
    conf_timer_.data = this;
    if (conf_dir_)
        uv_timer_start(&conf_timer_, [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->look_at_conf_dir(); },
                       conf_dir_poll_ms, conf_dir_poll_ms);
    sigterm_.data = sigint_.data = this;
    uv_signal_start(&sigterm_, [](uv_signal_t* s, int) { static_cast<Daemon*>(s->data)->shutdown("SIGTERM"); }, SIGTERM);
    uv_signal_start(&sigint_, [](uv_signal_t* s, int) { static_cast<Daemon*>(s->data)->shutdown("SIGINT"); }, SIGINT);
    sighup_.data = this;
    uv_signal_start(&sighup_, [](uv_signal_t* s, int) { static_cast<Daemon*>(s->data)->hangup(); }, SIGHUP);

    // DNS answers from now on; "ready" once the proxy has its first routes too (they are
    // listed on a worker thread).
    uv_run(&loop_, UV_RUN_DEFAULT);
    join_workers();
    if (mirror_) mirror_->stop();
    log::info("daemon", "stopped");
    return exit_ok;
}

}  // namespace cmd
