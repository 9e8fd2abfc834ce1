// The Proxy object's state, in two places:
//   Shard       one loop's share, touched by that loop's thread only (save its counters,
//               read by status(), and `assigned`): the connections on the loop, their
//               buffer pool, the resolver for DNS-named endpoints, redirect mode's listener.
//               One per worker; with no workers, one on the control loop.
//   Proxy::Impl what the control loop owns (bind mode's listeners, the retry timer, the
//               stop sequence) and what every loop shares: the services by route (each
//               guarding itself, see balancer.hpp), redirect mode's lookup tables, the
//               global connection count.
#pragma once

#include "proxy/proxy.hpp"

#include "proxy/accept.hpp"
#include "proxy/detail/access_log.hpp"
#include "proxy/detail/balancer.hpp"
#include "proxy/detail/connection.hpp"
#include "proxy/detail/health_check.hpp"
#include "proxy/detail/listeners.hpp"
#include "proxy/detail/resolver.hpp"
#include "workers/worker.hpp"

#include <uv.h>

#include <sys/resource.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

namespace proxy {

struct Shard {
    Proxy::Impl* impl;
    workers::Worker* worker;  // null: the control loop itself (no workers)
    uv_loop_t* loop;
    std::set<Connection*> connections;
    std::unique_ptr<detail::Resolver> resolver;
    BlockPool pool;
    Listener* redirect = nullptr;  // redirect mode
    AcceptGuard accept_guard;      // for the listeners libuv accepts on here
    std::size_t closing_connections = 0;
    std::size_t closing_listeners = 0;
    bool stopping = false;
    bool stopped = false;  // reported to the control loop
    std::unique_ptr<detail::AccessLogBuffer> access_log;  // the access log is on
    // Given to each connection accepted here (Proxy::set_timeouts changes them on this loop).
    std::chrono::milliseconds connect_timeout;
    std::chrono::milliseconds idle_timeout;

    // Single writer: this loop's thread.
    workers::Counter active, total, refused, unrouted;
    workers::Counter local_failures;  // connects not even started: no socket to be had
    workers::Counter mark_failures;   // SO_MARK refused (no CAP_NET_ADMIN)
    // Bind mode with workers: descriptors the control loop has handed over and this loop has
    // not taken up yet (so that a burst of accepts is spread before any is taken up).
    std::atomic<std::uint64_t> assigned{0};

    Shard(Proxy::Impl* i, workers::Worker* w, uv_loop_t* l, const Options& options);  // after Proxy::Impl

    // Runs `fn` on this loop's thread: now on the control loop, else posted to the worker.
    void run(std::function<void()> fn)
    {
        if (worker) worker->post(std::move(fn));
        else fn();
    }
    // A connection libuv has waiting on `l`.
    void accept(Listener* l);
    // Bind mode with workers: a connection the control loop accepted, as descriptor `fd`.
    void take(int fd, std::shared_ptr<Service> service, std::uint16_t port);
    // Counts a new client connection and starts it, or refuses it (no route, over a limit).
    void admit(Connection* conn, std::shared_ptr<Service> service, std::uint16_t port);
    void close_listener(Listener* l);
    // Closes redirect mode's listener and every connection; reports once all are closed.
    void stop();
    void maybe_stopped();
};

struct Proxy::Impl {
    uv_loop_t* loop;  // the control loop
    Options options;
    std::vector<std::unique_ptr<Shard>> shards;
    bool threaded = false;  // connections live on workers' loops

    // Redirect mode's workers add services as connections first need them: the map and the
    // lookup tables are under `services_mutex` (shared for lookups). Bind mode changes them
    // on the control loop only.
    // Address series of every Service's EndpointStatsTable (declared before `services`,
    // which count down into it as they go).
    std::atomic<std::size_t> endpoint_series{0};
    mutable std::shared_mutex services_mutex;
    std::map<std::string, std::shared_ptr<Service>> services;
    // Redirect mode: the services looked up so far, by VIP and port, and by VIP for routes
    // without a port.
    std::map<std::pair<vip::Address, std::uint16_t>, std::string> by_vip_port;
    std::map<vip::Address, std::string> by_vip;
    SharedCounter active;  // connections open on every loop: maxConnections
    // The hosts file and the names' events, for every loop's resolver (set before the shards).
    std::shared_ptr<detail::ResolverShared> resolver_shared;

    // The access log's file (null: off), shared by every loop's buffer.
    std::shared_ptr<detail::AccessLogFile> access_log;
    detail::AccessFormat access_format = detail::AccessFormat::logfmt;

    // The control loop's thread only.
    std::map<std::string, Listener*> listeners;  // bind mode, by address
    std::unique_ptr<detail::AccessLogBuffer> control_log;  // threaded: connections refused here
    std::string redirect_bound;
    std::unique_ptr<AcceptGuard> accept_guard;  // polled listeners (threaded): its spare descriptor only then
    workers::Counter refused;         // closed unserved by the control loop (accepting paused)
    std::size_t next_shard = 0;       // where the search for the least busy worker starts
    uv_timer_t* retry_timer = nullptr;  // bind mode: listeners that failed are tried again
    bool stopping = false;
    std::function<void()> on_stopped;
    std::size_t closing_listeners = 0;
    std::unique_ptr<HealthChecker> checker;  // active health checks (created by start())
    std::size_t closing_checks = 0;          // their handles still closing
    std::size_t shards_running = 0;  // while stopping: shards that have not reported closed
    std::size_t max_listeners = 0;

    // Work for the control loop from the workers (a shard closed, a TLS callback), run by
    // `inbox_async` there. Threaded only.
    uv_async_t* inbox_async = nullptr;
    std::mutex inbox_mutex;
    std::vector<std::function<void()>> inbox;  // under inbox_mutex
    bool inbox_open = false;                   // under inbox_mutex
    std::function<void()> after_inbox_closed;

    Impl(uv_loop_t* l, Options o);
    ~Impl();

    // Runs `fn` on the control loop's thread: now with one loop, else posted there.
    void on_control(std::function<void()> fn);
    void drain_inbox() noexcept;

    // Redirect mode: the service for a connection to `address`:`port`, looked up on a miss.
    // Any loop's thread.
    std::shared_ptr<Service> redirected(const vip::Address& address, std::uint16_t port);
    // Puts `route` in force for `service`; reports TLS settings that became unusable.
    void adopt(Service& service, Route route);
    void index_destinations(const std::string& key, const Route& route);  // under services_mutex
    // Tells every loop's resolver which names the routes use. Any loop's thread: the set is
    // made and posted under `watch_mutex`, so that each resolver gets the last one made last.
    void watch_names();
    std::mutex watch_mutex;
    void report_tls_failure(Service& service, const std::string& reason);
    // Logs an operator's event (Options::on_event) on the control loop. Any loop's thread.
    void event(Options::Event e);
    // The same for what the health bookkeeping appended (taken), once the mutex is let go.
    void emit(std::vector<Options::Event>& events);
    HealthPolicy health_policy() const;
    // Bind mode: opens the listeners `service` lacks; false when one could not be opened.
    bool ensure_listeners(const std::string& key, Service& service);
    // While some listener could not be opened, try again every few seconds (the pool's
    // local route may be added later, a port may be freed).
    void arm_retry(bool needed);
    std::string open_listener(const std::string& key, const vip::Address& a, std::uint16_t port);
    // Redirect mode: a listener on `shard`'s loop; SO_REUSEPORT when every loop has one.
    std::expected<std::uint16_t, std::string> open_redirect_listener(Shard& shard, const vip::Address& a, std::uint16_t port);
    void close_listener(Listener* l);
    // Bind mode with workers: the connections waiting on a polled listener.
    void accept_polled(Listener* l) noexcept;
    // The worker that takes the next connection: the fewest connections (open and on their
    // way), the first of those after the last one chosen.
    Shard& least_busy();
    void maybe_stopped();
    // The access log (access_log.cpp): opened by start(); a line for a connection refused on
    // the control loop (descriptor `fd`, not yet closed).
    std::expected<void, std::string> open_access_log();
    void log_refused(int fd, const Service* service);
};

inline Shard::Shard(Proxy::Impl* i, workers::Worker* w, uv_loop_t* l, const Options& options)
    : impl(i), worker(w), loop(l),
      resolver(std::make_unique<detail::Resolver>(loop, options.resolvers, options.resolve_timeout, options.dns_min_ttl,
                                                  options.dns_max_ttl, i->resolver_shared)),
      connect_timeout(options.connect_timeout), idle_timeout(options.idle_timeout)
{
}

}  // namespace proxy
