// The daemon's workers: how many, where they run, the DNS servers on them, and the totals
// of what they count. With one worker there are no threads: the one DNS server and the proxy
// run on the control loop, as they always have.
//
// Per worker (workers_[i], dns_[i]): a thread and its loop, a DNS server bound with
// SO_REUSEPORT to every dns.listen address, and its view of the name index (a CatalogSource,
// with its own TXT cache). Shared by all of them: the name index itself (published by
// source_ on the control loop, taken by each view when its version moves), the responder
// (read only), the rate-limit buckets, TCP client counts and forwarder state (upstream
// records, maxInFlight, loop token, questions asked: one dns::SharedLimits), and the proxy's
// routes, endpoint health and limits (inside proxy::Proxy).
#include "cmd/daemon.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace cmd {

namespace {

// Why `hp` cannot be had by this process alone ("" when it can): a bind with no SO_REUSEPORT,
// of a UDP socket when `udp` and of a TCP one. The workers' sockets share their ports with
// SO_REUSEPORT, which would also let them join a port another process of this user holds the
// same way (a second mesd, an old one still running) and share its traffic without a word; a
// bind that shares nothing fails then, as a one-loop mesd's does. Port 0 asks for a free port.
std::string held_elsewhere(const conf::HostPort& hp, bool udp)
{
    if (hp.port == 0) return {};
    sockaddr_storage ss{};
    socklen_t len = 0;
    std::string host = hp.host.empty() ? "0.0.0.0" : hp.host;
    if (host.find(':') != std::string::npos) {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(hp.port);
        if (::inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr) != 1) return {};
        len = sizeof *in6;
    } else {
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        in->sin_family = AF_INET;
        in->sin_port = htons(hp.port);
        if (::inet_pton(AF_INET, host.c_str(), &in->sin_addr) != 1) return {};
        len = sizeof *in;
    }
    for (int type : {SOCK_DGRAM, SOCK_STREAM}) {
        if (type == SOCK_DGRAM && !udp) continue;
        int fd = ::socket(ss.ss_family, type | SOCK_CLOEXEC, 0);
        if (fd < 0) return {};  // the workers' own bind will say why
        int on = 1, off = 0;
        // As the workers' sockets are set: connections of an earlier run in TIME_WAIT do not
        // hold the port, and an IPv6 wildcard covers IPv4 too.
        if (type == SOCK_STREAM) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
        if (ss.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&ss), len);
        int err = errno;
        ::close(fd);
        if (rc != 0 && err == EADDRINUSE)
            return hp.to_string() + (type == SOCK_DGRAM ? " (udp)" : " (tcp)") + ": " + std::strerror(err);
    }
    return {};
}

}  // namespace

// main() settles `workers: 0` (one per CPU) before the descriptors are shared out.
std::size_t Daemon::worker_count() const { return std::max<std::uint32_t>(config_.workers, 1); }

std::size_t Daemon::serving_workers() const { return std::max<std::size_t>(1, workers_.size()); }

void Daemon::make_workers(std::size_t n)
{
    // workerAffinity: auto pins worker i to the i-th CPU mesd may run on, round again past
    // the last; none leaves them to the scheduler.
    auto cpus = workers::allowed_cpus();
    bool pin = config_.worker_affinity == "auto" && !cpus.empty();
    for (std::size_t i = 0; i < n; ++i) {
        std::optional<int> cpu;
        if (pin) cpu = cpus[i % cpus.size()];
        workers_.push_back(std::make_unique<workers::Worker>(i, cpu));
    }
    control_mailbox_ = std::make_unique<workers::Mailbox>(&loop_);
}

std::expected<void, std::string> Daemon::start_dns(dns::ServerOptions options)
{
    if (workers_.empty()) {
        dns_.push_back({nullptr, std::make_unique<dns::Server>(&loop_, responder_, source_, options)});
        return dns_.back().server->start();
    }
    for (const auto& hp : options.listen)
        if (auto why = held_elsewhere(hp, true); !why.empty()) return std::unexpected("dns.listen " + why);
    options.reuse_port = true;
    options.shared = std::make_shared<dns::SharedLimits>(options);
    dns_shared_ = options.shared;
    for (auto& w : workers_) {
        auto view = std::make_unique<dns::CatalogSource>(*store_, source_.shared());
        auto server = std::make_unique<dns::Server>(w->loop(), responder_, *view, options);
        dns_.push_back({std::move(view), std::move(server)});
        if (auto started = dns_.back().server->start(); !started) return started;
        if (dns_.size() == 1) {
            // Port 0 means "any": every other worker takes the ports the first one got, so
            // that they share its sockets' addresses and the kernel spreads queries over them.
            options.listen.clear();
            for (const auto& b : dns_.front().server->bound())
                if (auto hp = conf::parse_host_port(b)) options.listen.push_back(*hp);
        }
    }
    return {};
}

std::string Daemon::redirect_port_taken() const
{
    if (workers_.empty() || config_.proxy.mode != "redirect") return {};
    auto why = held_elsewhere(config_.proxy.redirect_listen, false);
    return why.empty() ? why : "proxy.redirectListen " + why;
}

void Daemon::stop_dns(std::function<void()> done)
{
    if (dns_.empty()) return done();
    if (workers_.empty()) return dns_.front().server->stop(std::move(done));
    // Each server stops on its own thread; the last to finish tells the control loop.
    auto remaining = std::make_shared<std::size_t>(dns_.size());
    for (std::size_t i = 0; i < dns_.size(); ++i) {
        workers_[i]->post([this, i, remaining, done] {
            dns_[i].server->stop([this, remaining, done] {
                control_mailbox_->post([remaining, done] {
                    if (--*remaining == 0) done();
                });
            });
        });
    }
}

void Daemon::start_workers()
{
    for (auto& w : workers_) w->start();
}

void Daemon::end_workers()
{
    // Every handle on the workers' loops is closed by now (the DNS servers and the proxy
    // stopped): their loops end once told to.
    for (auto& w : workers_) w->finish();
    if (control_mailbox_) control_mailbox_->close();
}

void Daemon::join_workers()
{
    for (auto& w : workers_) w->join();
}

dns::Metrics Daemon::dns_metrics() const
{
    dns::Metrics total;
    for (const auto& d : dns_) total += d.server->metrics();
    return total;
}

std::size_t Daemon::dns_in_flight() const
{
    std::size_t n = 0;
    for (const auto& d : dns_) n += d.server->in_flight();
    return n;
}

// The workers' servers share one record per upstream (dns::SharedLimits): each reports the
// same list, best first, so the first one's is the whole.
std::vector<dns::UpstreamStatus> Daemon::dns_upstreams() const
{
    if (dns_.empty()) return {};
    return dns_.front().server->upstreams();
}

}  // namespace cmd
