// SIGHUP's reload of the configuration file: the keys that can change live are handed to the
// parts that use them, each on its own thread; the others are logged as needing a restart and
// keep their running values; a file that does not load changes nothing.
#include "cmd/daemon.hpp"

#include <algorithm>
#include <set>

namespace cmd {

namespace {

std::string joined(const std::vector<std::string>& keys)
{
    std::string out;
    for (const auto& k : keys) out += (out.empty() ? "" : ",") + k;
    return out.empty() ? "none" : out;
}

}  // namespace

void Daemon::reload_config()
{
    if (!load_config_) {
        log::info("daemon", "no configuration file: nothing to reload");
        return;
    }
    auto loaded = load_config_();
    if (!loaded.ok()) {
        ++reloads_failed_;
        // Every error, each with its place in the file, as at start.
        for (const auto& d : loaded.errors) log::error("daemon", "configuration file error", {{"error", d.format()}});
        log::error("daemon", "configuration not reloaded; the running configuration stays",
                   {{"file", config_file_}, {"errors", std::to_string(loaded.errors.size())}});
        return;
    }
    const conf::Config& next = loaded.config;
    auto changes = conf::reload_changes(config_, next);
    std::set<std::string> live;
    std::vector<std::string> applied, restart;
    for (const auto& c : changes) {
        if (c.live) {
            live.insert(c.key);
            continue;
        }
        restart.push_back(c.key);
        log::warn("daemon", "configuration change needs a restart; the running value stays",
                  {{"key", c.key}, {"running", c.old_value}, {"file", c.new_value}});
    }
    auto changed = [&](std::string_view prefix) {
        return std::ranges::any_of(live, [&](const std::string& k) { return k.starts_with(prefix); });
    };
    auto take = [&](std::string_view prefix) {
        for (const auto& k : live)
            if (k.starts_with(prefix)) applied.push_back(k);
    };

    if (changed("log.level")) {
        log::Level level{};
        if (log::parse_level(next.log.level, level)) {  // the loader checked it
            log::set_level(level);
            config_.log.level = next.log.level;
            take("log.level");
        }
    }
    if (changed("dns.ttl") || changed("dns.negativeTtl")) {
        config_.dns.ttl = next.dns.ttl;
        config_.dns.negative_ttl = next.dns.negative_ttl;
        auto s = dns_settings();
        responder_.set_ttls(s.ttl, s.negative_ttl);
        take("dns.ttl");
        take("dns.negativeTtl");
    }
    if (changed("dns.tcp") || changed("dns.forward.") || changed("dns.rateLimit.")) {
        auto& d = config_.dns;
        d.tcp_idle_timeout = next.dns.tcp_idle_timeout;
        d.tcp_io_timeout = next.dns.tcp_io_timeout;
        d.tcp_max_clients = next.dns.tcp_max_clients;
        d.tcp_max_clients_per_ip = next.dns.tcp_max_clients_per_ip;
        d.forward.upstreams = next.dns.forward.upstreams;
        d.forward.allow = next.dns.forward.allow;
        d.forward.timeout = next.dns.forward.timeout;
        d.forward.max_wait = next.dns.forward.max_wait;
        d.forward.max_in_flight = next.dns.forward.max_in_flight;
        d.rate_limit = next.dns.rate_limit;
        auto options = dns_options();
        // Limits shared by the workers' servers are set once, before any server takes up the
        // rate limiter they hold; each server then takes the rest on its own loop.
        if (dns_shared_) dns_shared_->set_limits(options);
        if (workers_.empty()) {
            for (auto& s : dns_) s.server->reconfigure(options);
        } else {
            for (std::size_t i = 0; i < dns_.size() && i < workers_.size(); ++i)
                workers_[i]->post([this, i, options] { dns_[i].server->reconfigure(options); });
        }
        take("dns.tcp");
        take("dns.forward.");
        take("dns.rateLimit.");
        if (changed("dns.forward.upstreams") && config_.proxy.resolvers.empty())
            log::warn("daemon", "the proxy resolves endpoint names through the DNS upstreams it started with until a restart",
                      {{"key", "proxy.resolvers"}});
    }
    if (proxy_ && (changed("proxy.connectTimeout") || changed("proxy.idleTimeout"))) {
        config_.proxy.connect_timeout = next.proxy.connect_timeout;
        config_.proxy.idle_timeout = next.proxy.idle_timeout;
        using std::chrono::duration_cast;
        using ms = std::chrono::milliseconds;
        proxy_->set_timeouts(duration_cast<ms>(config_.proxy.connect_timeout), duration_cast<ms>(config_.proxy.idle_timeout));
        take("proxy.connectTimeout");
        take("proxy.idleTimeout");
    }
    if (proxy_ && changed("proxy.accessLog.")) {
        auto format = next.proxy.access_log.format == "json" ? proxy::Options::AccessLog::Format::json
                                                             : proxy::Options::AccessLog::Format::logfmt;
        if (auto moved = proxy_->move_access_log(next.proxy.access_log.path, format); !moved) {
            log::error("proxy", "cannot move the access log; it stays where it was",
                       {{"path", next.proxy.access_log.path}, {"error", moved.error()}});
        } else {
            config_.proxy.access_log = next.proxy.access_log;
            take("proxy.accessLog.");
            log::info("proxy", "access log", {{"path", config_.proxy.access_log.path}, {"format", config_.proxy.access_log.format}});
        }
    }
    ++reloads_ok_;
    log::info("daemon", "configuration reloaded",
              {{"file", config_file_}, {"changed", joined(applied)}, {"needs_restart", joined(restart)}});
}

}  // namespace cmd
