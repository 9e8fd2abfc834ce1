// /config and /status.json: what the daemon serves, as JSON; and the status page drawn
// from the latter.
#include "cmd/daemon.hpp"
#include "cmd/view.hpp"

#include <unordered_map>

namespace cmd {

namespace {

using json = nlohmann::ordered_json;

// Figures are written as unsigned, as /config always had them.
// The failure figures an endpoint (proxy::TargetStatus) and each of its addresses
// (proxy::AddressStatus) have alike.
template <typename Status>
void put_failures(json& e, const Status& s)
{
    e["consecutiveFailures"] = static_cast<std::uint64_t>(s.consecutive_failures);
    e["connectFailures"] = s.connect_failures;
    e["handshakeFailures"] = s.handshake_failures;
    e["ejections"] = s.ejections;
    if (!s.last_failure.empty()) {
        e["lastFailure"] = s.last_failure;
        e["lastFailureReason"] = s.last_failure_reason;
    }
}

// What /config and /status.json both say of this node's link to etcd.
json cluster_state(const std::string& node, const store::cluster::Mirror::State& st)
{
    json c = json::object();
    c["node"] = node;
    c["connected"] = st.connected;
    c["endpoint"] = st.endpoint;
    c["revision"] = st.revision;
    return c;
}

json health_of(const proxy::TargetStatus& t)
{
    json e = json::object();
    e["address"] = t.address;
    e["priority"] = static_cast<std::uint64_t>(t.priority);
    e["health"] = t.state;
    put_failures(e, t);
    return e;
}

}  // namespace

std::string Daemon::config_json()
{
    json root = json::object();
    root["generation"] = source_.generation();
    root["workers"] = serving_workers();
    if (mirror_) {
        auto st = mirror_->state();
        json& cluster = root["cluster"] = cluster_state(config_.cluster.node_name, st);
        cluster["resyncs"] = st.resyncs;
        if (!st.last_error.empty()) cluster["lastError"] = st.last_error;
    }
    {
        // The values in force of what a reload can change (SIGHUP), and the reloads so far.
        using conf::format_duration;
        json& c = root["configuration"] = json::object();
        if (!config_file_.empty()) c["file"] = config_file_;
        c["reloads"] = reloads_ok_;
        c["failedReloads"] = reloads_failed_;
        c["logLevel"] = config_.log.level;
        const auto& d = config_.dns;
        json& dns = c["dns"] = json::object();
        dns["ttl"] = format_duration(d.ttl);
        dns["negativeTtl"] = format_duration(d.negative_ttl);
        dns["tcpIdleTimeout"] = format_duration(d.tcp_idle_timeout);
        dns["tcpIoTimeout"] = format_duration(d.tcp_io_timeout);
        dns["tcpMaxClients"] = d.tcp_max_clients;
        dns["tcpMaxClientsPerIp"] = d.tcp_max_clients_per_ip;
        json& fwd = dns["forward"] = json::object();
        json& ups = fwd["upstreams"] = json::array();
        for (const auto& u : d.forward.upstreams) ups.push_back(u.to_string());
        json& allow = fwd["allow"] = json::array();
        for (const auto& a : d.forward.allow) allow.push_back(a);
        fwd["timeout"] = format_duration(d.forward.timeout);
        fwd["maxWait"] = format_duration(d.forward.max_wait);
        fwd["maxInFlight"] = d.forward.max_in_flight;
        json& rrl = dns["rateLimit"] = json::object();
        rrl["responsesPerSecond"] = d.rate_limit.responses_per_second;
        rrl["burst"] = d.rate_limit.burst;
        rrl["slip"] = d.rate_limit.slip;
        json& px = c["proxy"] = json::object();
        px["connectTimeout"] = format_duration(config_.proxy.connect_timeout);
        px["idleTimeout"] = format_duration(config_.proxy.idle_timeout);
        json& al = px["accessLog"] = json::object();
        al["path"] = config_.proxy.access_log.path;
        al["format"] = config_.proxy.access_log.format;
    }
    json& zones = root["zones"] = json::array();
    for (const auto& z : config_.dns.zones) zones.push_back(z);
    json& names = root["names"] = json::array();
    if (const auto* snap = source_.snapshot()) {
        for (const auto& mesh : config_.meshes) {
            auto list = snap->list(conf::Kind::mesh_external_service, std::string_view(mesh));
            if (!list) continue;
            for (const auto& e : *list) {
                for (const auto& a : e.status.hostnames.addresses) {
                    json n = json::object();
                    n["hostname"] = a.hostname;
                    if (e.status.ipv4) n["ipv4"] = e.status.ipv4->to_string();
                    if (e.status.ipv6) n["ipv6"] = e.status.ipv6->to_string();
                    n["mesh"] = e.resource.mesh;
                    n["name"] = e.resource.name;
                    names.push_back(std::move(n));
                }
            }
        }
    }
    if (proxy_) {
        auto st = proxy_->status();
        json& services = root["services"] = json::array();
        for (const auto& s : st.services) {
            json v = json::object();
            v["mesh"] = s.mesh;
            v["name"] = s.name;
            json& listeners = v["listeners"] = json::array();
            for (const auto& l : s.listeners) listeners.push_back(l);
            if (!s.listen_error.empty()) v["listenError"] = s.listen_error;
            if (!s.tls_error.empty()) v["tlsError"] = s.tls_error;
            v["active"] = s.active;
            v["total"] = s.total;
            json& endpoints = v["endpoints"] = json::array();
            for (const auto& t : s.targets) {
                json e = health_of(t);
                if (t.health_checked) {
                    json& c = e["check"] = json::object();
                    c["state"] = t.check.empty() ? std::string("pending") : t.check;
                    c["passed"] = t.checks_passed;
                    c["failed"] = t.checks_failed;
                }
                if (!t.resolved.empty()) {
                    json& r = e["resolved"] = json::array();
                    for (const auto& a : t.resolved) r.push_back(a);
                }
                if (!t.addresses.empty()) {
                    json& list = e["addresses"] = json::array();
                    for (const auto& a : t.addresses) {
                        json x = json::object();
                        x["address"] = a.address;
                        x["state"] = a.state;
                        put_failures(x, a);
                        if (t.health_checked) {
                            json& c = x["check"] = json::object();
                            c["state"] = a.check.empty() ? std::string("pending") : a.check;
                            c["passed"] = a.checks_passed;
                            c["failed"] = a.checks_failed;
                            if (!a.last_check.empty()) c["last"] = a.last_check;
                            if (!a.last_check_error.empty()) c["lastError"] = a.last_check_error;
                        }
                        list.push_back(std::move(x));
                    }
                }
                endpoints.push_back(std::move(e));
            }
            services.push_back(std::move(v));
        }
    }
    // Names and reasons may hold bytes that are not UTF-8: written as U+FFFD, not refused.
    return root.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

// Read on the loop's thread, like /config: the DNS side's snapshot, the proxy's status and
// the counters. Every MES of the served meshes is listed (the count needs them), only one
// page of them is described.
json Daemon::status_json(const std::optional<std::string>& page)
{
    json root = json::object();
    auto ready = ready_reply();
    std::string readiness = ready.body;
    while (!readiness.empty() && readiness.back() == '\n') readiness.pop_back();
    json& node = root["node"] = json::object();
    node["ready"] = ready.status == 200;
    node["readiness"] = readiness;
    node["workers"] = serving_workers();
    node["generation"] = source_.generation();
    node["proxyMode"] = proxy_ ? config_.proxy.mode : std::string("off");
    node["meshes"] = config_.meshes;
    if (mirror_) {
        auto st = mirror_->state();
        json& cluster = root["cluster"] = cluster_state(config_.cluster.node_name, st);
        if (!st.last_error.empty()) cluster["lastError"] = st.last_error;
    }

    auto m = dns_metrics();
    std::uint64_t queries = 0, servfail = 0;
    m.queries_by_opcode.each([&](std::string_view, std::uint64_t n) { queries += n; });
    m.replies_by_rcode.each([&](std::string_view rcode, std::uint64_t n) {
        if (rcode == "SERVFAIL") servfail += n;
    });
    json& counters = root["counters"] = json::object();
    counters["dnsQueries"] = queries;
    counters["dnsAnswered"] = static_cast<std::uint64_t>(m.answered);
    counters["dnsForwarded"] = static_cast<std::uint64_t>(m.forwarded);
    counters["dnsServfail"] = servfail;
    counters["dnsDropped"] = static_cast<std::uint64_t>(m.dropped);
    counters["dnsUpstreamFailures"] = static_cast<std::uint64_t>(m.upstream_failures);
    std::optional<proxy::Status> proxied;
    if (proxy_) {
        proxied = proxy_->status();
        counters["proxyActive"] = proxied->active;
        counters["proxyConnections"] = proxied->total;
        counters["proxyRefused"] = proxied->refused;
        std::uint64_t failed = 0;
        for (const auto& s : proxied->services) failed += s.failed;
        counters["proxyFailed"] = failed;
    }

    std::vector<store::Entry> all;
    if (const auto* snap = source_.snapshot()) {
        for (const auto& mesh : config_.meshes) {
            auto list = snap->list(conf::Kind::mesh_external_service, std::string_view(mesh));
            if (!list) continue;
            for (auto& e : *list)
                if (e.resource.mes()) all.push_back(std::move(e));
        }
    }
    std::unordered_map<std::string, const proxy::ServiceStatus*> held;
    if (proxied)
        for (const auto& s : proxied->services) held[s.mesh + '\0' + s.name] = &s;

    std::size_t number = status_page_number(page, all.size());
    std::size_t pages = all.empty() ? 1 : (all.size() + status_page_size - 1) / status_page_size;
    json& mes = root["mes"] = json::object();
    mes["total"] = all.size();
    mes["page"] = number;
    mes["pages"] = pages;
    mes["perPage"] = status_page_size;
    json& items = mes["items"] = json::array();
    std::size_t first = (number - 1) * status_page_size;
    for (std::size_t i = first; i < all.size() && i < first + status_page_size; ++i) {
        const auto& e = all[i];
        const auto& spec = *e.resource.mes();
        json item = json::object();
        item["mesh"] = e.resource.mesh;
        item["name"] = e.resource.name;
        json& vips = item["vips"] = json::array();
        if (e.status.ipv4) vips.push_back(e.status.ipv4->to_string());
        if (e.status.ipv6) vips.push_back(e.status.ipv6->to_string());
        json& hostnames = item["hostnames"] = json::array();
        for (const auto& a : e.status.hostnames.addresses) hostnames.push_back(a.hostname);
        item["port"] = spec.port ? json(*spec.port) : json(nullptr);
        item["protocol"] = std::string(conf::protocol_name(spec.protocol));
        item["conditions"] = condition_summary(e.status);
        auto found = held.find(e.resource.mesh + '\0' + e.resource.name);
        const proxy::ServiceStatus* s = found == held.end() ? nullptr : found->second;
        item["live"] = s != nullptr;
        json endpoints = json::array();  // set last: a reference into `item` would not outlive its next key
        if (s) {
            item["listeners"] = s->listeners;
            if (!s->listen_error.empty()) item["listenError"] = s->listen_error;
            if (!s->tls_error.empty()) item["tlsError"] = s->tls_error;
            item["active"] = s->active;
            item["total"] = s->total;
            for (const auto& t : s->targets) endpoints.push_back(health_of(t));
        } else {
            for (const auto& ep : spec.endpoints) {
                json x = json::object();
                conf::Endpoint unranked = ep;
                unranked.priority = 0;  // a key of its own
                x["address"] = endpoint_text(unranked);
                x["priority"] = static_cast<std::uint64_t>(ep.priority);
                x["health"] = "unknown";
                endpoints.push_back(std::move(x));
            }
        }
        item["endpoints"] = std::move(endpoints);
        items.push_back(std::move(item));
    }
    return root;
}

}  // namespace cmd
