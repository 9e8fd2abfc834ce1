// The configuration file: every key of DESIGN.md with its default, unknown keys refused,
// each error pointing at its line and column.
#include "conf/conf.hpp"
#include "conf/detail/reader.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <tuple>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace conf {

using detail::Fields;
using detail::Reporter;
using detail::present;
using detail::read_string;

std::string HostPort::to_string() const
{
    bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::optional<HostPort> parse_host_port(std::string_view text)
{
    HostPort out;
    std::string_view port_text;
    if (text.starts_with('[')) {
        auto close = text.find(']');
        if (close == std::string_view::npos || text.substr(close + 1, 1) != ":") return std::nullopt;
        out.host = std::string(text.substr(1, close - 1));
        if (ip_literal_kind(out.host) != AddressKind::ipv6) return std::nullopt;
        port_text = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos) return std::nullopt;
        out.host = std::string(text.substr(0, colon));
        if (!out.host.empty() && ip_literal_kind(out.host) != AddressKind::ipv4) return std::nullopt;
        port_text = text.substr(colon + 1);
    }
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
    if (ec != std::errc{} || end != port_text.data() + port_text.size() || value > 65535 || port_text.empty())
        return std::nullopt;
    out.port = static_cast<std::uint16_t>(value);
    return out;
}

std::optional<Duration> parse_duration(std::string_view text)
{
    if (text.empty()) return std::nullopt;
    if (text == "0") return Duration(0);
    std::int64_t total_ms = 0;
    while (!text.empty()) {
        std::int64_t n = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
        if (ec != std::errc{} || end == text.data() || n < 0) return std::nullopt;
        text.remove_prefix(static_cast<std::size_t>(end - text.data()));
        std::int64_t unit_ms = 0;
        if (text.starts_with("ms")) { unit_ms = 1; text.remove_prefix(2); }
        else if (text.starts_with("s")) { unit_ms = 1000; text.remove_prefix(1); }
        else if (text.starts_with("m")) { unit_ms = 60'000; text.remove_prefix(1); }
        else if (text.starts_with("h")) { unit_ms = 3'600'000; text.remove_prefix(1); }
        else return std::nullopt;
        if (n > (std::int64_t{1} << 40)) return std::nullopt;
        total_ms += n * unit_ms;
    }
    return Duration(total_ms);
}

std::string format_duration(Duration d)
{
    auto ms = d.count();
    if (ms == 0) return "0s";
    if (ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
    if (ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
    if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

bool valid_etcd_endpoint(std::string_view text)
{
    if (text.starts_with("http://")) text.remove_prefix(7);
    else if (text.starts_with("https://")) text.remove_prefix(8);
    if (text.ends_with('/')) text.remove_suffix(1);
    if (parse_host_port(text)) return true;
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return false;
    auto host = text.substr(0, colon);
    auto port = text.substr(colon + 1);
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    return ec == std::errc{} && end == port.data() + port.size() && !port.empty() && value > 0 && value <= 65535 &&
           is_dns_name(host);
}

namespace {

bool valid_cidr(std::string_view text, bool want_v6)
{
    auto slash = text.find('/');
    if (slash == std::string_view::npos) return false;
    auto kind = ip_literal_kind(text.substr(0, slash));
    if (!kind || (*kind == AddressKind::ipv6) != want_v6) return false;
    unsigned bits = 0;
    auto len = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), bits);
    return ec == std::errc{} && end == len.data() + len.size() && !len.empty() && bits <= (want_v6 ? 128u : 32u);
}

bool valid_any_cidr(std::string_view text) { return valid_cidr(text, false) || valid_cidr(text, true); }

}  // namespace

// Node names go into etcd keys and metric labels: plain characters only.
bool is_node_name(std::string_view s)
{
    return !s.empty() && s.size() <= 253 && std::ranges::all_of(s, [](char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
               ch == '-' || ch == '_';
    });
}

// The names useradd(8) accepts, and not a number (which getpwnam would not find either):
// [A-Za-z0-9._-], not starting with '-', at most 32 (the utmp field).
bool is_user_spec(std::string_view s)
{
    auto name_ok = [](std::string_view n) {
        return !n.empty() && n.size() <= 32 && n.front() != '-' &&
               std::ranges::all_of(n, [](char ch) {
                   return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                          ch == '.' || ch == '_' || ch == '-';
               }) &&
               !std::ranges::all_of(n, [](char ch) { return ch >= '0' && ch <= '9'; });
    };
    auto colon = s.find(':');
    if (colon == std::string_view::npos) return name_ok(s);
    return name_ok(s.substr(0, colon)) && name_ok(s.substr(colon + 1));
}

namespace {

class ConfigReader {
public:
    ConfigReader(Reporter& r) : r_(r) {}

    void duration(Fields& f, std::string_view key, Duration& out, bool allow_zero = false, Duration max = Duration::max())
    {
        auto node = f.take(key);
        auto text = read_string(r_, node, f.path(key));
        if (!text) return;
        auto d = parse_duration(*text);
        if (!d || (!allow_zero && d->count() == 0)) {
            r_.error(node, f.path(key), "must be a duration such as 500ms, 30s, 5m or 1h, got " + excerpt(*text));
            return;
        }
        if (*d > max) {
            r_.error(node, f.path(key), "must be at most " + format_duration(max) + ", got " + excerpt(*text));
            return;
        }
        out = *d;
    }

    template <class Int>
    void integer(Fields& f, std::string_view key, Int& out, std::int64_t min, std::int64_t max)
    {
        auto v = detail::read_int(r_, f.take(key), f.path(key), min, max,
                                  "must be between " + std::to_string(min) + " and " + std::to_string(max));
        if (v) out = static_cast<Int>(*v);
    }

    void boolean(Fields& f, std::string_view key, bool& out)
    {
        if (auto v = detail::read_bool(r_, f.take(key), f.path(key))) out = *v;
    }

    void string(Fields& f, std::string_view key, std::string& out)
    {
        if (auto v = read_string(r_, f.take(key), f.path(key))) out = *v;
    }

    void host_port(Fields& f, std::string_view key, HostPort& out)
    {
        auto node = f.take(key);
        if (auto text = read_string(r_, node, f.path(key))) {
            if (auto hp = parse_host_port(*text)) out = *hp;
            else r_.error(node, f.path(key), "must be ADDRESS:PORT with an IP address, e.g. 127.0.0.1:53 or [::1]:53");
        }
    }

    // A list of strings, each checked by `valid`.
    template <class Check>
    bool strings(Fields& f, std::string_view key, std::vector<std::string>& out, Check valid, std::string_view what)
    {
        auto node = f.take(key);
        if (!present(node)) return false;
        std::string path = f.path(key);
        if (!node.IsSequence()) {
            r_.error(node, path, "must be a list");
            return false;
        }
        std::vector<std::string> values;
        for (std::size_t i = 0; i < node.size(); ++i) {
            auto text = read_string(r_, node[i], detail::join(path, i));
            if (!text) continue;
            if (!valid(*text)) {
                r_.error(node[i], detail::join(path, i), "must be " + std::string(what) + ", got " + excerpt(*text));
                continue;
            }
            values.push_back(*text);
        }
        out = std::move(values);
        return true;
    }

    void host_ports(Fields& f, std::string_view key, std::vector<HostPort>& out)
    {
        std::vector<std::string> texts;
        if (!strings(f, key, texts, [](const std::string& s) { return parse_host_port(s).has_value(); },
                     "ADDRESS:PORT with an IP address"))
            return;
        out.clear();
        for (const auto& t : texts) out.push_back(*parse_host_port(t));
    }

    void choice(Fields& f, std::string_view key, std::string& out, std::span<const std::string_view> choices)
    {
        auto i = detail::read_choice(r_, f.take(key), f.path(key), key, choices);
        if (i) out = std::string(choices[*i]);
    }

private:
    Reporter& r_;
};

void read_config(Reporter& r, const YAML::Node& root, Config& c)
{
    ConfigReader read(r);
    Fields top(r, root, "");
    if (!top.ok()) return;
    read.string(top, "dataDir", c.data_dir);
    read.strings(top, "meshes", c.meshes, [](const std::string& s) { return is_rfc1123_subdomain(s); },
                 "a mesh name");
    read.integer(top, "workers", c.workers, 0, max_workers);
    {
        // Kuma's zone name (multizone.zone.name), a DNS label as Kuma's zones are.
        auto node = top.take("zone");
        if (auto zone = read_string(r, node, "zone")) {
            if (zone->size() > 63 || !is_rfc1123_subdomain(*zone) || zone->find('.') != std::string::npos)
                r.error(node, "zone", "must be a lowercase DNS label (letters, digits and '-', at most 63), got " +
                                          excerpt(*zone));
            else
                c.zone = *zone;
        }
    }
    read.boolean(top, "defaultHostnameGenerators", c.default_hostname_generators);
    {
        auto node = top.take("user");
        if (auto text = read_string(r, node, "user")) {
            if (is_user_spec(*text)) c.user = *text;
            else r.error(node, "user", "must be a user name, or USER:GROUP (letters, digits, '.', '_' and '-'), got " +
                                           excerpt(*text));
        }
    }
    read.boolean(top, "sandbox", c.sandbox);
    {
        static constexpr std::string_view affinities[] = {"auto", "none"};
        read.choice(top, "workerAffinity", c.worker_affinity, affinities);
    }
    {
        Fields dns(r, top.take("dns"), "dns");
        // The root cannot be a zone of mesd's: every name would be answered here, none forwarded.
        auto zone_ok = [](const std::string& z) { return is_dns_name(z); };
        if (dns.ok()) {
            read.host_ports(dns, "listen", c.dns.listen);
            read.strings(dns, "zones", c.dns.zones, zone_ok, "a DNS name other than the root");
            for (auto& z : c.dns.zones)
                if (!z.ends_with('.')) z += '.';
            read.duration(dns, "ttl", c.dns.ttl, true);
            read.duration(dns, "negativeTtl", c.dns.negative_ttl, true);
            read.integer(dns, "ednsUdpSize", c.dns.edns_udp_size, 512, 65535);
            read.duration(dns, "tcpIdleTimeout", c.dns.tcp_idle_timeout);
            read.integer(dns, "tcpMaxClients", c.dns.tcp_max_clients, 1, 1'000'000);
            read.duration(dns, "tcpIoTimeout", c.dns.tcp_io_timeout);
            read.integer(dns, "tcpMaxClientsPerIp", c.dns.tcp_max_clients_per_ip, 0, 1'000'000);
            Fields fwd(r, dns.take("forward"), "dns.forward");
            if (fwd.ok()) {
                read.boolean(fwd, "enabled", c.dns.forward.enabled);
                read.host_ports(fwd, "upstreams", c.dns.forward.upstreams);
                read.duration(fwd, "timeout", c.dns.forward.timeout);
                read.strings(fwd, "allow", c.dns.forward.allow, [](const std::string& s) { return valid_any_cidr(s); },
                             "a CIDR such as 10.0.0.0/8 or fc00::/7");
                read.integer(fwd, "maxInFlight", c.dns.forward.max_in_flight, 1, 1'000'000);
                read.duration(fwd, "maxWait", c.dns.forward.max_wait, false, std::chrono::minutes(1));
            }
            Fields rrl(r, dns.take("rateLimit"), "dns.rateLimit");
            if (rrl.ok()) {
                auto& l = c.dns.rate_limit;
                read.integer(rrl, "responsesPerSecond", l.responses_per_second, 0, 1'000'000);
                read.integer(rrl, "burst", l.burst, 0, 1'000'000);
                read.integer(rrl, "slip", l.slip, 0, 100);  // Knot's range
                read.integer(rrl, "ipv4PrefixLength", l.ipv4_prefix_length, 8, 32);
                read.integer(rrl, "ipv6PrefixLength", l.ipv6_prefix_length, 16, 128);
                read.integer(rrl, "tableSize", l.table_size, 1, 16'777'216);
                read.strings(rrl, "exempt", l.exempt, [](const std::string& s) { return valid_any_cidr(s); },
                             "a CIDR such as 127.0.0.0/8 or ::1/128");
            }
        }
    }
    {
        Fields vip(r, top.take("vip"), "vip");
        if (vip.ok()) {
            auto v4 = vip.take("ipv4");
            if (auto text = read_string(r, v4, "vip.ipv4")) {
                if (valid_cidr(*text, false)) c.vip.ipv4 = *text;
                else r.error(v4, "vip.ipv4", "must be an IPv4 CIDR such as 242.0.0.0/8, got " + excerpt(*text));
            }
            auto v6 = vip.take("ipv6");
            if (auto text = read_string(r, v6, "vip.ipv6")) {
                if (text->empty() || valid_cidr(*text, true)) c.vip.ipv6 = *text;
                else r.error(v6, "vip.ipv6", "must be an IPv6 CIDR such as fd00:fd02::/64, got " + excerpt(*text));
            }
            read.duration(vip, "quarantine", c.vip.quarantine, true);
        }
    }
    {
        Fields proxy(r, top.take("proxy"), "proxy");
        if (proxy.ok()) {
            static constexpr std::string_view modes[] = {"bind", "redirect"};
            read.choice(proxy, "mode", c.proxy.mode, modes);
            read.host_port(proxy, "redirectListen", c.proxy.redirect_listen);
            read.duration(proxy, "connectTimeout", c.proxy.connect_timeout);
            read.duration(proxy, "idleTimeout", c.proxy.idle_timeout);
            c.proxy.max_connections_set = proxy.has("maxConnections");
            read.integer(proxy, "maxConnections", c.proxy.max_connections, 1, 10'000'000);
            read.integer(proxy, "maxConnectionsPerService", c.proxy.max_connections_per_service, 0, 10'000'000);
            read.integer(proxy, "upstreamMark", c.proxy.upstream_mark, 0, 0xffffffffLL);
            read.integer(proxy, "connectAttempts", c.proxy.connect_attempts, 1, 100);
            read.integer(proxy, "ejectAfter", c.proxy.eject_after, 1, 1000);
            read.duration(proxy, "ejectBase", c.proxy.eject_base);
            read.duration(proxy, "ejectMax", c.proxy.eject_max);
            read.host_ports(proxy, "resolvers", c.proxy.resolvers);
            read.duration(proxy, "resolveTimeout", c.proxy.resolve_timeout);
            read.duration(proxy, "dnsMinTtl", c.proxy.dns_min_ttl);
            read.duration(proxy, "dnsMaxTtl", c.proxy.dns_max_ttl);
            {
                auto node = proxy.take("hostsFile");
                if (auto text = read_string(r, node, "proxy.hostsFile")) {
                    if (text->empty() || text->starts_with('/')) c.proxy.hosts_file = *text;
                    else r.error(node, "proxy.hostsFile", "must be an absolute path (or \"\" for none), got " + excerpt(*text));
                }
            }
            Fields access(r, proxy.take("accessLog"), "proxy.accessLog");
            if (access.ok() && present(access.node())) {
                auto path_node = access.take("path");
                if (!present(path_node)) r.error(access.node(), "proxy.accessLog.path", "must be given: stdout, stderr or a file");
                else if (auto text = read_string(r, path_node, "proxy.accessLog.path")) {
                    if (text->empty()) r.error(path_node, "proxy.accessLog.path", "must be stdout, stderr or a file, got \"\"");
                    else c.proxy.access_log.path = *text;
                }
                static constexpr std::string_view formats[] = {"logfmt", "json"};
                read.choice(access, "format", c.proxy.access_log.format, formats);
            }
            if (c.proxy.dns_min_ttl > c.proxy.dns_max_ttl)
                r.error(root["proxy"], "proxy.dnsMinTtl", "must not be above proxy.dnsMaxTtl");
            if (c.proxy.eject_base > c.proxy.eject_max)
                r.error(root["proxy"], "proxy.ejectBase", "must not be above proxy.ejectMax");
            Fields hc(r, proxy.take("healthCheck"), "proxy.healthCheck");
            if (hc.ok() && present(hc.node())) {
                auto& h = c.proxy.health_check;
                // Checks run once `interval` is given (as Envoy's health_checks need one),
                // or with `enabled: true` at the default interval; `enabled: false` keeps the
                // settings for the MES labelled mesd.io/health-check: "true".
                h.enabled = hc.has("interval");
                read.boolean(hc, "enabled", h.enabled);
                read.duration(hc, "interval", h.interval, false, std::chrono::hours(1));
                read.duration(hc, "timeout", h.timeout, false, std::chrono::minutes(1));
                read.integer(hc, "healthyThreshold", h.healthy_threshold, 1, 100);
                read.integer(hc, "unhealthyThreshold", h.unhealthy_threshold, 1, 100);
                if (h.timeout > h.interval)
                    r.error(hc.node(), "proxy.healthCheck.timeout",
                            "must not be above proxy.healthCheck.interval");
            }
        }
    }
    {
        Fields admin(r, top.take("admin"), "admin");
        if (admin.ok()) read.host_port(admin, "listen", c.admin.listen);
    }
    {
        Fields cluster(r, top.take("cluster"), "cluster");
        if (cluster.ok() && present(cluster.node())) {
            auto& cl = c.cluster;
            cl.enabled = true;
            auto name_node = cluster.take("nodeName");
            if (auto text = read_string(r, name_node, "cluster.nodeName")) {
                if (is_node_name(*text)) cl.node_name = *text;
                else r.error(name_node, "cluster.nodeName",
                             "must be 1-253 letters, digits, '.', '-' or '_', got " + excerpt(*text));
            }
            Fields etcd(r, cluster.take("etcd"), "cluster.etcd");
            if (!present(etcd.node())) r.error(cluster.node(), "cluster.etcd", "must be given: which etcd to use");
            if (etcd.ok() && present(etcd.node())) {
                auto& e = cl.etcd;
                read.strings(etcd, "endpoints", e.endpoints, [](const std::string& s) { return valid_etcd_endpoint(s); },
                             "http://HOST:PORT, https://HOST:PORT or HOST:PORT");
                if (e.endpoints.empty())
                    r.error(etcd.node(), "cluster.etcd.endpoints", "must list at least one etcd member");
                auto prefix_node = etcd.take("prefix");
                if (auto text = read_string(r, prefix_node, "cluster.etcd.prefix")) {
                    if (!text->empty() && text->size() <= 256 && text->ends_with('/') &&
                        std::ranges::none_of(*text, [](char ch) { return static_cast<unsigned char>(ch) < 0x20; }))
                        e.prefix = *text;
                    else r.error(prefix_node, "cluster.etcd.prefix",
                                 "must end with '/' (at most 256 characters), e.g. /mesd/, got " + excerpt(*text));
                }
                Fields tls(r, etcd.take("tls"), "cluster.etcd.tls");
                if (tls.ok() && present(tls.node())) {
                    e.tls = true;
                    read.string(tls, "caFile", e.ca_file);
                    read.string(tls, "certFile", e.cert_file);
                    read.string(tls, "keyFile", e.key_file);
                    if (e.cert_file.empty() != e.key_file.empty())
                        r.error(tls.node(), "cluster.etcd.tls", "certFile and keyFile go together");
                }
                read.string(etcd, "username", e.username);
                read.string(etcd, "password", e.password);
                if (!e.password.empty() && e.username.empty())
                    r.error(etcd.node(), "cluster.etcd.username", "must be given with a password");
                read.duration(etcd, "dialTimeout", e.dial_timeout, false, std::chrono::minutes(1));
                read.duration(etcd, "requestTimeout", e.request_timeout, false, std::chrono::minutes(5));
            }
        }
    }
    {
        Fields log(r, top.take("log"), "log");
        static constexpr std::string_view levels[] = {"debug", "info", "warn", "error"};
        if (log.ok()) read.choice(log, "level", c.log.level, levels);
    }
}

}  // namespace

ConfigResult load_config_text(std::string_view text, std::string_view file_name)
{
    ConfigResult result;
    Document sink;
    std::string file(file_name);
    try {
        auto root = YAML::Load(std::string(text));
        if (present(root)) {
            Reporter r(sink, file);
            r.set_fallback(root);
            read_config(r, root, result.config);
        }
    } catch (const YAML::ParserException& e) {
        Diagnostic d;
        d.mark = Mark{file, e.mark.line + 1, e.mark.column + 1};
        d.message = "invalid YAML: " + e.msg;
        sink.diagnostics.push_back(std::move(d));
    }
    result.errors = std::move(sink.diagnostics);
    std::ranges::stable_sort(result.errors, [](const Diagnostic& a, const Diagnostic& b) {
        return std::tie(a.mark.line, a.mark.col) < std::tie(b.mark.line, b.mark.col);
    });
    return result;
}

// The reader asks for every key of each mapping it reads, present or not, but reads some
// sections (cluster, proxy.accessLog) only when they are there: it is run on a document
// holding every key found so far, each an empty mapping, until no new key turns up.
const std::vector<std::string>& config_keys()
{
    static const std::vector<std::string> keys = [] {
        std::vector<std::string> found;
        for (int round = 0; round < 16; ++round) {
            YAML::Node root(YAML::NodeType::Map);
            for (const auto& path : found) {
                YAML::Node at = root;
                std::string_view rest = path;
                while (!rest.empty()) {
                    auto dot = rest.find('.');
                    std::string part(rest.substr(0, dot));
                    rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
                    if (!at[part].IsMap()) at[part] = YAML::Node(YAML::NodeType::Map);
                    at.reset(at[part]);
                }
            }
            Document sink;
            std::vector<std::string> asked;
            Config ignored;
            {
                Reporter r(sink, "");
                r.record_keys(&asked);
                read_config(r, root, ignored);
            }
            std::ranges::sort(asked);
            asked.erase(std::unique(asked.begin(), asked.end()), asked.end());
            if (asked == found) break;
            found = std::move(asked);
        }
        return found;
    }();
    return keys;
}

ConfigResult load_config_file(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        ConfigResult result;
        Diagnostic d;
        d.mark = Mark{path, 0, 0};
        d.message = "cannot read the configuration file";
        result.errors.push_back(std::move(d));
        return result;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    return load_config_text(ss.str(), path);
}

void set_etcd_endpoints(ConfigResult& result, std::string_view list, std::string_view source)
{
    std::vector<std::string> endpoints;
    while (!list.empty()) {
        auto comma = list.find(',');
        auto item = list.substr(0, comma);
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
        if (item.empty()) continue;
        if (!valid_etcd_endpoint(item)) {
            Diagnostic d;
            d.mark = Mark{std::string(source), 0, 0};
            d.message = "an etcd endpoint must be http://HOST:PORT, https://HOST:PORT or HOST:PORT, got " +
                        excerpt(item);
            result.errors.push_back(std::move(d));
            return;
        }
        endpoints.emplace_back(item);
    }
    if (endpoints.empty()) return;
    result.config.cluster.enabled = true;
    result.config.cluster.etcd.endpoints = std::move(endpoints);
}

ConfigResult load_config(const std::optional<std::string>& path)
{
    ConfigResult result;
    if (path) result = load_config_file(*path);
    else if (const char* env = std::getenv("MESD_CONFIG"); env && *env) result = load_config_file(env);
    if (const char* dir = std::getenv("MESD_DATA_DIR"); dir && *dir) result.config.data_dir = dir;
    // etcd's own client variables are ETCDCTL_*; these follow MESD_DATA_DIR. A comma-separated
    // list of endpoints turns cluster mode on as a `cluster` section does.
    if (const char* eps = std::getenv("MESD_ETCD_ENDPOINTS"); eps && *eps)
        set_etcd_endpoints(result, eps, "MESD_ETCD_ENDPOINTS");
    if (const char* node = std::getenv("MESD_NODE_NAME"); node && *node) {
        if (is_node_name(node)) {
            result.config.cluster.node_name = node;
        } else {
            Diagnostic d;
            d.mark = Mark{"MESD_NODE_NAME", 0, 0};
            d.message = "a node name is 1-253 letters, digits, '.', '-' or '_', got " + excerpt(node);
            result.errors.push_back(std::move(d));
        }
    }
    if (const char* workers = std::getenv("MESD_WORKERS"); workers && *workers) {
        std::string_view text = workers;
        std::uint32_t n = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
        if (ec == std::errc{} && end == text.data() + text.size() && n <= max_workers) {
            result.config.workers = n;
        } else {
            Diagnostic d;
            d.mark = Mark{"MESD_WORKERS", 0, 0};
            d.message = "must be a number from 0 to " + std::to_string(max_workers) + " (0: one per CPU), got " + excerpt(text);
            result.errors.push_back(std::move(d));
        }
    }
    if (const char* user = std::getenv("MESD_ETCD_USERNAME"); user && *user) result.config.cluster.etcd.username = user;
    if (const char* pass = std::getenv("MESD_ETCD_PASSWORD"); pass && *pass) result.config.cluster.etcd.password = pass;
    return result;
}

}  // namespace conf
