// proxy: carries TCP connections made to a MES's VIP:port on to its endpoints — IP
// literals, DNS names (resolved here, asynchronously, and re-resolved on their TTL) and unix
// sockets — with the behaviour users know from Envoy's tcp_proxy.
//
// Glossary
//   route      a MES as the proxy sees it: VIP(s), match port, endpoints
//   listener   bind mode: one socket per VIP:port; redirect mode: one socket for all (one
//              per worker), the VIP:port read back with SO_ORIGINAL_DST
//   service    the proxy's state for one route: targets, TLS context, counters. Bind mode
//              holds one for every route (each has listeners anyway); redirect mode looks a
//              route up when a connection first needs it and keeps only those, so that a
//              store of 100,000 MES costs the proxy nothing until they carry traffic
//   target     one endpoint of a route, with its health: consecutive failures and, after
//              enough of them, an ejection that doubles each time (up to a bound). A DNS
//              name's health is kept per address it resolves to (as Envoy's STRICT_DNS hosts
//              are): an address ejected is passed over while the name's others are fine
//   pump       the two sockets of a proxied connection; each side is read only while the
//              other's write queue is below a watermark, so memory per connection is bounded
//
// Balancing: round robin over the healthy targets of the lowest priority that has any; a
// failed or timed-out connect tries the next target, up to a number of attempts; when every
// target is ejected, the lowest priority is tried anyway (as Envoy's panic mode does) so that
// an outage ends as soon as an endpoint is back. When nothing can be reached the client is
// reset, or, for `protocol: http`, answered 502 or 503 (detail/http.hpp) and then closed. A
// route's failures never touch another route. A TLS handshake that fails in a way
// certain to repeat (a certificate that does not verify, a name that does not match) is not
// tried again on the same endpoint by the same client. Active health checks
// (Options::health_check, health_check.cpp) take an address that fails them out of the
// choice as an ejection does, until it passes them again.
//
// What an operator sees of each connection: an access log line when it ends (Options::
// access_log; detail/access_log.hpp: each loop buffers its own lines and writes them with one
// write(2) per loop turn) and, per endpoint address reached, open connections, bytes and the
// latency of connects and TLS handshakes (ServiceStatus::traffic; detail/endpoint_stats.hpp:
// atomics, looked up once per connection, at most 16 addresses per endpoint and 4096 in all).
//
// Loops. With no workers (Options::workers empty) everything runs on the one loop given to
// the constructor. With workers, that loop is the control loop and each worker's loop
// carries connections:
//   bind mode      the listeners stay on the control loop, one per VIP:port as with one
//                  loop; the control loop accepts (accept4 on a polled socket) and posts the
//                  descriptor to the worker with the fewest connections (open or on their
//                  way; ties in turn), which opens it on its loop (uv_tcp_open). From there
//                  the connection lives on that worker only. So descriptors stay one per
//                  VIP:port plus two per connection, whatever the number of workers.
//   redirect mode  every worker has a listener of its own on redirectListen with
//                  SO_REUSEPORT and the kernel spreads connections over them; with port 0
//                  the first binds and the others take the port it got.
// Shared by every loop, with no copy per worker: the services (one per route) hold their
// route, targets and TLS context in an immutable Routing swapped whole on a change (a
// connection's next choice of target sees the new one; a TLS session keeps its context);
// an endpoint's health (failures in a row, ejection, backoff) and the round-robin cursors
// are under the service's mutex, taken to choose a target and to record a connect's
// outcome, never per byte, with a clock common to all threads; the connection limits and
// the services' counters are atomics. Redirect mode's lookup tables
// are under a shared mutex (workers add the routes they meet). TLS contexts are shared, their
// session caches under a mutex. Per worker: its connections, its buffer pool, its counters
// (summed by status()), its resolver for DNS-named endpoints (each worker resolves the names
// its connections need and keeps them fresh, so a name is asked once per worker: simpler
// than one resolver answering every loop across threads, and no connection waits on the
// control loop).
//
// Threads. The Proxy is made, and start() called, on the control loop's thread before the
// workers' threads start (start() sets handles up on their loops). From then on every method
// is called on the control loop's thread; stop()'s `done`, and on_tls_failure, on_event and
// on_tls_unusable, run there too. Active health checks run on the control loop. find_route
// runs on the workers' threads (several at once) while find_named_route may run on the
// control loop's (reload()): both must be thread-safe. stop() must be called, and `done`
// awaited, before the workers finish; the Proxy is destroyed after that.
#pragma once

#include "conf/conf.hpp"
#include "vip/vip.hpp"

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace workers {
class Worker;
}

namespace proxy {

struct Route {
    std::string mesh;
    std::string name;
    std::optional<vip::Address> ipv4;
    std::optional<vip::Address> ipv6;
    std::optional<std::uint16_t> port;  // match.port; absent: every port of the VIP
    conf::Protocol protocol = conf::Protocol::tcp;
    std::vector<conf::Endpoint> endpoints;
    // TLS origination (`tls.enabled`), with the PEM its data sources hold.
    std::optional<conf::Tls> tls;
    std::string tls_ca_pem, tls_cert_pem, tls_key_pem;
    std::string tls_error;  // a data source that could not be read: connections are refused
    // The label mesd.io/health-check: true or false turns active checks on or off for this
    // MES whatever Options::health_check.enabled says; nullopt: as that says.
    std::optional<bool> health_check;

    std::string key() const { return mesh + "/" + name; }
    bool operator==(const Route&) const = default;
};

struct Options {
    enum class Mode { bind, redirect };
    Mode mode = Mode::bind;
    conf::HostPort redirect_listen{"127.0.0.1", 15001};
    std::chrono::milliseconds connect_timeout{5000};
    std::chrono::milliseconds idle_timeout{3600 * 1000};
    std::uint32_t max_connections = 100000;
    std::uint32_t max_connections_per_service = 0;  // 0: only the global limit
    std::uint32_t connect_attempts = 3;             // targets tried per client connection
    std::uint32_t upstream_mark = 0;                // SO_MARK on connections to targets; 0: none
    std::uint32_t eject_after = 3;                  // consecutive connect failures
    std::chrono::milliseconds eject_base{5000};     // first ejection; doubles on each next one
    std::chrono::milliseconds eject_max{300 * 1000};
    // Active health checks, per endpoint address, from the control loop: a TCP connect, and
    // the TLS handshake (verified as connections verify it) where the MES originates TLS.
    struct HealthCheck {
        bool enabled = false;  // for every MES; Route::health_check overrides it per MES
        std::chrono::milliseconds interval{10000};
        std::chrono::milliseconds timeout{2000};
        std::uint32_t healthy_threshold = 2;    // passes in a row that bring an address back
        std::uint32_t unhealthy_threshold = 3;  // failures in a row that take it out
    } health_check;
    // Nameservers for DNS-named endpoints.
    std::vector<conf::HostPort> resolvers;
    std::chrono::milliseconds resolve_timeout{2000};
    std::chrono::milliseconds dns_min_ttl{1000};
    std::chrono::milliseconds dns_max_ttl{300 * 1000};
    // Read before DNS for those names (as getaddrinfo does); again when it changes. "": none.
    std::string hosts_file = "/etc/hosts";
    // Per direction: stop reading a side while the other side has this much queued; resume
    // below the low mark.
    std::size_t high_watermark = std::size_t{256} << 10;
    std::size_t low_watermark = std::size_t{64} << 10;
    // One line per connection when it ends (see detail/access_log.hpp): path "stdout",
    // "stderr" or a file; empty: no access log.
    struct AccessLog {
        std::string path;
        enum class Format { logfmt, json } format = Format::logfmt;
    };
    AccessLog access_log;
    // Called the first time a MES sees a TLS handshake fail for a given reason.
    std::function<void(const std::string& mesh, const std::string& name, const std::string& reason)> on_tls_failure;
    // What an operator wants in the log as it happens: an endpoint ejected or back, a name's
    // addresses changed or failing to resolve, a TLS handshake starting to fail. Called on
    // the control loop's thread (Impl::event posts it there from any loop).
    struct Event {
        enum class Level { info, warn } level = Level::info;
        std::string message;
        std::vector<std::pair<std::string, std::string>> fields;  // mesh, name, endpoint, reason...
    };
    std::function<void(const Event&)> on_event;
    // Called when a MES's TLS settings become unusable (a bad PEM, a missing Secret), or
    // unusable for another reason; its connections are refused.
    std::function<void(const std::string& mesh, const std::string& name, const std::string& reason)> on_tls_unusable;
    // Redirect mode: the route that takes connections to `address`:`port` (its VIP, and its
    // match.port unless it has none), and the route of a MES by name. `failed` when the
    // routes could not be read: a route the proxy holds is then kept as it is.
    struct Lookup {
        std::optional<Route> route;
        bool failed = false;
    };
    std::function<Lookup(const vip::Address& address, std::uint16_t port)> find_route;
    std::function<Lookup(const std::string& mesh, const std::string& name)> find_named_route;
    // The workers whose loops carry the connections, not yet started (see Threads above);
    // empty: everything on the one loop given to the constructor.
    std::vector<workers::Worker*> workers;
};

// The health of one address of a DNS-named endpoint (or of an IP or unix endpoint).
struct AddressStatus {
    std::string address;  // "10.0.0.1:443"
    // "healthy", "failing" (failed since its last success), "ejected", "unhealthy" (failed
    // its active checks)
    std::string state;
    std::uint32_t consecutive_failures = 0;
    std::uint64_t connect_failures = 0;
    std::uint64_t handshake_failures = 0;
    std::uint64_t ejections = 0;
    std::string last_failure;  // RFC 3339 UTC; "" when it never failed
    std::string last_failure_reason;
    // Active checks: "" (not checked), "passing" or "failing"; counts; the last one's time
    // (RFC 3339) and error.
    std::string check;
    std::uint64_t checks_passed = 0, checks_failed = 0;
    std::string last_check, last_check_error;
};

struct TargetStatus {
    std::string address;  // as configured ("10.0.0.1:443", "example.com:443", "unix:///run/x.sock")
    std::uint8_t priority = 0;
    // "healthy", "failing", "ejected", "unhealthy" (fails its active checks), "unresolved";
    // DNS names: "ejected" when every address is ejected or unhealthy, "failing" when some
    // is not healthy
    std::string state;
    std::uint32_t consecutive_failures = 0;
    std::uint64_t connect_failures = 0;  // DNS names: of every address, those gone included
    std::uint64_t ejections = 0;
    std::vector<std::string> resolved;  // DNS names: the addresses in use
    std::uint64_t handshake_failures = 0;
    std::string last_failure;  // RFC 3339 UTC; DNS names: the latest of its addresses'
    std::string last_failure_reason;
    bool health_checked = false;  // active checks run for this endpoint's MES
    std::string check;            // as AddressStatus::check; DNS names: "failing" when any address fails
    std::uint64_t checks_passed = 0, checks_failed = 0;
    std::vector<AddressStatus> addresses;  // DNS names: one per address it resolves to
};

// Figures of one address an endpoint was reached at (see detail/endpoint_stats.hpp).
struct AddressTraffic {
    std::string endpoint;  // as configured (TargetStatus::address)
    std::string address;   // as connected: "ip:port", a unix socket's path, or "other"
    std::uint64_t active = 0;
    std::uint64_t bytes_up = 0;
    std::uint64_t bytes_down = 0;
    // Cumulative counts per bound of latency_bounds_seconds(), then +Inf (the count), and the
    // sum in seconds.
    struct Histogram {
        std::vector<std::uint64_t> cumulative;
        double sum_seconds = 0;
    };
    Histogram connect;        // successful connects (TCP or unix)
    Histogram tls_handshake;  // completed TLS handshakes
};
// The upper bounds of AddressTraffic's histograms, in seconds (1 ms to 10 s).
std::vector<double> latency_bounds_seconds();

struct ServiceStatus {
    std::string mesh;
    std::string name;
    std::vector<std::string> listeners;  // "127.242.0.1:80"
    std::string listen_error;            // why it has no listener ("", or the reason)
    std::uint64_t active = 0;
    std::uint64_t total = 0;
    std::uint64_t refused = 0;           // over a connection limit
    std::uint64_t failed = 0;            // no target could be reached: the client was reset (http: a 502/503)
    std::uint64_t bytes_up = 0;          // client to endpoint
    std::uint64_t bytes_down = 0;        // endpoint to client
    std::string tls_error;               // the TLS settings cannot be used (a bad PEM, a missing Secret)
    std::map<std::string, std::uint64_t> tls_failures;  // handshakes failed, by reason
    std::uint64_t tls_handshakes = 0;    // completed
    std::uint64_t tls_resumed = 0;       // of those, resumed sessions
    std::vector<TargetStatus> targets;
    std::vector<AddressTraffic> traffic;  // by endpoint, then address
};

struct WorkerStatus {
    std::uint64_t active = 0;  // connections open on this worker's loop
    std::uint64_t total = 0;   // connections it has taken up
};

struct Status {
    std::uint64_t active = 0;
    std::uint64_t total = 0;
    std::uint64_t refused = 0;
    std::uint64_t unrouted = 0;  // redirect mode: an original destination no route claims
    std::uint64_t local_failures = 0;  // no socket for a connect (out of file descriptors)
    std::uint64_t mark_failures = 0;   // proxy.upstreamMark could not be set (no CAP_NET_ADMIN)
    std::uint64_t accept_errors = 0;   // accept failed for want of descriptors (EMFILE, ENFILE)
    std::uint64_t access_log_write_errors = 0;  // writes of access log lines that failed (lines lost)
    std::vector<ServiceStatus> services;  // by key; redirect mode: those that have had connections
    std::vector<WorkerStatus> workers;    // as in Options::workers; empty with one loop
};

class Proxy {
public:
    Proxy(void* uv_loop, Options options);
    ~Proxy();
    Proxy(const Proxy&) = delete;
    Proxy& operator=(const Proxy&) = delete;

    // Opens the access log (Options::access_log; nothing to do without one) and gives each
    // loop its buffer: before start(), while only the control loop's thread runs. The error
    // says why the file cannot be opened.
    std::expected<void, std::string> open_access_log();
    // Redirect mode: binds the listener (one per worker). Bind mode: nothing to do until
    // routes come.
    std::expected<void, std::string> start();
    // Opens the access log's file again (logrotate renamed it): lines from now on go to the
    // file the path names now. Nothing to do without one, or for stdout and stderr. The
    // control loop's thread; on failure the old file stays in use.
    std::expected<void, std::string> reopen_access_log();
    // A reload: the access log goes to `path` in `format` from now on (lines not yet
    // written included). The control loop's thread; an error (the log is off: turning it on
    // needs a restart; the file cannot be opened) leaves it as it was.
    std::expected<void, std::string> move_access_log(const std::string& path, Options::AccessLog::Format format);
    // A reload: the connect and idle timeouts of connections accepted from now on, taken up by
    // each loop on its own thread; open connections keep those they started with. The
    // control loop's thread.
    void set_timeouts(std::chrono::milliseconds connect_timeout, std::chrono::milliseconds idle_timeout);
    // Bind mode: the routes in force from now on. New ones listen, removed ones stop
    // accepting (their open connections go on), changed ones apply to new connections.
    // Targets keep their health across updates when their address stays.
    void update(std::vector<Route> routes);
    // Redirect mode: the routes may have changed (the store moved). The routes connections
    // have used are looked up again: changed ones apply to new connections, removed ones are
    // forgotten (their open connections go on). Others are looked up when first needed.
    void reload();
    // Closes listeners; open connections are closed too, then `done` runs (on the control
    // loop, once every worker has closed its listeners and connections).
    void stop(std::function<void()> done);

    Status status() const;
    // The MES that cannot listen (cheap, unlike status()).
    struct Problem {
        std::string mesh, name, listen_error;
    };
    std::vector<Problem> problems() const;
    // Redirect mode: the address actually bound.
    std::string bound() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

// The destination a redirected connection was meant for (SO_ORIGINAL_DST or
// IP6T_SO_ORIGINAL_DST on socket `fd`).
std::optional<std::pair<vip::Address, std::uint16_t>> original_destination(int fd);

}  // namespace proxy
