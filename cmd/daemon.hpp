// The daemon: the store, the DNS server, the proxy and the admin endpoint on one libuv loop,
// with the conf dir and, in cluster mode, etcd feeding the store.
//
// Ownership. A Daemon owns everything it serves with: the store, the DNS responder and
// server, the proxy, the admin endpoint, the loop and its timers and signal handles, and in
// cluster mode the mirror and its wake-up handle. run() returns once the loop has ended.
//
// Threads. Everything runs on the loop's thread except:
//   - build_routes(), on a libuv worker thread: it reads the store through a snapshot of its
//     own, and config_, and nothing else (routes_building_ keeps a second one from starting);
//   - the worker half of look_at_conf_dir() (daemon_conf_dir.cpp): it reads the directory and
//     writes the store from copies of what it needs, taken on the loop, and touches no
//     member (conf_reading_ keeps a second one from starting);
//   - the mirror's threads (cluster mode): they write the store (with a copy of the settings
//     they need, taken when the mirror is made) and signal mirror_changed_, under
//     mirror_changed_mutex_ and only while mirror_changed_open_; the heart also creates
//     Kuma's default generators in etcd where absent (from a copy handed over before
//     start), never on the loop.
// So the store is shared by every thread, and config_ by the loop and the routes' worker.
// A reload (SIGHUP, daemon_reload.cpp) writes config_ on the loop's thread, and only the keys
// that change live (conf::reload_keys()); the other threads read only keys that need a
// restart (meshes, proxy.mode), which never change after the constructor. What the workers
// use of the live keys they get by copy, on their own loops (dns::Server::reconfigure,
// proxy::Proxy::set_timeouts), or through atomics (the responder's TTLs, the log level, the
// access log's file and format); everything else (source_, proxy_, admin_, the counters,
// the conf dir's and the routes' state) belongs to the loop's thread.
//   - with `workers` above 1, the workers' threads (daemon_workers.cpp): each runs a DNS
//     server (dns_[i]) on its own loop with its own view of the name index, and the proxy's
//     connections; the responder is read only; the proxy's route lookups in redirect mode
//     (find_route) run on them too, each through a snapshot of its own, and count failures
//     under lookup_mutex_.
//
// The parts are defined in: daemon.cpp (run, refresh, shutdown, readiness, admin dispatch,
// the proxy's options), daemon_reload.cpp (SIGHUP), daemon_routes.cpp (the proxy's routes and their lookups),
// daemon_metrics.cpp (/metrics), daemon_config.cpp (/config, /status.json and the status
// page), daemon_conf_dir.cpp (--conf-dir)
// and daemon_cluster.cpp (cluster mode).
#pragma once

#include "cmd/admin.hpp"
#include "cmd/log.hpp"
#include "cmd/notify.hpp"
#include "cmd/status_page.hpp"
#include "conf/conf.hpp"
#include "dns/dns.hpp"
#include "proxy/proxy.hpp"
#include "store/cluster.hpp"
#include "store/store.hpp"
#include "workers/mailbox.hpp"
#include "workers/worker.hpp"

#include <uv.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace cmd {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
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

// What a directory of YAML looks like now: names, sizes and times of its files.
// Defined in daemon_conf_dir.cpp.
std::string fingerprint(const std::string& dir);
// Reads the conf dir until two passes in a row see the same bytes, then parses what they saw.
// A pass racing a change (a `..data` flip, an editor's rename) differs from the next and is
// dropped, so a half-old, half-new view, in which names of both versions may be missing,
// is never applied and never prunes. Empty when the directory kept changing.
std::optional<conf::LoadResult> read_conf_dir(const std::string& dir, const conf::LoadOptions& options);

class Daemon {
public:
    Daemon(conf::Config config, std::unique_ptr<store::Store> store, std::optional<std::string> conf_dir,
           bool conf_dir_follow_links)
        : config_(std::move(config)), store_(std::move(store)), conf_dir_(std::move(conf_dir)),
          source_(*store_, config_.meshes), responder_(dns_settings())
    {
        uv_loop_init(&loop_);
        conf_options_.follow_outside_links = conf_dir_follow_links;
        conf_options_.zone = config_.zone;
    }
    ~Daemon() { uv_loop_close(&loop_); }

    int run();

    // Reads the configuration file again for a reload, as main() read it at start (flags
    // applied over it again); on the loop's thread.
    using ConfigLoader = std::function<conf::ConfigResult()>;
    // Before run(): SIGHUP reloads `file` through `load`. Without it (no configuration file)
    // SIGHUP only reopens the access log.
    void set_config_loader(std::string file, ConfigLoader load)
    {
        config_file_ = std::move(file);
        load_config_ = std::move(load);
    }

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
    // Kuma's default HostnameGenerators (config defaultHostnameGenerators) that `resources`
    // does not name, added to a write that prunes so that it keeps them.
    static void keep_default_generators(bool on, std::vector<conf::Resource>& resources);
    // Creates the default generators the store lacks, as Kuma's control plane does at start.
    bool ensure_default_generators();

    store::WriteOptions write_options() const
    {
        store::WriteOptions o;
        o.pools = store::Pools::from(config_);
        o.zone = config_.zone;
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
    // systemd's notification socket (cmd/notify.hpp), on the loop's thread: READY=1 with
    // became_ready(), STATUS= as the store moves, STOPPING=1 with shutdown(), and WATCHDOG=1
    // from watchdog_timer_ while the loop turns.
    std::string status_text() const;
    void start_watchdog();
    void stop_watchdog();
    // SIGHUP, on the loop's thread: reopens the access log, then reloads the configuration
    // file (reload_config).
    void hangup();
    void reload_config();
    // The DNS servers' options from config_ (as started; a reload applies them again).
    dns::ServerOptions dns_options() const;
    int abandon_start();
    cmd::HttpReply admin(const cmd::HttpRequest& request);
    cmd::HttpReply ready_reply();
    // /status.json's document (status_page.hpp), with page `page` of the MES.
    nlohmann::ordered_json status_json(const std::optional<std::string>& page);
    std::string metrics_text();
    std::string config_json();

    conf::Config config_;
    std::unique_ptr<store::Store> store_;
    std::optional<std::string> conf_dir_;
    conf::LoadOptions conf_options_;
    dns::StoreSource source_;
    dns::Responder responder_;
    uv_loop_t loop_{};
    // The DNS servers: one on loop_ with one worker, else one per worker (daemon_workers.cpp).
    struct DnsWorker {
        std::unique_ptr<dns::CatalogSource> view;  // its view of source_'s index; none on loop_
        std::unique_ptr<dns::Server> server;
    };
    std::vector<DnsWorker> dns_;
    std::unique_ptr<proxy::Proxy> proxy_;
    std::map<std::string, std::string> listen_errors_;  // logged once per change
    std::string last_lookup_error_;  // redirect mode: the failure logged, until a lookup succeeds
    std::mutex lookup_mutex_;        // over last_lookup_error_: workers look routes up
    bool routes_building_ = false;  // a worker thread is listing the MES
    bool routes_stale_ = false;     // the store moved meanwhile: list them again
    std::unique_ptr<cmd::Admin> admin_;
    uv_timer_t store_timer_{};
    uv_timer_t conf_timer_{};
    uv_signal_t sigterm_{};
    uv_signal_t sigint_{};
    uv_signal_t sighup_{};
    notify::Notifier notifier_ = notify::Notifier::from_environment();
    uv_timer_t watchdog_timer_{};
    bool watchdog_open_ = false;
    bool ready_ = false;
    bool stopping_ = false;
    std::string conf_seen_;     // the conf dir's fingerprint at the last look
    std::string conf_applied_;  // ... when it was last read whole (applied or refused)
    bool conf_reading_ = false; // a worker thread is reading it
    std::optional<conf::LoadResult> conf_pending_;  // read, waiting for the routes' listing to end
    std::uint64_t conf_dir_torn_reads_ = 0;
    std::uint64_t conf_dir_errors_ = 0;
    std::uint64_t conf_dir_applies_ = 0;
    std::atomic<std::uint64_t> store_errors_{0};  // counted by the workers' route lookups too
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
    // SIGHUP's reloads (daemon_reload.cpp): the loop's thread.
    std::string config_file_;
    ConfigLoader load_config_;
    std::uint64_t reloads_ok_ = 0;
    std::uint64_t reloads_failed_ = 0;
    std::shared_ptr<dns::SharedLimits> dns_shared_;  // with workers: the limits their servers share

    // Workers (daemon_workers.cpp): none with `workers: 1`. Declared after everything that
    // puts handles on their loops (dns_, proxy_), so that their threads have ended and their
    // loops are closed before those go.
    std::size_t worker_count() const;     // asked for
    std::size_t serving_workers() const;  // running: 1 for the one loop
    void make_workers(std::size_t n);
    std::expected<void, std::string> start_dns(dns::ServerOptions options);
    void stop_dns(std::function<void()> done);
    std::string redirect_port_taken() const;
    void start_workers();
    void end_workers();
    void join_workers();
    dns::Metrics dns_metrics() const;
    std::size_t dns_in_flight() const;
    std::vector<dns::UpstreamStatus> dns_upstreams() const;
    std::unique_ptr<workers::Mailbox> control_mailbox_;  // the workers' "done"s, run on loop_
    std::vector<std::unique_ptr<workers::Worker>> workers_;
};

}  // namespace cmd
