// mesctl: validate, apply, get, delete, inspect and check mesd's resources.
#include "cmd/completion.hpp"
#include "cmd/live.hpp"
#include "cmd/output.hpp"
#include "cmd/version.hpp"
#include "cmd/view.hpp"
#include "conf/conf.hpp"
#include "store/cluster.hpp"
#include "store/store.hpp"
#include "vip/vip.hpp"

#include <ctime>
#include <map>

#include <algorithm>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

constexpr std::string_view usage_text =
    "usage: mesctl [--config FILE] [--data-dir DIR] [--etcd-endpoints URL,...] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  validate [--quiet|-q] PATH...              check YAML files or directories of resources\n"
    "  apply -f|--filename PATH... [--prune]      validate, then write everything in one transaction\n"
    "      (validate, apply: --follow-links reads links in a directory that lead out of it)\n"
    "  get KIND [NAME] [--mesh M] [-o|--output table|yaml|json] [--admin HOST:PORT]\n"
    "                                             KIND: mes, hostnamegenerators (hg), secrets, vips; with\n"
    "                                             --admin, the MES the running mesd serves, with health\n"
    "  delete KIND NAME [--mesh M] [--force]      delete one resource (its VIPs go to quarantine)\n"
    "  inspect NAME|HOSTNAME|VIP [--mesh M] [--admin HOST:PORT]\n"
    "                                             what DNS answers and where traffic goes; with\n"
    "                                             --admin, the running mesd's health of each endpoint\n"
    "  check                                      verify the store's invariants\n"
    "  get nodes [-o table|yaml|json]             cluster mode: every mesd node, its revision and last contact\n"
    "  cluster import [--from DIR]                copy a single-node store (default: the store) into etcd,\n"
    "                                             every VIP kept\n"
    "  completion bash|zsh                        print a shell completion script\n"
    "  version                                    print the version and the libraries' (also --version)\n"
    "  help                                       show this text (also --help, -h)\n"
    "\n"
    "The store is --data-dir, else $MESD_DATA_DIR, else dataDir of the configuration file\n"
    "(--config FILE, else $MESD_CONFIG), else /var/lib/mesd.\n"
    "With --admin, get and inspect read the running mesd's live state from its admin endpoint\n"
    "and say so on stderr when it cannot be had and they show the store instead.\n"
    "In cluster mode (a `cluster` section, --etcd-endpoints or $MESD_ETCD_ENDPOINTS) apply and\n"
    "delete write to etcd; get, inspect and check read this node's copy in the store.\n"
    "exit status: 0 success, 1 invalid input or failed operation, 2 usage error or unreadable path\n";

// Messages may quote arguments and stored names: their control bytes are written escaped.
int usage_error(std::string_view message)
{
    std::cerr << "mesctl: " << conf::escape_controls(message) << "\n\n" << usage_text;
    return exit_usage;
}

int failure(std::string_view message)
{
    std::cerr << "mesctl: " << conf::escape_controls(message) << '\n';
    return exit_failed;
}

// Arguments after the command, with the options each command knows.
struct Args {
    std::vector<std::string> positional;
    std::vector<std::string> files;  // -f
    std::string mesh;                // --mesh
    std::string output = "table";    // -o
    bool quiet = false;
    bool prune = false;
    bool force = false;
    bool follow_links = false;  // links in a directory may lead out of it
    std::string from;           // cluster import --from
    std::string admin;          // get, inspect --admin HOST:PORT: the running mesd's admin endpoint
};

// "MESH/NAME", or "NAME" for what belongs to no mesh (a HostnameGenerator serving every mesh).
std::string owned_name(const std::string& mesh, const std::string& name)
{
    return mesh.empty() ? name : mesh + "/" + name;
}

// The mesh a command means: --mesh, else none for a HostnameGenerator (Kuma's have none),
// else "default".
std::string mesh_of(conf::Kind kind, const Args& a)
{
    if (!a.mesh.empty()) return a.mesh;
    return kind == conf::Kind::hostname_generator ? std::string() : std::string("default");
}

struct Globals {
    std::optional<std::string> config_path;
    std::optional<std::string> data_dir;
    std::optional<std::string> etcd_endpoints;
};

std::optional<std::string> parse_args(const std::vector<std::string>& argv, Globals& g, Args& a)
{
    bool options_done = false;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& arg = argv[i];
        auto value = [&](std::string_view name) -> std::optional<std::string> {
            if (auto eq = arg.find('='); eq != std::string::npos) return arg.substr(eq + 1);
            if (i + 1 >= argv.size()) return std::nullopt;
            (void)name;
            return argv[++i];
        };
        auto is = [&](std::string_view name) { return arg == name || arg.starts_with(std::string(name) + "="); };
        if (options_done || arg == "-" || !arg.starts_with("-")) {
            a.positional.push_back(arg);
        } else if (arg == "--") {
            options_done = true;
        } else if (is("--config")) {
            if (!(g.config_path = value("--config"))) return "--config needs a FILE";
        } else if (is("--data-dir")) {
            if (!(g.data_dir = value("--data-dir"))) return "--data-dir needs a DIR";
        } else if (is("--etcd-endpoints")) {
            if (!(g.etcd_endpoints = value("--etcd-endpoints"))) return "--etcd-endpoints needs URL,...";
        } else if (is("--from")) {
            auto v = value("--from");
            if (!v) return "--from needs a DIR";
            a.from = *v;
        } else if (is("--admin")) {
            auto v = value("--admin");
            if (!v || v->empty()) return "--admin needs HOST:PORT";
            a.admin = *v;
        } else if (arg == "-f" || is("--filename")) {
            auto v = value("-f");
            if (!v) return "-f needs a PATH";
            a.files.push_back(*v);
        } else if (is("--mesh")) {
            auto v = value("--mesh");
            if (!v) return "--mesh needs a MESH";
            a.mesh = *v;
        } else if (arg == "-o" || is("--output")) {
            auto v = value("-o");
            if (!v || (*v != "table" && *v != "yaml" && *v != "json")) return "-o takes table, yaml or json";
            a.output = *v;
        } else if (arg == "--quiet" || arg == "-q") {
            a.quiet = true;
        } else if (arg == "--prune") {
            a.prune = true;
        } else if (arg == "--follow-links") {
            a.follow_links = true;
        } else if (arg == "--force") {
            a.force = true;
        } else {
            return "unknown option " + arg;
        }
    }
    return std::nullopt;
}

void print_diagnostics(const conf::LoadResult& result, bool quiet)
{
    for (const auto& d : result.file_errors) std::cerr << d.format() << '\n';
    for (const auto& doc : result.documents) {
        for (const auto& d : doc.diagnostics) std::cerr << d.format() << '\n';
        if (doc.valid() && !quiet) {
            const auto& r = doc.resource;
            std::cout << "ok " << conf::kind_name(r.kind) << ' ' << owned_name(r.mesh, r.name) << '\n';
        }
    }
    std::cout.flush();
}

// Returns the exit code when the input is not fit to use.
std::optional<int> report_invalid(const conf::LoadResult& result)
{
    if (!result.unreadable.empty()) return exit_usage;
    if (result.ok()) return std::nullopt;
    std::size_t invalid = 0;
    for (const auto& doc : result.documents) invalid += doc.valid() ? 0 : 1;
    std::cerr << "mesctl: " << result.error_count() << " error(s) in " << invalid << " resource(s)"
              << (result.file_errors.empty() ? "" : " and files") << '\n';
    return exit_failed;
}

conf::ConfigResult load_configuration(const Globals& g);

int cmd_validate(const Globals& g, const Args& a)
{
    if (a.positional.empty()) return usage_error("validate: no PATH given");
    std::vector<std::string> paths;
    for (const auto& p : a.positional) paths.push_back(p == "-" ? "/dev/stdin" : p);
    conf::LoadOptions options;
    options.follow_outside_links = a.follow_links;
    // The zone a resource would be labelled with; validation needs no usable configuration.
    if (auto loaded = load_configuration(g); loaded.ok()) options.zone = loaded.config.zone;
    auto result = conf::load_paths(paths, options);
    print_diagnostics(result, a.quiet);
    return report_invalid(result).value_or(exit_ok);
}

struct Context {
    conf::Config config;
    std::unique_ptr<store::Store> store;

    store::WriteOptions write_options() const
    {
        store::WriteOptions o;
        o.pools = store::Pools::from(config);
        o.zone = config.zone;
        return o;
    }
};

conf::ConfigResult load_configuration(const Globals& g)
{
    auto loaded = conf::load_config(g.config_path);
    if (g.etcd_endpoints) conf::set_etcd_endpoints(loaded, *g.etcd_endpoints, "--etcd-endpoints");
    if (g.data_dir) loaded.config.data_dir = *g.data_dir;
    return loaded;
}

std::expected<Context, int> open_context(const Globals& g)
{
    auto loaded = load_configuration(g);
    if (!loaded.ok()) {
        for (const auto& d : loaded.errors) std::cerr << d.format() << '\n';
        return std::unexpected(g.config_path ? exit_failed : exit_failed);
    }
    Context ctx;
    ctx.config = std::move(loaded.config);
    auto opened = store::Store::open(store::Options{ctx.config.data_dir});
    if (!opened) {
        std::cerr << "mesctl: " << opened.error().message << '\n';
        return std::unexpected(exit_failed);
    }
    ctx.store = std::move(*opened);
    if (!ctx.store->read_only().empty())
        std::cerr << "mesctl: warning: store " << ctx.config.data_dir << " is read-only (" << ctx.store->read_only()
                  << "): it can be read, not changed\n";
    return ctx;
}

void print_notes(const store::WriteReport& report)
{
    for (const auto& n : report.notes) std::cerr << "mesctl: note: " << n << '\n';
}

// Cluster mode: the configuration and a client of etcd, for the commands that use etcd.
struct ClusterContext {
    conf::Config config;
    store::etcd::Options options;
    std::unique_ptr<store::etcd::Client> client;
};

std::expected<ClusterContext, int> open_cluster(conf::ConfigResult loaded)
{
    if (!loaded.ok()) {
        for (const auto& d : loaded.errors) std::cerr << d.format() << '\n';
        return std::unexpected(exit_failed);
    }
    ClusterContext ctx;
    ctx.config = std::move(loaded.config);
    if (!ctx.config.cluster.enabled) {
        std::cerr << "mesctl: not in cluster mode: the configuration has no cluster section "
                     "(or give --etcd-endpoints)\n";
        return std::unexpected(exit_usage);
    }
    ctx.options = store::cluster::client_options(ctx.config);
    auto client = store::etcd::Client::connect(ctx.options);
    if (!client) {
        std::cerr << "mesctl: " << store::cluster::describe(ctx.options, client.error()) << '\n';
        return std::unexpected(exit_failed);
    }
    ctx.client = std::move(*client);
    return ctx;
}


void print_changes(const store::WriteReport& report)
{
    for (const auto& c : report.changes) {
        std::cout << store::outcome_name(c.outcome) << ' ' << conf::kind_name(c.kind) << ' ' << owned_name(c.mesh, c.name);
        if (c.kind == conf::Kind::mesh_external_service) std::cout << ' ' << cmd::vip_text(c.status);
        std::cout << '\n';
    }
    std::cout.flush();
    print_notes(report);
}

int cluster_apply(conf::ConfigResult loaded, const Args& a, const std::vector<std::string>& paths)
{
    auto ctx = open_cluster(std::move(loaded));
    if (!ctx) {
        std::cerr << "mesctl: nothing was applied\n";
        return ctx.error();
    }
    store::cluster::Writer writer(*ctx->client, ctx->config);
    conf::LoadOptions options;
    options.follow_outside_links = a.follow_links;
    options.zone = ctx->config.zone;
    std::map<std::string, bool> secrets;  // asked of etcd once each
    std::string secret_error;
    if (!a.prune)
        options.secret_exists = [&](std::string_view mesh, std::string_view name) {
            auto key = std::string(mesh) + "/" + std::string(name);
            if (auto it = secrets.find(key); it != secrets.end()) return it->second;
            auto has = writer.has_secret(mesh, name);
            if (!has && secret_error.empty()) secret_error = has.error().message;
            return secrets[key] = has && *has;
        };
    auto result = conf::load_paths(paths, options);
    for (const auto& d : result.file_errors) std::cerr << d.format() << '\n';
    for (const auto& doc : result.documents)
        for (const auto& d : doc.diagnostics) std::cerr << d.format() << '\n';
    if (!secret_error.empty()) return failure("apply: " + secret_error + " (nothing was applied)");
    if (auto code = report_invalid(result)) {
        std::cerr << "mesctl: nothing was applied\n";
        return *code;
    }
    std::vector<conf::Resource> resources;
    for (auto& doc : result.documents) resources.push_back(std::move(doc.resource));
    // --prune keeps Kuma's default generators the nodes created, as in single-node mode
    // (they are not the input's); one the input names is applied as written.
    std::vector<store::ResourceKey> spare;
    if (a.prune && ctx->config.default_hostname_generators)
        for (const auto& def : conf::default_hostname_generators()) spare.push_back({def.kind, def.mesh, def.name});
    auto report = writer.apply(resources, a.prune, spare);
    if (!report)
        return failure("apply: " + report.error().message +
                       " (what was written before this stays; the same apply again finishes the rest)");
    print_changes(*report);
    return exit_ok;
}

int cmd_apply(const Globals& g, const Args& a)
{
    std::vector<std::string> paths = a.files;
    for (const auto& p : a.positional) paths.push_back(p);
    if (paths.empty()) return usage_error("apply: no -f PATH given");
    for (auto& p : paths)
        if (p == "-") p = "/dev/stdin";
    if (auto loaded = load_configuration(g); loaded.config.cluster.enabled)
        return cluster_apply(std::move(loaded), a, paths);
    auto ctx = open_context(g);
    if (!ctx) return ctx.error();

    conf::LoadOptions options;
    options.follow_outside_links = a.follow_links;
    options.zone = ctx->config.zone;
    // With --prune only the input counts: a Secret missing from it is about to be deleted.
    std::optional<store::Snapshot> snap;
    if (!a.prune) {
        auto s = ctx->store->snapshot();
        if (!s) return failure(s.error().message);
        snap.emplace(std::move(*s));
        options.secret_exists = [&](std::string_view mesh, std::string_view name) {
            auto has = snap->has_secret(mesh, name);
            return has && *has;
        };
    }
    auto result = conf::load_paths(paths, options);
    snap.reset();  // no read view may stay open while the write grows the map
    for (const auto& d : result.file_errors) std::cerr << d.format() << '\n';
    for (const auto& doc : result.documents)
        for (const auto& d : doc.diagnostics) std::cerr << d.format() << '\n';
    if (auto code = report_invalid(result)) {
        std::cerr << "mesctl: nothing was applied\n";
        return *code;
    }

    std::vector<conf::Resource> resources;
    for (auto& doc : result.documents) resources.push_back(std::move(doc.resource));
    // --prune keeps Kuma's default generators that mesd created (they are not the input's).
    if (a.prune && ctx->config.default_hostname_generators) {
        auto view = ctx->store->snapshot();  // closed before the write, as above
        if (!view) return failure("apply: " + view.error().message + " (nothing was applied)");
        for (const auto& def : conf::default_hostname_generators()) {
            if (std::ranges::any_of(resources, [&](const conf::Resource& r) {
                    return r.kind == def.kind && r.mesh == def.mesh && r.name == def.name;
                }))
                continue;
            auto stored = view->get(def.kind, def.mesh, def.name);
            if (!stored) return failure("apply: " + stored.error().message + " (nothing was applied)");
            if (*stored) resources.push_back(std::move((*stored)->resource));
        }
    }
    auto wopts = ctx->write_options();
    wopts.prune = a.prune;
    auto report = ctx->store->apply(resources, wopts);
    if (!report) return failure("apply: " + report.error().message + " (nothing was applied)");
    for (const auto& c : report->changes) {
        std::cout << store::outcome_name(c.outcome) << ' ' << conf::kind_name(c.kind) << ' ' << owned_name(c.mesh, c.name);
        if (c.kind == conf::Kind::mesh_external_service) std::cout << ' ' << cmd::vip_text(c.status);
        std::cout << '\n';
    }
    std::cout.flush();
    print_notes(*report);
    return exit_ok;
}

std::optional<conf::Kind> resource_kind(std::string_view text)
{
    return conf::kind_from_string(text);
}

int get_vips(store::Snapshot& snap, const Args& a)
{
    auto vips = snap.vips();
    if (!vips) return failure(vips.error().message);
    auto quarantined = snap.quarantine();
    if (!quarantined) return failure(quarantined.error().message);
    cmd::Value items = cmd::Value::array();
    std::vector<std::vector<std::string>> rows;
    for (const auto& v : *vips) {
        if (!a.mesh.empty() && v.mesh != a.mesh) continue;
        if (a.positional.size() > 1 && v.address.to_string() != a.positional[1] && v.name != a.positional[1]) continue;
        rows.push_back({v.address.to_string(), "in use", v.mesh + "/" + v.name});
        cmd::Value& item = items.push(cmd::Value::object());
        item.set("ip", v.address.to_string());
        item.set("state", "inUse");
        item.set("mesh", v.mesh);
        item.set("name", v.name);
    }
    if (a.mesh.empty()) {
        for (const auto& q : *quarantined) {
            if (a.positional.size() > 1 && q.address.to_string() != a.positional[1]) continue;
            std::time_t t = store::Clock::to_time_t(q.released);
            char buf[32];
            struct tm tm {};
            gmtime_r(&t, &tm);
            std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
            rows.push_back({q.address.to_string(), "quarantined", std::string("released ") + buf});
            cmd::Value& item = items.push(cmd::Value::object());
            item.set("ip", q.address.to_string());
            item.set("state", "quarantined");
            item.set("released", std::string(buf));
        }
    }
    if (a.output == "table") std::cout << cmd::table({"VIP", "STATE", "OWNER"}, rows);
    else {
        cmd::Value list = cmd::Value::object();
        list.set("total", static_cast<std::int64_t>(rows.size()));
        list.set("items", std::move(items));
        std::cout << (a.output == "json" ? list.json() : list.yaml());
    }
    return exit_ok;
}

std::string age_text(std::int64_t ms)
{
    if (ms < 0) ms = 0;
    if (ms < 10'000) return std::to_string(ms / 1000) + "." + std::to_string(ms / 100 % 10) + "s";
    if (ms < 120'000) return std::to_string(ms / 1000) + "s";
    if (ms < 7'200'000) return std::to_string(ms / 60'000) + "m";
    return std::to_string(ms / 3'600'000) + "h";
}

int get_nodes(const Globals& g, const Args& a)
{
    auto ctx = open_cluster(load_configuration(g));
    if (!ctx) return ctx.error();
    store::cluster::Writer writer(*ctx->client, ctx->config);
    auto nodes = writer.nodes();
    if (!nodes) return failure(nodes.error().message);
    auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch()).count();
    std::vector<std::vector<std::string>> rows;
    cmd::Value items = cmd::Value::array();
    for (const auto& n : *nodes) {
        if (a.positional.size() > 1 && n.name != a.positional[1]) continue;
        rows.push_back({n.name, std::to_string(n.revision), std::to_string(n.lag), age_text(now - n.updated_ms) + " ago",
                        n.connected ? "yes" : "no (serving from its copy)"});
        cmd::Value& item = items.push(cmd::Value::object());
        item.set("name", n.name);
        item.set("revision", n.revision);
        item.set("lag", n.lag);
        item.set("lastContactMs", now - n.updated_ms);
        item.set("startedAtMs", n.started_ms);
        item.set("connected", n.connected);
    }
    if (a.output == "table") {
        std::cout << cmd::table({"NODE", "REVISION", "LAG", "LAST CONTACT", "WATCHING ETCD"}, rows);
    } else {
        cmd::Value list = cmd::Value::object();
        list.set("total", static_cast<std::int64_t>(rows.size()));
        list.set("items", std::move(items));
        std::cout << (a.output == "json" ? list.json() : list.yaml());
    }
    return exit_ok;
}

int cmd_cluster(const Globals& g, const Args& a)
{
    if (a.positional.empty() || a.positional[0] != "import") return usage_error("cluster: the command is `cluster import`");
    if (a.positional.size() != 1) return usage_error("cluster import: no arguments but --from DIR");
    auto ctx = open_cluster(load_configuration(g));
    if (!ctx) return ctx.error();
    std::string dir = a.from.empty() ? ctx->config.data_dir : a.from;
    auto opened = store::Store::open(store::Options{dir});
    if (!opened) return failure(opened.error().message);
    auto snap = (*opened)->snapshot();
    if (!snap) return failure(snap.error().message);
    auto recorded = snap->mirror_state();
    if (recorded && recorded->revision > 0)
        return failure("cluster import: " + dir + " is already a copy of " + recorded->source + ", not a single-node store");
    store::cluster::Writer writer(*ctx->client, ctx->config);
    std::vector<std::string> conflicts;
    auto report = writer.import(*snap, conflicts);
    if (!report)
        return failure("cluster import: " + report.error().message +
                       " (what was copied stays; running the import again copies the rest)");
    std::size_t created = 0, kept = 0;
    for (const auto& c : report->changes) (c.outcome == store::Outcome::created ? created : kept) += 1;
    for (const auto& c : conflicts) std::cerr << "mesctl: conflict: " << c << '\n';
    std::cout << "imported " << created << " resources from " << dir << " into etcd (" << kept
              << " already there), every VIP kept\n";
    if (!conflicts.empty()) return failure(std::to_string(conflicts.size()) + " resource(s) not imported");
    return exit_ok;
}

// The store's directory, for saying which store is shown.
std::string store_dir(const Globals& g) { return load_configuration(g).config.data_dir; }

void say_fallback(const Globals& g, const std::string& admin, const std::string& why)
{
    std::cerr << "mesctl: admin " << conf::escape_controls(admin) << " unreachable (" << conf::escape_controls(why)
              << "); showing the store at " << conf::escape_controls(store_dir(g)) << '\n';
}

// `get mes --admin`: every MES the running mesd serves (the served meshes only), read page
// by page from /status.json. The error says why they cannot be had.
std::expected<std::vector<nlohmann::ordered_json>, std::string> live_mes(const std::string& admin)
{
    std::vector<nlohmann::ordered_json> items;
    std::size_t pages = 1;
    for (std::size_t page = 1; page <= pages; ++page) {
        auto body = cmd::http_get(admin, "/status.json?page=" + std::to_string(page));
        if (!body) return std::unexpected(body.error());
        auto read = cmd::live_mes_page(*body);
        if (!read) return std::unexpected("/status.json: " + read.error());
        // The listing may shrink between pages: what the daemon says now counts.
        pages = std::min<std::size_t>(read->pages, 100000);
        if (read->page != page) break;
        for (auto& item : read->items) items.push_back(std::move(item));
    }
    return items;
}

int get_live(const Args& a, std::vector<nlohmann::ordered_json> items)
{
    std::vector<nlohmann::ordered_json> chosen;
    const std::string mesh = a.positional.size() == 2 ? mesh_of(conf::Kind::mesh_external_service, a) : a.mesh;
    for (auto& item : items) {
        if (!mesh.empty() && item.value("mesh", std::string()) != mesh) continue;
        if (a.positional.size() == 2 && item.value("name", std::string()) != a.positional[1]) continue;
        chosen.push_back(std::move(item));
    }
    if (a.positional.size() == 2 && chosen.empty())
        return failure("MeshExternalService " + owned_name(mesh, a.positional[1]) + " not served by mesd at " + a.admin);
    if (a.output == "table") {
        std::vector<std::vector<std::string>> rows;
        for (const auto& item : chosen) {
            auto row = cmd::live_mes_row(item);
            for (auto& cell : row) cell = conf::escape_controls(cell);
            rows.push_back(std::move(row));
        }
        std::cout << cmd::table(cmd::live_mes_header(), rows);
        return exit_ok;
    }
    cmd::Value out;
    if (a.positional.size() == 2) {
        out = cmd::live_value(chosen.front());
    } else {
        out = cmd::Value::object();
        out.set("total", static_cast<std::int64_t>(chosen.size()));
        cmd::Value& list = out.set("items", cmd::Value::array());
        for (const auto& item : chosen) list.push(cmd::live_value(item));
    }
    std::cout << (a.output == "json" ? out.json() : out.yaml());
    return exit_ok;
}

int cmd_get(const Globals& g, const Args& a)
{
    if (a.positional.empty()) return usage_error("get: which KIND? (mes, hostnamegenerators, secrets, vips, nodes)");
    if (a.positional.size() > 2) return usage_error("get: too many arguments");
    if (a.positional[0] == "nodes" || a.positional[0] == "node") return get_nodes(g, a);
    if (!a.admin.empty()) {
        // The running daemon first: it may serve a store this user cannot read.
        if (resource_kind(a.positional[0]) != conf::Kind::mesh_external_service)
            return usage_error("get: --admin shows MES only (the running mesd reports no other kind)");
        auto live = live_mes(a.admin);
        if (live) return get_live(a, std::move(*live));
        say_fallback(g, a.admin, live.error());
    }
    auto ctx = open_context(g);
    if (!ctx) return ctx.error();
    auto snap = ctx->store->snapshot();
    if (!snap) return failure(snap.error().message);

    if (a.positional[0] == "vips" || a.positional[0] == "vip") return get_vips(*snap, a);
    auto kind = resource_kind(a.positional[0]);
    if (!kind) return usage_error("get: unknown KIND \"" + a.positional[0] + "\"");

    std::vector<store::Entry> entries;
    if (a.positional.size() == 2) {
        const std::string& name = a.positional[1];
        std::string mesh = mesh_of(*kind, a);
        auto e = snap->get(*kind, mesh, name);
        if (!e) return failure(e.error().message);
        // A generator stored with the mesh "default" (before generators were of no mesh).
        if (!*e && mesh.empty()) {
            e = snap->get(*kind, "default", name);
            if (!e) return failure(e.error().message);
            if (*e) mesh = "default";
        }
        if (!*e) return failure(std::string(conf::kind_name(*kind)) + " " + owned_name(mesh, name) + " not found");
        entries.push_back(std::move(**e));
    } else {
        auto list = snap->list(*kind, a.mesh.empty() ? std::nullopt : std::optional<std::string_view>(a.mesh));
        if (!list) return failure(list.error().message);
        entries = std::move(*list);
    }

    if (a.output == "table") {
        std::vector<std::vector<std::string>> rows;
        for (const auto& e : entries) rows.push_back(cmd::table_row(e, cmd::tls_condition(*snap, e)));
        std::cout << cmd::table(cmd::table_header(*kind), rows);
        return exit_ok;
    }
    cmd::Value out;
    if (a.positional.size() == 2) {
        out = cmd::resource_value(entries.front(), cmd::tls_condition(*snap, entries.front()));
    } else {
        out = cmd::Value::object();
        out.set("total", static_cast<std::int64_t>(entries.size()));
        cmd::Value& items = out.set("items", cmd::Value::array());
        for (const auto& e : entries) items.push(cmd::resource_value(e, cmd::tls_condition(*snap, e)));
    }
    std::cout << (a.output == "json" ? out.json() : out.yaml());
    return exit_ok;
}

int cmd_delete(const Globals& g, const Args& a)
{
    if (a.positional.size() != 2) return usage_error("delete: give KIND and NAME");
    auto kind = resource_kind(a.positional[0]);
    if (!kind) return usage_error("delete: unknown KIND \"" + a.positional[0] + "\"");
    if (auto loaded = load_configuration(g); loaded.config.cluster.enabled) {
        auto cl = open_cluster(std::move(loaded));
        if (!cl) return cl.error();
        store::cluster::Writer writer(*cl->client, cl->config);
        auto report = writer.remove(*kind, mesh_of(*kind, a), a.positional[1], a.force);
        if (!report) return failure("delete: " + report.error().message);
        print_changes(*report);
        return exit_ok;
    }
    auto ctx = open_context(g);
    if (!ctx) return ctx.error();
    auto wopts = ctx->write_options();
    wopts.force = a.force;
    std::string mesh = mesh_of(*kind, a);
    auto report = ctx->store->remove(*kind, mesh, a.positional[1], wopts);
    if (!report) return failure("delete: " + report.error().message);
    for (const auto& c : report->changes) {
        std::cout << store::outcome_name(c.outcome) << ' ' << conf::kind_name(c.kind) << ' ' << owned_name(c.mesh, c.name);
        if (c.kind == conf::Kind::mesh_external_service) std::cout << ' ' << cmd::vip_text(c.status);
        std::cout << '\n';
    }
    print_notes(*report);
    return exit_ok;
}

void print_inspection(const store::Entry& e, const conf::Config& config, const std::optional<conf::Condition>& tls)
{
    const auto& r = e.resource;
    const auto& m = *r.mes();
    const auto& s = e.status;
    std::cout << "MeshExternalService " << r.mesh << "/" << r.name << "\n";
    std::cout << "  VIP:         " << cmd::vip_text(s) << (s.vip_error.empty() ? "" : "  (" + s.vip_error + ")") << "\n";
    std::cout << "  hostnames:  ";
    if (s.hostnames.addresses.empty()) std::cout << " none";
    for (const auto& a : s.hostnames.addresses) std::cout << ' ' << a.hostname << " (generator " << a.generator << ")";
    std::cout << "\n";
    for (const auto& g : s.hostnames.generators)
        for (const auto& c : g.conditions)
            std::cout << "  condition:   " << g.generator << ": " << c.type << "=" << c.status << " " << c.reason
                      << (c.message.empty() ? "" : ": " + c.message) << "\n";
    if (tls)
        std::cout << "  condition:   tls: " << tls->type << "=" << tls->status << " " << tls->reason
                  << (tls->message.empty() ? "" : ": " + tls->message) << "\n";
    std::cout << "  DNS:        ";
    bool any = false;
    for (const auto& a : s.hostnames.addresses) {
        if (s.ipv4) std::cout << (any ? "; " : " ") << a.hostname << ". A " << s.ipv4->to_string(), any = true;
        if (s.ipv6) std::cout << (any ? "; " : " ") << a.hostname << ". AAAA " << s.ipv6->to_string(), any = true;
    }
    if (!any) std::cout << " no answer (no hostname or no VIP)";
    std::cout << " (TTL " << conf::format_duration(config.dns.ttl) << ")\n";
    std::cout << "  match:       port " << (m.port ? std::to_string(*m.port) : std::string("any")) << ", protocol "
              << conf::protocol_name(m.protocol) << "\n";
    std::cout << "  endpoints:  ";
    if (m.endpoints.empty()) std::cout << " none (connections are refused)";
    for (const auto& ep : m.endpoints) std::cout << ' ' << cmd::endpoint_text(ep);
    std::cout << "\n";
    std::cout << "  TLS:         " << cmd::tls_summary(m) << "\n";
    if (s.ipv4 || s.ipv6) {
        std::string vip = s.ipv4 ? s.ipv4->to_string() : "[" + s.ipv6->to_string() + "]";
        std::uint8_t lowest = 255;
        for (const auto& ep : m.endpoints) lowest = std::min(lowest, ep.priority);
        std::cout << "  traffic:     " << vip << ":" << (m.port ? std::to_string(*m.port) : std::string("*")) << " -> ";
        std::string targets;
        for (const auto& ep : m.endpoints)
            if (ep.priority == lowest) targets += (targets.empty() ? "" : ", ") + cmd::endpoint_text(ep);
        std::cout << (targets.empty() ? std::string("nowhere") : targets + " (round robin)")
                  << (m.tls && m.tls->enabled ? " over TLS" : "")
                  << (tls && tls->status != "True" ? " (refused: TLS cannot be used, " + tls->reason + ")" : "") << "\n";
    }
}

// What the running mesd holds of the MES, after what the store says; one line saying why
// not when it cannot be had (the store's view above stands on its own).
void print_live(const std::expected<std::string, std::string>& config, const std::string& admin, const std::string& mesh,
                const std::string& name)
{
    if (!config) {
        std::cout << "  live state: not available (" << conf::escape_controls(config.error()) << ")\n";
        return;
    }
    auto lines = cmd::live_lines(*config, mesh, name);
    if (!lines) {
        std::cout << "  live state: not available (admin at " << admin << ": " << conf::escape_controls(lines.error()) << ")\n";
        return;
    }
    if (lines->empty()) {
        std::cout << "  live state: mesd at " << admin
                  << " holds no proxy state for it (in redirect mode a MES appears once a connection needs it)\n";
        return;
    }
    std::cout << "  live state: from mesd at " << admin << "\n";
    for (const auto& l : *lines) std::cout << conf::escape_controls(l) << "\n";
}

int cmd_inspect(const Globals& g, const Args& a)
{
    if (a.positional.size() != 1) return usage_error("inspect: give one NAME, HOSTNAME or VIP");
    auto ctx = open_context(g);
    if (!ctx) return ctx.error();
    auto snap = ctx->store->snapshot();
    if (!snap) return failure(snap.error().message);
    const std::string& what = a.positional[0];

    std::vector<std::pair<std::string, std::string>> owners;  // (mesh, name)
    if (auto address = vip::Address::parse(what)) {
        auto owner = snap->owner_of(*address);
        if (!owner) return failure(owner.error().message);
        if (!*owner) {
            auto q = snap->quarantine();
            if (q)
                for (const auto& entry : *q)
                    if (entry.address == *address) return failure("VIP " + what + " is in quarantine (released, not yet reusable)");
            return failure("VIP " + what + " belongs to no MeshExternalService");
        }
        owners.emplace_back((*owner)->mesh, (*owner)->name);
    } else {
        auto by_host = snap->lookup_hostname(what);
        if (!by_host) return failure(by_host.error().message);
        for (const auto& o : *by_host)
            if (a.mesh.empty() || o.mesh == a.mesh) owners.emplace_back(o.mesh, o.name);
        if (owners.empty()) owners.emplace_back(a.mesh.empty() ? "default" : a.mesh, what);
    }
    // The running daemon's view, asked once for every MES printed.
    std::expected<std::string, std::string> live = std::unexpected("no --admin");
    if (!a.admin.empty()) {
        live = cmd::http_get(a.admin, "/config");
        if (!live) {
            say_fallback(g, a.admin, live.error());
            live = std::unexpected("admin at " + a.admin + ": " + live.error());
        }
    }
    int printed = 0;
    for (const auto& [mesh, name] : owners) {
        auto e = snap->get(conf::Kind::mesh_external_service, mesh, name);
        if (!e) return failure(e.error().message);
        if (!*e) continue;
        if (printed++) std::cout << "\n";
        print_inspection(**e, ctx->config, cmd::tls_condition(*snap, **e));
        print_live(live, a.admin, mesh, name);
    }
    if (printed == 0) return failure("no MeshExternalService, hostname or VIP \"" + what + "\"");
    return exit_ok;
}

int cmd_check(const Globals& g)
{
    auto ctx = open_context(g);
    if (!ctx) return ctx.error();
    auto snap = ctx->store->snapshot();
    if (!snap) return failure(snap.error().message);
    auto problems = snap->check();
    if (!problems) return failure(problems.error().message);
    for (const auto& p : *problems) std::cerr << "mesctl: check: " << p << '\n';
    if (!problems->empty()) return failure(std::to_string(problems->size()) + " problem(s) in " + ctx->config.data_dir);
    auto all = snap->list(std::nullopt, std::nullopt);
    auto vips = snap->vips();
    auto q = snap->quarantine();
    auto gen = snap->generation();
    if (!all || !vips || !q || !gen) return failure("cannot read the store");
    std::cout << "ok: " << all->size() << " resources, " << vips->size() << " VIPs in use, " << q->size()
              << " in quarantine, generation " << *gen << '\n';
    return exit_ok;
}

}  // namespace

int main(int argc, char** argv)
{
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) return usage_error("no command given");
    std::string command = args.front();
    args.erase(args.begin());
    if (command == "help" || command == "--help" || command == "-h") {
        std::cout << usage_text;
        return exit_ok;
    }
    if (command == "version" || command == "--version") {
        std::cout << cmd::version_text("mesctl");
        return exit_ok;
    }
    // What the completion scripts call: the words after "mesctl" up to the cursor's.
    if (command == "__complete") {
        try {
            for (const auto& c : cmd::complete(args)) std::cout << c << '\n';
        } catch (const std::exception&) {
            // Nothing to offer: a completion prints no errors into the command line.
        }
        return exit_ok;
    }
    if (command == "completion") {
        if (args.size() != 1) return usage_error("completion: give the shell, bash or zsh");
        auto script = cmd::completion_script(args[0]);
        if (!script) return usage_error("completion: unknown shell \"" + args[0] + "\" (bash or zsh)");
        std::cout << *script;
        return exit_ok;
    }
    Globals g;
    Args a;
    // Global options may come before the command too.
    while (command.starts_with("--")) {
        std::vector<std::string> head{command};
        if (command.find('=') == std::string::npos && !args.empty()) {
            head.push_back(args.front());
            args.erase(args.begin());
        }
        Args ignored;
        if (auto err = parse_args(head, g, ignored)) return usage_error(*err);
        if (!ignored.positional.empty() || args.empty()) return usage_error("no command given");
        command = args.front();
        args.erase(args.begin());
    }
    // `mesctl COMMAND --help`: the one text that covers every command.
    for (const auto& arg : args) {
        if (arg == "--") break;
        if (arg == "--help" || arg == "-h") {
            std::cout << usage_text;
            return exit_ok;
        }
    }
    if (auto err = parse_args(args, g, a)) return usage_error(*err);
    try {
        if (command == "validate") return cmd_validate(g, a);
        if (command == "apply") return cmd_apply(g, a);
        if (command == "get") return cmd_get(g, a);
        if (command == "delete") return cmd_delete(g, a);
        if (command == "inspect") return cmd_inspect(g, a);
        if (command == "check") return cmd_check(g);
        if (command == "cluster") return cmd_cluster(g, a);
    } catch (const std::exception& e) {
        std::cerr << "mesctl: " << e.what() << '\n';
        return exit_failed;
    }
    return usage_error("unknown command \"" + command + "\"");
}
