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

#include <algorithm>

namespace cmd {

std::size_t Daemon::worker_count() const
{
    if (config_.workers > 0) return config_.workers;
    return std::max<std::size_t>(1, workers::allowed_cpus().size());
}

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
    options.reuse_port = true;
    options.shared = std::make_shared<dns::SharedLimits>(options);
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
