// The Proxy object's state, which its connections and listeners reach through their `impl`:
// the services by route, the listeners, the open connections, the resolver, the buffer pool
// and the counters.
#pragma once

#include "proxy/proxy.hpp"

#include "proxy/accept.hpp"
#include "proxy/detail/balancer.hpp"
#include "proxy/detail/connection.hpp"
#include "proxy/detail/listeners.hpp"
#include "proxy/detail/resolver.hpp"

#include <uv.h>

#include <sys/resource.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>

namespace proxy {

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

}  // namespace proxy
