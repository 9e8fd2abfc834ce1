// /metrics: the Prometheus text of the DNS server, the store, the conf dir, the cluster
// mirror and the proxy.
#include "cmd/daemon.hpp"

#include <algorithm>
#include <cstdio>

namespace cmd {

namespace {

std::string label_value(const std::string& v)
{
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') out.push_back('\\');
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out.push_back(c);
    }
    return out;
}

std::string proxy_metrics(const proxy::Status& st)
{
    std::string out;
    auto family = [&](const char* name, const char* type, const char* help) {
        out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    };
    // One series of a MES, with a further label when `key` is given.
    auto series = [&](const char* name, const proxy::ServiceStatus& s, std::uint64_t value, const char* key = nullptr,
                      const std::string& label = {}) {
        out += std::string(name) + "{mesh=\"" + label_value(s.mesh) + "\",name=\"" + label_value(s.name) + "\"";
        if (key) out += std::string(",") + key + "=\"" + label_value(label) + "\"";
        out += "} " + std::to_string(value) + "\n";
    };
    // An endpoint's series with a result label.
    auto series2 = [&](const char* name, const proxy::ServiceStatus& s, std::uint64_t value, const std::string& endpoint,
                       const char* result) {
        out += std::string(name) + "{mesh=\"" + label_value(s.mesh) + "\",name=\"" + label_value(s.name) + "\",endpoint=\"" +
               label_value(endpoint) + "\",result=\"" + result + "\"} " + std::to_string(value) + "\n";
    };

    struct Total {
        const char* name;
        const char* type;
        const char* help;
        std::uint64_t proxy::Status::*field;
    };
    static constexpr Total totals[] = {
        {"mesd_proxy_connections_active", "gauge", "Proxied connections open now.", &proxy::Status::active},
        {"mesd_proxy_connections_total", "counter", "Client connections accepted.", &proxy::Status::total},
        {"mesd_proxy_connections_refused_total", "counter", "Client connections reset: over a connection limit.",
         &proxy::Status::refused},
        {"mesd_proxy_unrouted_total", "counter", "Redirected connections whose destination no MES claims.",
         &proxy::Status::unrouted},
        {"mesd_proxy_local_failures_total", "counter", "Connections reset because mesd had no socket to spare.",
         &proxy::Status::local_failures},
        {"mesd_proxy_mark_failures_total", "counter", "Connections to endpoints made without proxy.upstreamMark.",
         &proxy::Status::mark_failures},
        {"mesd_proxy_accept_errors_total", "counter", "Accepts that failed for want of descriptors; accepting paused.",
         &proxy::Status::accept_errors},
        {"mesd_proxy_access_log_write_errors_total", "counter", "Writes of access log lines that failed; their lines are lost.",
         &proxy::Status::access_log_write_errors},
    };
    for (const auto& t : totals) {
        family(t.name, t.type, t.help);
        out += std::string(t.name) + " " + std::to_string(st.*t.field) + "\n";
    }
    if (!st.workers.empty()) {
        // How connections were spread over the workers (none with one loop).
        family("mesd_proxy_worker_connections_active", "gauge", "Proxied connections open now, by worker.");
        for (std::size_t i = 0; i < st.workers.size(); ++i)
            out += "mesd_proxy_worker_connections_active{worker=\"" + std::to_string(i) + "\"} " +
                   std::to_string(st.workers[i].active) + "\n";
        family("mesd_proxy_worker_connections_total", "counter", "Client connections taken up, by worker.");
        for (std::size_t i = 0; i < st.workers.size(); ++i)
            out += "mesd_proxy_worker_connections_total{worker=\"" + std::to_string(i) + "\"} " +
                   std::to_string(st.workers[i].total) + "\n";
    }

    struct Row {
        const char* name;
        const char* type;
        const char* help;
        std::uint64_t proxy::ServiceStatus::*field;
    };
    static constexpr Row rows[] = {
        {"mesd_mes_connections_active", "gauge", "Open connections per MES.", &proxy::ServiceStatus::active},
        {"mesd_mes_connections_total", "counter", "Connections accepted per MES.", &proxy::ServiceStatus::total},
        {"mesd_mes_connections_refused_total", "counter", "Connections refused over a limit (reset, or 503 for protocol http), per MES.", &proxy::ServiceStatus::refused},
        {"mesd_mes_connections_failed_total", "counter", "Connections no endpoint could be reached for (reset, or 502/503 for protocol http), per MES.",
         &proxy::ServiceStatus::failed},
        {"mesd_mes_bytes_sent_total", "counter", "Bytes from clients to the endpoints, per MES.", &proxy::ServiceStatus::bytes_up},
        {"mesd_mes_bytes_received_total", "counter", "Bytes from the endpoints to clients, per MES.",
         &proxy::ServiceStatus::bytes_down},
    };
    for (const auto& row : rows) {
        family(row.name, row.type, row.help);
        for (const auto& s : st.services) series(row.name, s, s.*row.field);
    }
    family("mesd_mes_endpoint_connect_failures_total", "counter", "Failed or timed-out connects, per endpoint.");
    for (const auto& s : st.services)
        for (const auto& t : s.targets) series("mesd_mes_endpoint_connect_failures_total", s, t.connect_failures, "endpoint", t.address);
    family("mesd_mes_endpoint_handshake_failures_total", "counter", "Failed or timed-out TLS handshakes, per endpoint.");
    for (const auto& s : st.services)
        for (const auto& t : s.targets)
            if (s.tls_handshakes || t.handshake_failures)
                series("mesd_mes_endpoint_handshake_failures_total", s, t.handshake_failures, "endpoint", t.address);
    // Per endpoint as configured, a DNS name's addresses summed: one series per endpoint
    // and result however many addresses a name has had.
    family("mesd_mes_endpoint_health_checks_total", "counter", "Active health checks per endpoint, by result (passed, failed).");
    for (const auto& s : st.services)
        for (const auto& t : s.targets)
            if (t.health_checked) {
                series2("mesd_mes_endpoint_health_checks_total", s, t.checks_passed, t.address, "passed");
                series2("mesd_mes_endpoint_health_checks_total", s, t.checks_failed, t.address, "failed");
            }
    family("mesd_mes_endpoint_ejections_total", "counter", "Times an endpoint was ejected after repeated failures.");
    for (const auto& s : st.services)
        for (const auto& t : s.targets) series("mesd_mes_endpoint_ejections_total", s, t.ejections, "endpoint", t.address);
    // TLS series only for the MES that speak TLS.
    family("mesd_mes_tls_handshakes_total", "counter", "TLS handshakes to endpoints completed, per MES.");
    for (const auto& s : st.services)
        if (s.tls_handshakes) series("mesd_mes_tls_handshakes_total", s, s.tls_handshakes);
    family("mesd_mes_tls_resumed_total", "counter", "TLS handshakes to endpoints that resumed a session, per MES.");
    for (const auto& s : st.services)
        if (s.tls_handshakes) series("mesd_mes_tls_resumed_total", s, s.tls_resumed);
    family("mesd_mes_tls_handshake_failures_total", "counter", "TLS handshakes to endpoints that failed, by reason.");
    for (const auto& s : st.services)
        for (const auto& [reason, n] : s.tls_failures) series("mesd_mes_tls_handshake_failures_total", s, n, "reason", reason);
    family("mesd_mes_endpoint_healthy", "gauge", "1 when an endpoint takes connections: neither ejected, unhealthy nor unresolved.");
    for (const auto& s : st.services)
        for (const auto& t : s.targets)
            series("mesd_mes_endpoint_healthy", s, t.state == "healthy" || t.state == "failing" ? 1 : 0, "endpoint", t.address);

    // Per address an endpoint was reached at (at most 16 per endpoint and 4096 in all, the
    // rest as address="other"): only those that have had a connection.
    auto labels = [&](const proxy::ServiceStatus& s, const proxy::AddressTraffic& a) {
        return "mesh=\"" + label_value(s.mesh) + "\",name=\"" + label_value(s.name) + "\",endpoint=\"" + label_value(a.endpoint) +
               "\",address=\"" + label_value(a.address) + "\"";
    };
    struct AddressRow {
        const char* name;
        const char* type;
        const char* help;
        std::uint64_t proxy::AddressTraffic::*field;
    };
    static constexpr AddressRow address_rows[] = {
        {"mesd_mes_endpoint_connections_active", "gauge", "Open connections per endpoint address.", &proxy::AddressTraffic::active},
        {"mesd_mes_endpoint_bytes_sent_total", "counter", "Bytes from clients to an endpoint address.", &proxy::AddressTraffic::bytes_up},
        {"mesd_mes_endpoint_bytes_received_total", "counter", "Bytes from an endpoint address to clients.",
         &proxy::AddressTraffic::bytes_down},
    };
    for (const auto& row : address_rows) {
        family(row.name, row.type, row.help);
        for (const auto& s : st.services)
            for (const auto& a : s.traffic) out += std::string(row.name) + "{" + labels(s, a) + "} " + std::to_string(a.*row.field) + "\n";
    }
    const auto bounds = proxy::latency_bounds_seconds();
    auto histogram = [&](const char* name, const char* help, proxy::AddressTraffic::Histogram proxy::AddressTraffic::*field) {
        family(name, "histogram", help);
        for (const auto& s : st.services)
            for (const auto& a : s.traffic) {
                const auto& h = a.*field;
                std::string l = labels(s, a);
                for (std::size_t k = 0; k < h.cumulative.size(); ++k) {
                    char le[32];
                    if (k < bounds.size()) std::snprintf(le, sizeof le, "%g", bounds[k]);
                    else std::snprintf(le, sizeof le, "+Inf");
                    out += std::string(name) + "_bucket{" + l + ",le=\"" + le + "\"} " + std::to_string(h.cumulative[k]) + "\n";
                }
                char sum[64];
                std::snprintf(sum, sizeof sum, "%.6f", h.sum_seconds);
                out += std::string(name) + "_sum{" + l + "} " + sum + "\n";
                out += std::string(name) + "_count{" + l + "} " + std::to_string(h.cumulative.empty() ? 0 : h.cumulative.back()) + "\n";
            }
    };
    histogram("mesd_mes_endpoint_connect_seconds", "Time to connect to an endpoint address (successful connects).",
              &proxy::AddressTraffic::connect);
    histogram("mesd_mes_endpoint_tls_handshake_seconds", "Time of completed TLS handshakes with an endpoint address.",
              &proxy::AddressTraffic::tls_handshake);
    return out;
}

}  // namespace

std::string Daemon::metrics_text()
{
    // Every worker's counts, summed: one series per metric whatever the number of workers.
    const auto m = dns_metrics();
    std::string out;
    auto counter = [&](const char* name, const char* help, std::uint64_t v) {
        out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " +
               std::to_string(v) + "\n";
    };
    auto gauge = [&](const char* name, const char* help, std::uint64_t v) {
        out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n" + name + " " +
               std::to_string(v) + "\n";
    };
    out += "# HELP mesd_dns_queries_total DNS queries received, by question type.\n# TYPE mesd_dns_queries_total counter\n";
    // Labels come from fixed lists (dns::known_qtypes and the others), the rest as "other":
    // no client can grow this page.
    auto by_code = [&](const char* name, const char* label, const dns::CodeCounts& counts) {
        counts.each([&](std::string_view value, std::uint64_t n) {
            out += std::string(name) + "{" + label + "=\"" + std::string(value) + "\"} " + std::to_string(n) + "\n";
        });
    };
    by_code("mesd_dns_queries_total", "qtype", m.queries_by_qtype);
    out += "# HELP mesd_dns_replies_total DNS replies sent, by rcode.\n# TYPE mesd_dns_replies_total counter\n";
    by_code("mesd_dns_replies_total", "rcode", m.replies_by_rcode);
    out += "# HELP mesd_dns_queries_by_opcode_total DNS queries received, by opcode.\n"
           "# TYPE mesd_dns_queries_by_opcode_total counter\n";
    by_code("mesd_dns_queries_by_opcode_total", "opcode", m.queries_by_opcode);
    counter("mesd_dns_answered_total", "Queries answered from mesd's own data.", m.answered);
    counter("mesd_dns_answered_fast_total", "Of those, answers written by the fast path (no ldns, no allocation).",
            m.answered_fast);
    counter("mesd_dns_forwarded_total", "Queries forwarded upstream.", m.forwarded);
    counter("mesd_dns_dropped_total", "Packets dropped: responses or shorter than a header.", m.dropped);
    counter("mesd_dns_truncated_total", "UDP replies sent with TC.", m.truncated);
    counter("mesd_dns_rate_limited_dropped_total", "UDP answers not sent: their source prefix was over dns.rateLimit.",
            m.rate_limited_dropped);
    counter("mesd_dns_rate_limited_slipped_total", "UDP answers sent as TC alone: their source prefix was over dns.rateLimit.",
            m.rate_limited_slipped);
    counter("mesd_dns_upstream_timeouts_total", "Upstream queries that timed out.", m.upstream_timeouts);
    counter("mesd_dns_upstream_failures_total", "Forwarded queries answered SERVFAIL after every upstream failed.",
            m.upstream_failures);
    counter("mesd_dns_upstream_mismatched_total", "Upstream answers ignored for a wrong ID, source or question.",
            m.upstream_mismatched);
    counter("mesd_dns_upstream_tcp_retries_total", "Truncated upstream answers retried over TCP.", m.upstream_tcp_retries);
    counter("mesd_dns_forward_overload_total", "Queries refused because maxInFlight were outstanding.", m.forward_overload);
    counter("mesd_dns_tcp_connections_total", "TCP connections accepted.", m.tcp_connections);
    counter("mesd_dns_tcp_refused_total", "TCP connections closed at once: over tcpMaxClients with none to evict.",
            m.tcp_refused);
    counter("mesd_dns_tcp_io_timeouts_total",
            "TCP connections closed: a message not received, or a reply not taken, within tcpIoTimeout.",
            m.tcp_io_timeouts);
    counter("mesd_dns_tcp_refused_per_ip_total", "TCP connections closed at once: over tcpMaxClientsPerIp.",
            m.tcp_refused_per_ip);
    counter("mesd_dns_tcp_evicted_total", "TCP connections closed to make room for a new one at tcpMaxClients.",
            m.tcp_evicted);
    counter("mesd_dns_tcp_accept_errors_total", "TCP accepts that failed for want of descriptors; accepting paused.",
            m.tcp_accept_errors);
    {
        auto admin_stats = admin_->stats();
        counter("mesd_admin_connections_evicted_total",
                "Admin connections closed before their request to make room for a new one.", admin_stats.evicted);
        counter("mesd_admin_accept_errors_total", "Admin accepts that failed for want of descriptors; accepting paused.",
                admin_stats.accept_errors);
    }
    gauge("mesd_dns_forward_in_flight", "Upstream queries outstanding.", dns_in_flight());
    counter("mesd_dns_forward_loops_total", "Queries mesd forwarded that came back to it, answered SERVFAIL.",
            m.forward_loops);
    counter("mesd_dns_forward_joined_total",
            "Queries not sent upstream: they waited for the answer to the same question being forwarded.",
            m.forward_joined);
    counter("mesd_dns_upstream_probes_total", "Queries sent to a backed-off upstream to see if it answers again.",
            m.upstream_probes);
    counter("mesd_dns_forward_backed_off_total", "Queries answered SERVFAIL at once: every upstream backed off.",
            m.forward_backed_off);
    {
        // One series per upstream now in use, best first.
        auto upstreams = dns_upstreams();
        auto family = [&](const char* name, const char* type, const char* help, auto value) {
            out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
            for (const auto& u : upstreams) {
                char v[64];
                std::snprintf(v, sizeof v, "%.6f", static_cast<double>(value(u)));
                out += std::string(name) + "{upstream=\"" + u.address + "\"} " + v + "\n";
            }
        };
        family("mesd_dns_upstream_srtt_seconds", "gauge", "Smoothed round-trip time of an upstream's UDP answers (0 before the first).",
               [](const dns::UpstreamStatus& u) { return u.srtt_seconds; });
        family("mesd_dns_upstream_rttvar_seconds", "gauge", "Variation of an upstream's round-trip time.",
               [](const dns::UpstreamStatus& u) { return u.rttvar_seconds; });
        family("mesd_dns_upstream_consecutive_failures", "gauge", "Timeouts in a row of an upstream.",
               [](const dns::UpstreamStatus& u) { return u.failures; });
        family("mesd_dns_upstream_backed_off", "gauge", "1 while an upstream is tried after every healthy one.",
               [](const dns::UpstreamStatus& u) { return u.backed_off ? 1 : 0; });
        family("mesd_dns_upstream_answers_total", "counter", "Answers from an upstream.",
               [](const dns::UpstreamStatus& u) { return u.answers; });
        family("mesd_dns_upstream_attempt_timeouts_total", "counter", "Queries to an upstream that timed out.",
               [](const dns::UpstreamStatus& u) { return u.timeouts; });
    }
    out += "# HELP mesd_dns_latency_seconds Time from receiving a query to sending its reply.\n"
           "# TYPE mesd_dns_latency_seconds histogram\n";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < dns::Metrics::bounds.size(); ++i) {
        cumulative += m.latency_buckets[i];
        char le[32];
        std::snprintf(le, sizeof le, "%g", dns::Metrics::bounds[i]);
        out += "mesd_dns_latency_seconds_bucket{le=\"" + std::string(le) + "\"} " + std::to_string(cumulative) + "\n";
    }
    cumulative += m.latency_buckets.back();
    out += "mesd_dns_latency_seconds_bucket{le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
    char sum[64];
    std::snprintf(sum, sizeof sum, "%.9f", m.latency_sum.seconds());
    out += "mesd_dns_latency_seconds_sum " + std::string(sum) + "\nmesd_dns_latency_seconds_count " +
           std::to_string(m.latency_count) + "\n";
    gauge("mesd_workers", "Threads serving DNS and the proxy (1: the one loop).", serving_workers());
    // How the kernel spreads queries over the workers' sockets: one series per worker.
    out += "# HELP mesd_dns_worker_queries_total DNS queries received, by worker.\n"
           "# TYPE mesd_dns_worker_queries_total counter\n";
    for (std::size_t i = 0; i < dns_.size(); ++i) {
        std::uint64_t queries = 0;
        dns_[i].server->metrics().queries_by_opcode.each([&](std::string_view, std::uint64_t n) { queries += n; });
        out += "mesd_dns_worker_queries_total{worker=\"" + std::to_string(i) + "\"} " + std::to_string(queries) + "\n";
    }
    gauge("mesd_store_generation", "The store generation being served.", source_.generation());
    auto usage = store_->usage();
    gauge("mesd_vips_in_use", "VIPs allocated to MeshExternalServices.", usage ? usage->vips : 0);
    counter("mesd_store_errors_total", "Failed reads of the store.", store_errors_);
    auto readers = store_->readers();
    gauge("mesd_store_readers", "Reader slots of the store held, by every process, stale ones included.", readers.in_use);
    gauge("mesd_store_readers_max", "Reader slots of the store; reads fail while all are held.", readers.max);
    counter("mesd_store_stale_readers_cleared_total", "Reader slots of dead processes freed.", stale_readers_cleared_);
    gauge("mesd_store_read_only", "1 when the store was opened read-only.", store_->read_only().empty() ? 0 : 1);
    gauge("mesd_store_unreadable", "1 while the store cannot be read (answers come from the last good index).",
          store_error_.empty() ? 0 : 1);
    counter("mesd_conf_dir_applies_total", "Successful applies of --conf-dir.", conf_dir_applies_);
    counter("mesd_conf_dir_errors_total", "Applies of --conf-dir refused for invalid input or failed.", conf_dir_errors_);
    out += "# HELP mesd_config_reloads_total Reloads of the configuration file on SIGHUP, by result (failed: the file "
           "was refused and the running configuration kept).\n# TYPE mesd_config_reloads_total counter\n";
    out += "mesd_config_reloads_total{result=\"ok\"} " + std::to_string(reloads_ok_) + "\n";
    out += "mesd_config_reloads_total{result=\"failed\"} " + std::to_string(reloads_failed_) + "\n";
    counter("mesd_conf_dir_torn_reads_total", "Reads of --conf-dir left because it changed under every pass.",
            conf_dir_torn_reads_);
    if (mirror_) {
        auto st = mirror_->state();
        auto lag = st.connected || st.current_at == std::chrono::system_clock::time_point{}
                       ? 0
                       : std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now() - st.current_at).count();
        gauge("mesd_cluster_connected", "1 while the node watches etcd; 0 while it serves from its copy.", st.connected);
        gauge("mesd_cluster_revision", "The etcd revision the node's copy holds.", static_cast<std::uint64_t>(st.revision));
        gauge("mesd_cluster_lag_seconds", "Seconds since the node last knew its copy was current (0 while watching).",
              static_cast<std::uint64_t>(std::max<std::int64_t>(0, lag)));
        counter("mesd_cluster_resyncs_total", "Whole copies read from etcd (first start, compacted history).", st.resyncs);
        counter("mesd_cluster_updates_total", "Watch responses from etcd applied to the store.", st.batches);
        counter("mesd_cluster_errors_total", "Lost connections, failed watches and store writes.", st.errors);
    }
    if (proxy_) out += proxy_metrics(proxy_->status());
    return out;
}

}  // namespace cmd
