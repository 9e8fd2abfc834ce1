// What a reload of the configuration file changes, key by key, and which keys the running
// daemon can take without a restart.
#include "conf/conf.hpp"

#include <algorithm>
#include <array>
#include <functional>
#include <string>

namespace conf {

namespace {

std::string text(bool b) { return b ? "true" : "false"; }
std::string text(std::uint32_t n) { return std::to_string(n); }
std::string text(std::uint16_t n) { return std::to_string(n); }
std::string text(Duration d) { return format_duration(d); }
std::string text(const std::string& s) { return s.empty() ? "\"\"" : s; }
std::string text(const HostPort& hp) { return hp.to_string(); }
template <class T>
std::string text(const std::vector<T>& list)
{
    std::string out = "[";
    for (const auto& v : list) out += (out.size() > 1 ? "," : "") + text(v);
    return out + "]";
}

struct Key {
    ConfigKey key;
    std::function<std::string(const Config&)> value;
};

#define MESD_KEY(name, live, expr) \
    Key { ConfigKey{name, live}, [](const Config& c) { return text(c.expr); } }

// Live: what the daemon hands its parts while they run (the log's level, the responder's
// TTLs, each DNS server's forwarder and limits, the proxy's timeouts and access log). The
// rest is bound into what was built at start: sockets (listen addresses), the store and what
// was written to it (dataDir, meshes, zone, the VIP pools), the threads (workers), the
// cluster mirror, the proxy's mode, limits counted against the descriptors shared out at
// start, its resolvers and health checks.
// Keys added to the file later go here too; those that need a restart (the process's user,
// its sandbox) with `false`.
const std::vector<Key>& keys()
{
    static const std::vector<Key> all = {
        MESD_KEY("log.level", true, log.level),
        MESD_KEY("dns.ttl", true, dns.ttl),
        MESD_KEY("dns.negativeTtl", true, dns.negative_ttl),
        MESD_KEY("dns.tcpIdleTimeout", true, dns.tcp_idle_timeout),
        MESD_KEY("dns.tcpIoTimeout", true, dns.tcp_io_timeout),
        MESD_KEY("dns.tcpMaxClients", true, dns.tcp_max_clients),
        MESD_KEY("dns.tcpMaxClientsPerIp", true, dns.tcp_max_clients_per_ip),
        MESD_KEY("dns.forward.upstreams", true, dns.forward.upstreams),
        MESD_KEY("dns.forward.allow", true, dns.forward.allow),
        MESD_KEY("dns.forward.timeout", true, dns.forward.timeout),
        MESD_KEY("dns.forward.maxWait", true, dns.forward.max_wait),
        MESD_KEY("dns.forward.maxInFlight", true, dns.forward.max_in_flight),
        MESD_KEY("dns.rateLimit.responsesPerSecond", true, dns.rate_limit.responses_per_second),
        MESD_KEY("dns.rateLimit.burst", true, dns.rate_limit.burst),
        MESD_KEY("dns.rateLimit.slip", true, dns.rate_limit.slip),
        MESD_KEY("dns.rateLimit.ipv4PrefixLength", true, dns.rate_limit.ipv4_prefix_length),
        MESD_KEY("dns.rateLimit.ipv6PrefixLength", true, dns.rate_limit.ipv6_prefix_length),
        MESD_KEY("dns.rateLimit.tableSize", true, dns.rate_limit.table_size),
        MESD_KEY("dns.rateLimit.exempt", true, dns.rate_limit.exempt),
        MESD_KEY("proxy.connectTimeout", true, proxy.connect_timeout),
        MESD_KEY("proxy.idleTimeout", true, proxy.idle_timeout),
        // Live from one file to another; turning the log on or off needs a restart (see
        // reload_changes).
        MESD_KEY("proxy.accessLog.path", true, proxy.access_log.path),
        MESD_KEY("proxy.accessLog.format", true, proxy.access_log.format),

        MESD_KEY("dataDir", false, data_dir),
        MESD_KEY("meshes", false, meshes),
        MESD_KEY("zone", false, zone),
        MESD_KEY("defaultHostnameGenerators", false, default_hostname_generators),
        MESD_KEY("workers", false, workers),
        MESD_KEY("workerAffinity", false, worker_affinity),
        MESD_KEY("dns.listen", false, dns.listen),
        MESD_KEY("dns.zones", false, dns.zones),
        MESD_KEY("dns.ednsUdpSize", false, dns.edns_udp_size),
        MESD_KEY("dns.forward.enabled", false, dns.forward.enabled),
        MESD_KEY("vip.ipv4", false, vip.ipv4),
        MESD_KEY("vip.ipv6", false, vip.ipv6),
        MESD_KEY("vip.quarantine", false, vip.quarantine),
        MESD_KEY("proxy.mode", false, proxy.mode),
        MESD_KEY("proxy.redirectListen", false, proxy.redirect_listen),
        MESD_KEY("proxy.maxConnections", false, proxy.max_connections),
        MESD_KEY("proxy.maxConnectionsPerService", false, proxy.max_connections_per_service),
        MESD_KEY("proxy.upstreamMark", false, proxy.upstream_mark),
        MESD_KEY("proxy.connectAttempts", false, proxy.connect_attempts),
        MESD_KEY("proxy.ejectAfter", false, proxy.eject_after),
        MESD_KEY("proxy.ejectBase", false, proxy.eject_base),
        MESD_KEY("proxy.ejectMax", false, proxy.eject_max),
        MESD_KEY("proxy.resolvers", false, proxy.resolvers),
        MESD_KEY("proxy.resolveTimeout", false, proxy.resolve_timeout),
        MESD_KEY("proxy.dnsMinTtl", false, proxy.dns_min_ttl),
        MESD_KEY("proxy.dnsMaxTtl", false, proxy.dns_max_ttl),
        MESD_KEY("proxy.hostsFile", false, proxy.hosts_file),
        MESD_KEY("proxy.healthCheck.enabled", false, proxy.health_check.enabled),
        MESD_KEY("proxy.healthCheck.interval", false, proxy.health_check.interval),
        MESD_KEY("proxy.healthCheck.timeout", false, proxy.health_check.timeout),
        MESD_KEY("proxy.healthCheck.healthyThreshold", false, proxy.health_check.healthy_threshold),
        MESD_KEY("proxy.healthCheck.unhealthyThreshold", false, proxy.health_check.unhealthy_threshold),
        MESD_KEY("admin.listen", false, admin.listen),
        MESD_KEY("cluster", false, cluster.enabled),
        MESD_KEY("cluster.nodeName", false, cluster.node_name),
        MESD_KEY("cluster.etcd.endpoints", false, cluster.etcd.endpoints),
        MESD_KEY("cluster.etcd.prefix", false, cluster.etcd.prefix),
        MESD_KEY("cluster.etcd.tls", false, cluster.etcd.tls),
        MESD_KEY("cluster.etcd.caFile", false, cluster.etcd.ca_file),
        MESD_KEY("cluster.etcd.certFile", false, cluster.etcd.cert_file),
        MESD_KEY("cluster.etcd.keyFile", false, cluster.etcd.key_file),
        MESD_KEY("cluster.etcd.username", false, cluster.etcd.username),
        MESD_KEY("cluster.etcd.password", false, cluster.etcd.password),
        MESD_KEY("cluster.etcd.dialTimeout", false, cluster.etcd.dial_timeout),
        MESD_KEY("cluster.etcd.requestTimeout", false, cluster.etcd.request_timeout),
        MESD_KEY("user", false, user),
        MESD_KEY("sandbox", false, sandbox),
    };
    return all;
}

#undef MESD_KEY

constexpr std::string_view hidden_keys[] = {"cluster.etcd.password"};

}  // namespace

std::span<const ConfigKey> reload_keys()
{
    static const std::vector<ConfigKey> list = [] {
        std::vector<ConfigKey> out;
        for (const auto& k : keys()) out.push_back(k.key);
        return out;
    }();
    return list;
}

std::vector<ConfigChange> reload_changes(const Config& running, const Config& loaded)
{
    std::vector<ConfigChange> out;
    for (const auto& k : keys()) {
        auto before = k.value(running), after = k.value(loaded);
        if (before == after) continue;
        ConfigChange change{std::string(k.key.key), std::move(before), std::move(after), k.key.live};
        if (std::ranges::find(hidden_keys, k.key.key) != std::end(hidden_keys))
            change.old_value = change.new_value = "(hidden)";
        // The access log's buffers are set up on every loop at start, only when it is on:
        // moving it to another file is live, turning it on or off is not.
        if (change.key == "proxy.accessLog.path" && (running.proxy.access_log.path.empty() || loaded.proxy.access_log.path.empty()))
            change.live = false;
        out.push_back(std::move(change));
    }
    return out;
}

}  // namespace conf
