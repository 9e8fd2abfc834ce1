// mesd: the daemon. Answers DNS for generated hostnames from the store, forwards the rest,
// follows store changes (from mesctl or --conf-dir) without a restart, and serves the admin
// endpoint. SIGTERM or SIGINT closes the listeners, lets in-flight work finish and exits 0.
#include "cmd/daemon.hpp"
#include "cmd/privilege.hpp"
#include "cmd/log.hpp"
#include "cmd/version.hpp"
#include "conf/conf.hpp"

#include <malloc.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace {

namespace log = cmd::log;
using cmd::Daemon;
using cmd::exit_failed;
using cmd::exit_ok;

constexpr int exit_usage = 2;

constexpr std::string_view usage_text =
    "usage: mesd [--config FILE] [--data-dir DIR] [--dns-listen ADDR:PORT]... [--admin-listen ADDR:PORT]\n"
    "            [--conf-dir DIR [--conf-dir-follow-links]] [--log-level debug|info|warn|error]\n"
    "            [--allow-core-dumps] [--etcd-endpoints URL,...] [--node-name NAME] [--workers N]\n"
    "       mesd --version | --help\n"
    "\n"
    "Answers DNS for MeshExternalService hostnames and forwards other names upstream.\n"
    "The configuration file is --config FILE, else $MESD_CONFIG, else the built-in defaults;\n"
    "flags override it. --conf-dir applies a directory of resource YAML at start and whenever\n"
    "it changes (deleting what it no longer names); a bad file keeps the last good state.\n"
    "Links in it that lead out of it are an error unless --conf-dir-follow-links.\n"
    "--etcd-endpoints (or a `cluster` section) runs mesd as a node of a cluster: it mirrors\n"
    "the resources held in etcd into its store and keeps serving from that copy when etcd\n"
    "is away; --node-name names it there (default: the host name).\n"
    "--workers N serves DNS and the proxy on N threads (default: one per CPU mesd may run on;\n"
    "1: a single loop).\n"
    "Core dumps are off (the process holds TLS keys and Secrets); --allow-core-dumps turns\n"
    "them back on for debugging.\n";

struct Flags {
    std::optional<std::string> config;
    std::optional<std::string> data_dir;
    std::vector<std::string> dns_listen;
    std::optional<std::string> admin_listen;
    std::optional<std::string> conf_dir;
    std::optional<std::string> log_level;
    std::optional<std::string> etcd_endpoints;
    std::optional<std::string> node_name;
    std::optional<std::string> workers;
    bool allow_core_dumps = false;
    bool conf_dir_follow_links = false;
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
        else if (name == "--etcd-endpoints") v = f.etcd_endpoints = take();
        else if (name == "--node-name") v = f.node_name = take();
        else if (name == "--workers") v = f.workers = take();
        else if (arg == "--conf-dir-follow-links") {
            f.conf_dir_follow_links = true;
            continue;
        }
        else if (name == "--dns-listen") {
            v = take();
            if (v) f.dns_listen.push_back(*v);
        } else if (name == "--allow-core-dumps") {
            f.allow_core_dumps = true;
            continue;
        } else if (name == "--help" || name == "-h") {
            std::cout << usage_text;
            std::exit(exit_ok);
        } else if (name == "--version") {
            std::cout << cmd::version_text("mesd");
            std::exit(exit_ok);
        } else {
            return "unknown option " + arg;
        }
        if (!v) return name + " needs a value";
    }
    return std::nullopt;
}

// Shares the descriptor limit out, as Unbound's checkrlimits() does at start: fixed needs
// first (the store, the listeners, the loop's own descriptors, upstream and resolver
// sockets), then the admin endpoint's connections, then DNS over TCP, and the proxy what is
// left at two descriptors a connection. A setting that does not fit is lowered with a warning
// rather than left to fail with EMFILE at run time, where it would take /ready down with it.
void share_descriptors(conf::Config& config, rlim_t limit, bool quiet = false)
{
    constexpr std::uint64_t fixed = 64;  // store, loop, signals, thread pool, upstream sockets, logs
    // Each worker beyond the first: its loop's epoll and wake-up descriptors, a spare kept for
    // accept failures, upstream sockets, and its own sockets on every DNS address (UDP twice:
    // the socket and the descriptor its readiness is polled on; TCP) and the redirect port.
    const std::uint64_t workers = config.workers > 1 ? config.workers : 0;
    const std::uint64_t per_worker = 8 + 3 * config.dns.listen.size() + 1;
    const std::uint64_t listeners = 2 * config.dns.listen.size() + 2 + workers * per_worker;  // UDP and TCP each; admin; redirect
    const std::uint64_t admin = cmd::Admin::max_connections;
    const std::uint64_t total = limit == RLIM_INFINITY ? std::uint64_t{1} << 32 : static_cast<std::uint64_t>(limit);
    const std::uint64_t reserved = fixed + listeners + admin;
    const std::uint64_t available = total > reserved + 4 ? total - reserved : 4;
    // DNS over TCP keeps dns.tcpMaxClients when it fits in half of what is left; otherwise it
    // and the proxy share it.
    std::uint64_t dns_tcp = config.dns.tcp_max_clients;
    if (dns_tcp > available / 2) {
        dns_tcp = available / 2;
        if (!quiet) log::warn("daemon", "open files limit too low for dns.tcpMaxClients; lowered",
                  {{"tcpMaxClients", std::to_string(config.dns.tcp_max_clients)}, {"now", std::to_string(dns_tcp)},
                   {"limit", std::to_string(total)}});
        config.dns.tcp_max_clients = static_cast<std::uint32_t>(dns_tcp);
    }
    const std::uint64_t proxy = std::max<std::uint64_t>(1, (available - dns_tcp) / 2);
    if (config.proxy.max_connections > proxy) {
        if (config.proxy.max_connections_set && !quiet)
            log::warn("daemon", "open files limit too low for proxy.maxConnections; lowered",
                      {{"maxConnections", std::to_string(config.proxy.max_connections)}, {"now", std::to_string(proxy)},
                       {"limit", std::to_string(total)}});
        config.proxy.max_connections = static_cast<std::uint32_t>(proxy);
    }
    if (!quiet) log::info("daemon", "descriptors shared out",
              {{"reserved", std::to_string(reserved)}, {"admin_connections", std::to_string(admin)},
               {"dns_tcp_clients", std::to_string(config.dns.tcp_max_clients)},
               {"proxy_connections", std::to_string(config.proxy.max_connections)}});
}

// The configuration file (--config, else $MESD_CONFIG, else the defaults) with what the
// environment and the cluster flags add to it: at start and at each SIGHUP.
conf::ConfigResult load(const Flags& flags)
{
    auto loaded = conf::load_config(flags.config);
    if (flags.etcd_endpoints) conf::set_etcd_endpoints(loaded, *flags.etcd_endpoints, "--etcd-endpoints");
    if (flags.node_name) loaded.config.cluster.node_name = *flags.node_name;  // checked by main()
    if (loaded.config.cluster.enabled && loaded.config.cluster.node_name.empty()) {
        char host[256] = {};
        loaded.config.cluster.node_name = ::gethostname(host, sizeof host - 1) == 0 && host[0] ? host : "mesd";
    }
    return loaded;
}

// The flags over a loaded configuration, and what main() settles from it (the zone of
// Kuma's default generators, `workers: 0`): at start and at each SIGHUP, so that a reload
// compares like with like and a flag-set value stays as the flag said. The error names a
// bad flag.
std::optional<std::string> settle(conf::Config& config, const Flags& flags)
{
    if (flags.data_dir) config.data_dir = *flags.data_dir;
    // The names Kuma's default generators give are answered here, not forwarded, unless a
    // zone of the configuration holds them already.
    if (config.default_hostname_generators) {
        std::string zone(conf::default_generators_zone);
        bool covered = std::ranges::any_of(config.dns.zones, [&](const std::string& z) {
            return zone == z || zone.ends_with("." + z);
        });
        if (!covered) config.dns.zones.push_back(zone);
    }
    if (flags.workers) {
        const auto& text = *flags.workers;
        std::uint32_t n = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
        if (ec != std::errc{} || end != text.data() + text.size() || n > conf::max_workers)
            return "--workers " + conf::escape_controls(text) + ": must be a number from 0 to " +
                   std::to_string(conf::max_workers) + " (0: one per CPU)";
        config.workers = n;
    }
    if (!flags.dns_listen.empty()) {
        config.dns.listen.clear();
        for (const auto& text : flags.dns_listen) {
            auto hp = conf::parse_host_port(text);
            if (!hp) return "--dns-listen " + text + ": must be ADDRESS:PORT with an IP address";
            config.dns.listen.push_back(*hp);
        }
    }
    if (flags.admin_listen) {
        auto hp = conf::parse_host_port(*flags.admin_listen);
        if (!hp) return "--admin-listen " + *flags.admin_listen + ": must be ADDRESS:PORT with an IP address";
        config.admin.listen = *hp;
    }
    if (flags.log_level) config.log.level = *flags.log_level;
    log::Level level{};
    if (!log::parse_level(config.log.level, level)) return "--log-level " + config.log.level + ": must be debug, info, warn or error";
    // How many workers, decided before the descriptors are shared out: each holds some.
    if (config.workers == 0)
        config.workers = static_cast<std::uint32_t>(
            std::clamp<std::size_t>(workers::allowed_cpus().size(), 1, conf::max_workers));
    return std::nullopt;
}

// Off unless asked for: a core file (or a debugger attached by another process of the same
// user) would expose the TLS client keys and Secrets mesd holds in memory. PR_SET_DUMPABLE 0
// also makes /proc/PID's files root's, so another process of the same user cannot read
// mesd's environment or memory; RLIMIT_CORE 0 covers a dump made despite it.
void disable_core_dumps()
{
    rlimit core{0, 0};
    ::setrlimit(RLIMIT_CORE, &core);
    ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

}  // namespace

int main(int argc, char** argv)
{
    // A peer that goes away while mesd writes to it is an error on that write, not the end
    // of the daemon (libuv writes with write(2), which raises SIGPIPE by default).
    std::signal(SIGPIPE, SIG_IGN);
    // A SIGHUP during start-up (logrotate's) must not end the process: the loop's handler
    // replaces this once everything listens.
    std::signal(SIGHUP, SIG_IGN);
    // Each proxied connection holds two descriptors: take all the hard limit allows.
    if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &nofile);
    }
    Flags flags;
    if (auto err = parse_flags(argc, argv, flags)) {
        std::cerr << "mesd: " << *err << "\n\n" << usage_text;
        return exit_usage;
    }
    // Before the configuration, and with it any key or Secret, is read.
    if (!flags.allow_core_dumps) disable_core_dumps();
    // The name index and route lists are rebuilt whole on every store change: with glibc's
    // sliding mmap threshold their large arrays soon come from the heap and leave it
    // fragmented. A fixed threshold keeps them mapped, and each one freed goes back to the
    // kernel (a node of a cluster takes thousands of changes during a large apply).
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    if (flags.node_name && !conf::is_node_name(*flags.node_name)) {
        std::cerr << "mesd: --node-name " << conf::escape_controls(*flags.node_name)
                  << ": must be 1-253 letters, digits, '.', '-' or '_'\n";
        return exit_usage;
    }
    auto loaded = load(flags);
    if (!loaded.ok()) {
        for (const auto& d : loaded.errors) std::cerr << d.format() << '\n';
        return exit_usage;
    }
    conf::Config config = std::move(loaded.config);
    if (auto err = settle(config, flags)) {
        std::cerr << "mesd: " << *err << "\n";
        return exit_usage;
    }
    log::Level level{};
    log::parse_level(config.log.level, level);  // settle() checked it
    log::set_level(level);
    if (flags.allow_core_dumps) log::warn("daemon", "core dumps allowed: they may hold TLS keys and Secrets");
    // What the raise above got, shared out: every TCP client and proxied connection holds
    // descriptors from it, and the admin endpoint must keep one free under any flood.
    if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
        log::info("daemon", "open files limit",
                  {{"soft", std::to_string(nofile.rlim_cur)}, {"hard", std::to_string(nofile.rlim_max)}});
        share_descriptors(config, nofile.rlim_cur);
    }
    if (flags.conf_dir && config.cluster.enabled) {
        // Two sources of truth would undo each other's writes: in cluster mode etcd is the one.
        std::cerr << "mesd: --conf-dir cannot be used in cluster mode: apply the directory with "
                     "`mesctl apply --prune -f DIR` (it writes to etcd)\n";
        return exit_usage;
    }
    if (flags.conf_dir && !std::filesystem::is_directory(*flags.conf_dir)) {
        std::cerr << "mesd: --conf-dir " << *flags.conf_dir << ": not a directory\n";
        return exit_usage;
    }

    if (::geteuid() == 0 && !config.user.empty()) {
        if (auto clean = cmd::privilege::refuse_planted_links(config.data_dir); !clean) {
            log::error("store", "cannot open the store", {{"error", clean.error()}});
            return exit_failed;
        }
    }
    auto opened = store::Store::open(store::Options{config.data_dir});
    if (!opened) {
        log::error("store", "cannot open the store", {{"error", opened.error().message}});
        return exit_failed;
    }
    try {
        Daemon daemon(std::move(config), std::move(*opened), flags.conf_dir, flags.conf_dir_follow_links);
        // SIGHUP reads the file again as above, the flags over it again.
        std::optional<std::string> file = flags.config;
        if (const char* env = std::getenv("MESD_CONFIG"); !file && env && *env) file = env;
        if (file)
            daemon.set_config_loader(*file, [flags] {
                auto reloaded = load(flags);
                if (!reloaded.ok()) return reloaded;
                if (auto err = settle(reloaded.config, flags)) {
                    conf::Diagnostic d;
                    d.mark = conf::Mark{"flags", 0, 0};
                    d.message = *err;
                    reloaded.errors.push_back(std::move(d));
                    return reloaded;
                }
                if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0)
                    share_descriptors(reloaded.config, nofile.rlim_cur, true);
                return reloaded;
            });
        return daemon.run();
    } catch (const std::exception& e) {
        log::error("daemon", "fatal", {{"error", e.what()}});
        return exit_failed;
    }
}
