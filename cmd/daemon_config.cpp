// /config: what the daemon serves, as JSON.
#include "cmd/daemon.hpp"
#include "cmd/output.hpp"

namespace cmd {

std::string Daemon::config_json()
{
    cmd::Value root = cmd::Value::object();
    root.set("generation", static_cast<std::int64_t>(source_.generation()));
    root.set("workers", static_cast<std::int64_t>(serving_workers()));
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
    {
        // The values in force of what a reload can change (SIGHUP), and the reloads so far.
        using conf::format_duration;
        cmd::Value& c = root.set("configuration", cmd::Value::object());
        if (!config_file_.empty()) c.set("file", config_file_);
        c.set("reloads", static_cast<std::int64_t>(reloads_ok_));
        c.set("failedReloads", static_cast<std::int64_t>(reloads_failed_));
        c.set("logLevel", config_.log.level);
        const auto& d = config_.dns;
        cmd::Value& dns = c.set("dns", cmd::Value::object());
        dns.set("ttl", format_duration(d.ttl));
        dns.set("negativeTtl", format_duration(d.negative_ttl));
        dns.set("tcpIdleTimeout", format_duration(d.tcp_idle_timeout));
        dns.set("tcpIoTimeout", format_duration(d.tcp_io_timeout));
        dns.set("tcpMaxClients", static_cast<std::int64_t>(d.tcp_max_clients));
        dns.set("tcpMaxClientsPerIp", static_cast<std::int64_t>(d.tcp_max_clients_per_ip));
        cmd::Value& fwd = dns.set("forward", cmd::Value::object());
        cmd::Value& ups = fwd.set("upstreams", cmd::Value::array());
        for (const auto& u : d.forward.upstreams) ups.push(u.to_string());
        cmd::Value& allow = fwd.set("allow", cmd::Value::array());
        for (const auto& a : d.forward.allow) allow.push(a);
        fwd.set("timeout", format_duration(d.forward.timeout));
        fwd.set("maxWait", format_duration(d.forward.max_wait));
        fwd.set("maxInFlight", static_cast<std::int64_t>(d.forward.max_in_flight));
        cmd::Value& rrl = dns.set("rateLimit", cmd::Value::object());
        rrl.set("responsesPerSecond", static_cast<std::int64_t>(d.rate_limit.responses_per_second));
        rrl.set("burst", static_cast<std::int64_t>(d.rate_limit.burst));
        rrl.set("slip", static_cast<std::int64_t>(d.rate_limit.slip));
        cmd::Value& px = c.set("proxy", cmd::Value::object());
        px.set("connectTimeout", format_duration(config_.proxy.connect_timeout));
        px.set("idleTimeout", format_duration(config_.proxy.idle_timeout));
        cmd::Value& al = px.set("accessLog", cmd::Value::object());
        al.set("path", config_.proxy.access_log.path);
        al.set("format", config_.proxy.access_log.format);
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
                e.set("consecutiveFailures", static_cast<std::int64_t>(t.consecutive_failures));
                e.set("connectFailures", static_cast<std::int64_t>(t.connect_failures));
                e.set("handshakeFailures", static_cast<std::int64_t>(t.handshake_failures));
                e.set("ejections", static_cast<std::int64_t>(t.ejections));
                if (!t.last_failure.empty()) {
                    e.set("lastFailure", t.last_failure);
                    e.set("lastFailureReason", t.last_failure_reason);
                }
                if (t.health_checked) {
                    cmd::Value& c = e.set("check", cmd::Value::object());
                    c.set("state", t.check.empty() ? std::string("pending") : t.check);
                    c.set("passed", static_cast<std::int64_t>(t.checks_passed));
                    c.set("failed", static_cast<std::int64_t>(t.checks_failed));
                }
                if (!t.resolved.empty()) {
                    cmd::Value& r = e.set("resolved", cmd::Value::array());
                    for (const auto& a : t.resolved) r.push(a);
                }
                if (!t.addresses.empty()) {
                    cmd::Value& list = e.set("addresses", cmd::Value::array());
                    for (const auto& a : t.addresses) {
                        cmd::Value& x = list.push(cmd::Value::object());
                        x.set("address", a.address);
                        x.set("state", a.state);
                        x.set("consecutiveFailures", static_cast<std::int64_t>(a.consecutive_failures));
                        x.set("connectFailures", static_cast<std::int64_t>(a.connect_failures));
                        x.set("handshakeFailures", static_cast<std::int64_t>(a.handshake_failures));
                        x.set("ejections", static_cast<std::int64_t>(a.ejections));
                        if (!a.last_failure.empty()) {
                            x.set("lastFailure", a.last_failure);
                            x.set("lastFailureReason", a.last_failure_reason);
                        }
                        if (t.health_checked) {
                            cmd::Value& c = x.set("check", cmd::Value::object());
                            c.set("state", a.check.empty() ? std::string("pending") : a.check);
                            c.set("passed", static_cast<std::int64_t>(a.checks_passed));
                            c.set("failed", static_cast<std::int64_t>(a.checks_failed));
                            if (!a.last_check.empty()) c.set("last", a.last_check);
                            if (!a.last_check_error.empty()) c.set("lastError", a.last_check_error);
                        }
                    }
                }
            }
        }
    }
    return root.json();
}

}  // namespace cmd
