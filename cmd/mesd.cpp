// mesd: the daemon. Answers DNS for generated hostnames from the store, forwards the rest,
// follows store changes (from mesctl or --conf-dir) without a restart, and serves the admin
// endpoint. SIGTERM or SIGINT closes the listeners, lets in-flight work finish and exits 0.
#include "cmd/admin.hpp"
#include "cmd/log.hpp"
#include "cmd/output.hpp"
#include "conf/conf.hpp"
#include "dns/dns.hpp"
#include "store/store.hpp"

#include <uv.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace {

namespace log = cmd::log;

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;
constexpr std::uint64_t store_poll_ms = 200;  // store changes show within this (DESIGN: 1 s)
constexpr std::uint64_t conf_dir_poll_ms = 1000;

constexpr std::string_view usage_text =
    "usage: mesd [--config FILE] [--data-dir DIR] [--dns-listen ADDR:PORT]... [--admin-listen ADDR:PORT]\n"
    "            [--conf-dir DIR] [--log-level debug|info|warn|error]\n"
    "\n"
    "Answers DNS for MeshExternalService hostnames and forwards other names upstream.\n"
    "The configuration file is --config FILE, else $MESD_CONFIG, else the built-in defaults;\n"
    "flags override it. --conf-dir applies a directory of resource YAML at start and whenever\n"
    "it changes (deleting what it no longer names); a bad file keeps the last good state.\n";

struct Flags {
    std::optional<std::string> config;
    std::optional<std::string> data_dir;
    std::vector<std::string> dns_listen;
    std::optional<std::string> admin_listen;
    std::optional<std::string> conf_dir;
    std::optional<std::string> log_level;
};

std::optional<std::string> parse_flags(int argc, char** argv, Flags& f)
{
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        std::string value;
        auto eq = arg.find('=');
        std::string name = arg.substr(0, eq);
        auto take = [&]() -> std::optional<std::string> {
            if (eq != std::string::npos) return arg.substr(eq + 1);
            if (i + 1 >= argc) return std::nullopt;
            return std::string(argv[++i]);
        };
        std::optional<std::string> v;
        if (name == "--config") v = f.config = take();
        else if (name == "--data-dir") v = f.data_dir = take();
        else if (name == "--admin-listen") v = f.admin_listen = take();
        else if (name == "--conf-dir") v = f.conf_dir = take();
        else if (name == "--log-level") v = f.log_level = take();
        else if (name == "--dns-listen") {
            v = take();
            if (v) f.dns_listen.push_back(*v);
        } else if (name == "--help" || name == "-h") {
            std::cout << usage_text;
            std::exit(exit_ok);
        } else {
            return "unknown option " + arg;
        }
        if (!v) return name + " needs a value";
    }
    return std::nullopt;
}

// What a directory of YAML looks like now: names, sizes and times of its files.
std::string fingerprint(const std::string& dir)
{
    namespace fs = std::filesystem;
    std::string out;
    std::error_code ec;
    std::vector<std::string> lines;
    for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const auto& e = *it;
        auto ext = e.path().extension().string();
        if (!e.is_regular_file(ec) || (ext != ".yaml" && ext != ".yml")) continue;
        auto t = fs::last_write_time(e.path(), ec).time_since_epoch().count();
        lines.push_back(e.path().string() + " " + std::to_string(e.file_size(ec)) + " " + std::to_string(t));
    }
    std::sort(lines.begin(), lines.end());
    for (const auto& l : lines) out += l + "\n";
    return out + (ec ? "error " + ec.message() : "");
}

class Daemon {
public:
    Daemon(conf::Config config, std::unique_ptr<store::Store> store, std::optional<std::string> conf_dir)
        : config_(std::move(config)), store_(std::move(store)), conf_dir_(std::move(conf_dir)),
          source_(*store_, config_.meshes), responder_(dns_settings())
    {
        uv_loop_init(&loop_);
    }
    ~Daemon() { uv_loop_close(&loop_); }

    int run();

private:
    dns::Settings dns_settings() const
    {
        dns::Settings s;
        s.zones = config_.dns.zones;
        s.ttl = static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(config_.dns.ttl).count());
        s.negative_ttl =
            static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(config_.dns.negative_ttl).count());
        s.edns_udp_size = config_.dns.edns_udp_size;
        return s;
    }
    store::WriteOptions write_options() const
    {
        store::WriteOptions o;
        o.pools = store::Pools::from(config_);
        return o;
    }
    bool refresh();
    bool sync_conf_dir();
    void shutdown(const char* why);
    cmd::HttpReply admin(const std::string& path);
    std::string metrics_text();
    std::string config_json();

    conf::Config config_;
    std::unique_ptr<store::Store> store_;
    std::optional<std::string> conf_dir_;
    dns::StoreSource source_;
    dns::Responder responder_;
    uv_loop_t loop_{};
    std::unique_ptr<dns::Server> server_;
    std::unique_ptr<cmd::Admin> admin_;
    uv_timer_t store_timer_{};
    uv_timer_t conf_timer_{};
    uv_signal_t sigterm_{};
    uv_signal_t sigint_{};
    bool ready_ = false;
    bool stopping_ = false;
    std::string conf_fingerprint_;
    std::uint64_t conf_dir_errors_ = 0;
    std::uint64_t conf_dir_applies_ = 0;
    std::uint64_t store_errors_ = 0;
};

bool Daemon::refresh()
{
    auto started = std::chrono::steady_clock::now();
    auto moved = source_.refresh();
    if (!moved) {
        ++store_errors_;
        log::error("store", "cannot read the store", {{"error", moved.error().message}});
        return false;
    }
    if (*moved)
        log::debug("store", "store changed",
                   {{"generation", std::to_string(source_.generation())},
                    {"names", std::to_string(source_.index()->names())},
                    {"index_bytes", std::to_string(source_.index()->bytes())},
                    {"took_ms", std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                   std::chrono::steady_clock::now() - started).count())}});
    return true;
}

bool Daemon::sync_conf_dir()
{
    std::vector<std::string> paths{*conf_dir_};
    auto result = conf::load_paths(paths);
    for (const auto& d : result.file_errors) log::warn("confd", d.format());
    for (const auto& doc : result.documents)
        for (const auto& d : doc.diagnostics)
            log::write(d.severity == conf::Severity::error ? log::Level::warn : log::Level::info, "confd", d.format());
    if (!result.ok()) {
        ++conf_dir_errors_;
        log::error("confd", "invalid resources; keeping the last good state",
                   {{"dir", *conf_dir_}, {"errors", std::to_string(result.error_count())}});
        return false;
    }
    std::vector<conf::Resource> resources;
    for (auto& doc : result.documents) resources.push_back(std::move(doc.resource));
    auto options = write_options();
    options.prune = true;
    source_.release();  // a write may grow the map; no read may be open in this process then
    auto report = store_->apply(resources, options);
    refresh();
    if (!report) {
        ++conf_dir_errors_;
        log::error("confd", "apply failed; keeping the last good state", {{"error", report.error().message}});
        return false;
    }
    ++conf_dir_applies_;
    std::size_t changed = 0;
    for (const auto& c : report->changes) {
        if (c.outcome == store::Outcome::unchanged) continue;
        ++changed;
        log::info("confd", std::string(store::outcome_name(c.outcome)),
                  {{"kind", std::string(conf::kind_name(c.kind))}, {"mesh", c.mesh}, {"name", c.name}});
    }
    for (const auto& n : report->notes) log::warn("store", n);
    log::info("confd", "applied", {{"dir", *conf_dir_}, {"resources", std::to_string(resources.size())},
                                   {"changed", std::to_string(changed)}, {"generation", std::to_string(report->generation)}});
    return true;
}

std::string Daemon::metrics_text()
{
    const auto& m = server_->metrics();
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
    for (const auto& [qtype, n] : m.queries_by_qtype)
        out += "mesd_dns_queries_total{qtype=\"" + dns::qtype_name(qtype) + "\"} " + std::to_string(n) + "\n";
    out += "# HELP mesd_dns_replies_total DNS replies sent, by rcode.\n# TYPE mesd_dns_replies_total counter\n";
    for (const auto& [rcode, n] : m.replies_by_rcode)
        out += "mesd_dns_replies_total{rcode=\"" + dns::rcode_name(rcode) + "\"} " + std::to_string(n) + "\n";
    counter("mesd_dns_answered_total", "Queries answered from mesd's own data.", m.answered);
    counter("mesd_dns_forwarded_total", "Queries forwarded upstream.", m.forwarded);
    counter("mesd_dns_dropped_total", "Packets dropped: responses or shorter than a header.", m.dropped);
    counter("mesd_dns_truncated_total", "UDP replies sent with TC.", m.truncated);
    counter("mesd_dns_upstream_timeouts_total", "Upstream queries that timed out.", m.upstream_timeouts);
    counter("mesd_dns_upstream_failures_total", "Forwarded queries answered SERVFAIL after every upstream failed.",
            m.upstream_failures);
    counter("mesd_dns_upstream_mismatched_total", "Upstream answers ignored for a wrong ID, source or question.",
            m.upstream_mismatched);
    counter("mesd_dns_upstream_tcp_retries_total", "Truncated upstream answers retried over TCP.", m.upstream_tcp_retries);
    counter("mesd_dns_forward_overload_total", "Queries refused because maxInFlight were outstanding.", m.forward_overload);
    counter("mesd_dns_tcp_connections_total", "TCP connections accepted.", m.tcp_connections);
    counter("mesd_dns_tcp_refused_total", "TCP connections closed at once: over tcpMaxClients.", m.tcp_refused);
    gauge("mesd_dns_forward_in_flight", "Upstream queries outstanding.", server_->in_flight());
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
    std::snprintf(sum, sizeof sum, "%.9f", m.latency_sum);
    out += "mesd_dns_latency_seconds_sum " + std::string(sum) + "\nmesd_dns_latency_seconds_count " +
           std::to_string(m.latency_count) + "\n";
    gauge("mesd_store_generation", "The store generation being served.", source_.generation());
    auto usage = store_->usage();
    gauge("mesd_vips_in_use", "VIPs allocated to MeshExternalServices.", usage ? usage->vips : 0);
    counter("mesd_store_errors_total", "Failed reads of the store.", store_errors_);
    counter("mesd_conf_dir_applies_total", "Successful applies of --conf-dir.", conf_dir_applies_);
    counter("mesd_conf_dir_errors_total", "Applies of --conf-dir refused for invalid input or failed.", conf_dir_errors_);
    return out;
}

std::string Daemon::config_json()
{
    cmd::Value root = cmd::Value::object();
    root.set("generation", static_cast<std::int64_t>(source_.generation()));
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
    return root.json();
}

cmd::HttpReply Daemon::admin(const std::string& path)
{
    if (path == "/metrics") return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_text()};
    if (path == "/ready") return ready_ && !stopping_ ? cmd::HttpReply{200, "text/plain", "ready\n"}
                                                     : cmd::HttpReply{503, "text/plain", "not ready\n"};
    if (path == "/config") return {200, "application/json", config_json()};
    return {404, "text/plain", "not found: try /metrics, /ready or /config\n"};
}

void Daemon::shutdown(const char* why)
{
    if (stopping_) return;
    stopping_ = true;
    log::info("daemon", "stopping", {{"signal", why}});
    uv_timer_stop(&store_timer_);
    uv_timer_stop(&conf_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&store_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&conf_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigterm_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigint_), nullptr);
    server_->stop([this] {
        log::info("dns", "listeners closed, in-flight queries finished");
        admin_->stop([] {});
    });
}

int Daemon::run()
{
    auto synced = store_->sync_pools(write_options());
    if (!synced) {
        log::error("store", "cannot record the VIP pools", {{"error", synced.error().message}});
        return exit_failed;
    }
    for (const auto& n : synced->notes) log::warn("store", n);
    if (conf_dir_) {
        conf_fingerprint_ = fingerprint(*conf_dir_);
        sync_conf_dir();
    }
    if (!refresh()) return exit_failed;

    dns::ServerOptions options;
    options.listen = config_.dns.listen;
    options.tcp_idle_timeout = config_.dns.tcp_idle_timeout;
    options.tcp_max_clients = config_.dns.tcp_max_clients;
    options.forward_enabled = config_.dns.forward.enabled;
    options.upstreams = config_.dns.forward.upstreams;
    options.forward_timeout = config_.dns.forward.timeout;
    options.allow = config_.dns.forward.allow;
    options.max_in_flight = config_.dns.forward.max_in_flight;
    if (options.forward_enabled && options.upstreams.empty()) options.upstreams = dns::system_upstreams(config_.dns.listen);
    server_ = std::make_unique<dns::Server>(&loop_, responder_, source_, options);
    if (auto started = server_->start(); !started) {
        log::error("dns", "cannot listen", {{"error", started.error()}});
        server_->stop([] {});
        uv_run(&loop_, UV_RUN_DEFAULT);
        return exit_failed;
    }
    std::string upstreams;
    for (const auto& u : options.upstreams) upstreams += (upstreams.empty() ? "" : ",") + u.to_string();
    for (const auto& b : server_->bound())
        log::info("dns", "listening", {{"addr", b}, {"forward", options.forward_enabled ? upstreams : "off"}});

    admin_ = std::make_unique<cmd::Admin>(&loop_, [this](const std::string& path) { return admin(path); });
    auto admin_addr = admin_->start(config_.admin.listen);
    if (!admin_addr) {
        log::error("admin", "cannot listen", {{"error", admin_addr.error()}});
        server_->stop([this] { admin_->stop([] {}); });
        uv_run(&loop_, UV_RUN_DEFAULT);
        return exit_failed;
    }
    log::info("admin", "listening", {{"addr", *admin_addr}});

    uv_timer_init(&loop_, &store_timer_);
    store_timer_.data = this;
    uv_timer_start(&store_timer_, [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->refresh(); }, store_poll_ms,
                   store_poll_ms);
    uv_timer_init(&loop_, &conf_timer_);
    conf_timer_.data = this;
    if (conf_dir_)
        uv_timer_start(&conf_timer_, [](uv_timer_t* t) {
            auto* d = static_cast<Daemon*>(t->data);
            auto now = fingerprint(*d->conf_dir_);
            if (now == d->conf_fingerprint_) return;
            d->conf_fingerprint_ = now;
            log::info("confd", "directory changed", {{"dir", *d->conf_dir_}});
            d->sync_conf_dir();
        }, conf_dir_poll_ms, conf_dir_poll_ms);
    uv_signal_init(&loop_, &sigterm_);
    uv_signal_init(&loop_, &sigint_);
    sigterm_.data = sigint_.data = this;
    uv_signal_start(&sigterm_, [](uv_signal_t* s, int) { static_cast<Daemon*>(s->data)->shutdown("SIGTERM"); }, SIGTERM);
    uv_signal_start(&sigint_, [](uv_signal_t* s, int) { static_cast<Daemon*>(s->data)->shutdown("SIGINT"); }, SIGINT);

    ready_ = true;
    log::info("daemon", "ready", {{"generation", std::to_string(source_.generation())}, {"data_dir", config_.data_dir}});
    uv_run(&loop_, UV_RUN_DEFAULT);
    log::info("daemon", "stopped");
    return exit_ok;
}

}  // namespace

int main(int argc, char** argv)
{
    Flags flags;
    if (auto err = parse_flags(argc, argv, flags)) {
        std::cerr << "mesd: " << *err << "\n\n" << usage_text;
        return exit_usage;
    }
    auto loaded = conf::load_config(flags.config);
    if (!loaded.ok()) {
        for (const auto& d : loaded.errors) std::cerr << d.format() << '\n';
        return exit_usage;
    }
    conf::Config config = std::move(loaded.config);
    if (flags.data_dir) config.data_dir = *flags.data_dir;
    if (!flags.dns_listen.empty()) {
        config.dns.listen.clear();
        for (const auto& text : flags.dns_listen) {
            auto hp = conf::parse_host_port(text);
            if (!hp) {
                std::cerr << "mesd: --dns-listen " << text << ": must be ADDRESS:PORT with an IP address\n";
                return exit_usage;
            }
            config.dns.listen.push_back(*hp);
        }
    }
    if (flags.admin_listen) {
        auto hp = conf::parse_host_port(*flags.admin_listen);
        if (!hp) {
            std::cerr << "mesd: --admin-listen " << *flags.admin_listen << ": must be ADDRESS:PORT with an IP address\n";
            return exit_usage;
        }
        config.admin.listen = *hp;
    }
    if (flags.log_level) config.log.level = *flags.log_level;
    log::Level level{};
    if (!log::parse_level(config.log.level, level)) {
        std::cerr << "mesd: --log-level " << config.log.level << ": must be debug, info, warn or error\n";
        return exit_usage;
    }
    log::set_level(level);
    if (flags.conf_dir && !std::filesystem::is_directory(*flags.conf_dir)) {
        std::cerr << "mesd: --conf-dir " << *flags.conf_dir << ": not a directory\n";
        return exit_usage;
    }

    auto opened = store::Store::open(store::Options{config.data_dir});
    if (!opened) {
        log::error("store", "cannot open the store", {{"error", opened.error().message}});
        return exit_failed;
    }
    try {
        Daemon daemon(std::move(config), std::move(*opened), flags.conf_dir);
        return daemon.run();
    } catch (const std::exception& e) {
        log::error("daemon", "fatal", {{"error", e.what()}});
        return exit_failed;
    }
}
