// The configuration file: defaults, every key, errors with positions.
#include "test/conf/support.hpp"

#include <cstdlib>

using namespace std::chrono_literals;

TEST_CASE("defaults are DESIGN.md's")
{
    auto r = conf::load_config_text("", "mesd.yaml");
    REQUIRE(r.ok());
    const auto& c = r.config;
    CHECK(c.data_dir == "/var/lib/mesd");
    CHECK(c.meshes == std::vector<std::string>{"default"});
    REQUIRE(c.dns.listen.size() == 1);
    CHECK(c.dns.listen[0].to_string() == "127.0.0.1:15053");
    CHECK(c.dns.zones == std::vector<std::string>{"mesh."});
    CHECK(c.dns.ttl == 30s);
    CHECK(c.dns.negative_ttl == 30s);
    CHECK(c.dns.edns_udp_size == 1232);
    CHECK(c.dns.tcp_idle_timeout == 10s);
    CHECK(c.dns.forward.enabled);
    CHECK(c.dns.forward.upstreams.empty());
    CHECK(c.dns.forward.timeout == 2s);
    CHECK(c.dns.forward.allow.size() == 6);
    CHECK(c.vip.ipv4 == "242.0.0.0/8");
    CHECK(c.vip.ipv6.empty());
    CHECK(c.vip.quarantine == 1h);
    CHECK(c.proxy.mode == "bind");
    CHECK(c.proxy.redirect_listen.to_string() == "127.0.0.1:15001");
    CHECK(c.proxy.connect_timeout == 5s);
    CHECK(c.proxy.idle_timeout == 1h);
    CHECK(c.proxy.max_connections == 100000);
    CHECK(c.proxy.max_connections_per_service == 0);
    CHECK(c.proxy.connect_attempts == 3);
    CHECK(c.proxy.eject_after == 3);
    CHECK(c.proxy.eject_base == 5s);
    CHECK(c.proxy.eject_max == 5min);
    CHECK(c.proxy.upstream_mark == 0);
    CHECK(c.proxy.resolvers.empty());
    CHECK(c.proxy.resolve_timeout == 2s);
    CHECK(c.proxy.dns_min_ttl == 1s);
    CHECK(c.proxy.dns_max_ttl == 5min);
    CHECK(c.admin.listen.to_string() == "127.0.0.1:9901");
    CHECK(c.log.level == "info");
}

TEST_CASE("every key is read")
{
    auto r = conf::load_config_text(R"(
dataDir: /tmp/mesd
meshes: [default, payments]
dns:
  listen: ["127.0.0.1:53", "[::1]:53", ":5353"]
  zones: [mesh, "corp.example."]
  ttl: 1m
  negativeTtl: 5s
  ednsUdpSize: 4096
  tcpIdleTimeout: 500ms
  tcpMaxClients: 10
  forward:
    enabled: false
    upstreams: ["127.0.0.53:53"]
    timeout: 1s
    allow: ["10.0.0.0/8"]
    maxInFlight: 7
    maxWait: 900ms
vip:
  ipv4: 127.242.0.0/16
  ipv6: fd00:fd02::/64
  quarantine: 2h30m
proxy:
  mode: redirect
  redirectListen: 127.0.0.1:15002
  connectTimeout: 3s
  idleTimeout: 10m
  maxConnections: 5
  maxConnectionsPerService: 2
  connectAttempts: 4
  ejectAfter: 1
  ejectBase: 1s
  ejectMax: 1m
  upstreamMark: 0x4d45
  resolvers: ["127.0.0.1:5353"]
  resolveTimeout: 500ms
  dnsMinTtl: 2s
  dnsMaxTtl: 1h
admin:
  listen: 127.0.0.1:0
log:
  level: debug
)", "mesd.yaml");
    INFO((r.errors.empty() ? std::string() : r.errors[0].format()));
    REQUIRE(r.ok());
    const auto& c = r.config;
    CHECK(c.data_dir == "/tmp/mesd");
    CHECK(c.meshes.size() == 2);
    CHECK(c.dns.listen[1].host == "::1");
    CHECK(c.dns.listen[2].to_string() == ":5353");
    CHECK(c.dns.zones == std::vector<std::string>{"mesh.", "corp.example."});
    CHECK(c.dns.ttl == 60s);
    CHECK(c.dns.tcp_idle_timeout == 500ms);
    CHECK(c.dns.tcp_max_clients == 10);
    CHECK_FALSE(c.dns.forward.enabled);
    CHECK(c.dns.forward.upstreams.at(0).port == 53);
    CHECK(c.dns.forward.max_in_flight == 7);
    CHECK(c.dns.forward.max_wait == 900ms);
    CHECK(c.vip.ipv6 == "fd00:fd02::/64");
    CHECK(c.vip.quarantine == 150min);
    CHECK(c.proxy.mode == "redirect");
    CHECK(c.proxy.max_connections == 5);
    CHECK(c.proxy.max_connections_per_service == 2);
    CHECK(c.proxy.connect_attempts == 4);
    CHECK(c.proxy.eject_after == 1);
    CHECK(c.proxy.eject_base == 1s);
    CHECK(c.proxy.eject_max == 1min);
    CHECK(c.proxy.upstream_mark == 0x4d45);
    CHECK(c.proxy.resolvers.at(0).to_string() == "127.0.0.1:5353");
    CHECK(c.proxy.resolve_timeout == 500ms);
    CHECK(c.proxy.dns_min_ttl == 2s);
    CHECK(c.proxy.dns_max_ttl == 1h);
    CHECK(c.admin.listen.port == 0);
    CHECK(c.log.level == "debug");
}

TEST_CASE("configuration errors point at the key")
{
    auto r = conf::load_config_text("dns:\n  ttl: soon\n  bogus: 1\nvip:\n  ipv4: fd00::/8\nproxy:\n  mode: tproxy\nlog: {level: loud}\n", "m.yaml");
    REQUIRE(r.errors.size() == 5);
    std::vector<std::string> lines;
    for (const auto& e : r.errors) lines.push_back(e.format());
    CHECK(lines[0] == "m.yaml:2:8: dns.ttl: must be a duration such as 500ms, 30s, 5m or 1h, got \"soon\"");
    CHECK(lines[1] == "m.yaml:3:3: dns.bogus: unknown field \"bogus\"");
    CHECK(lines[2] == "m.yaml:5:9: vip.ipv4: must be an IPv4 CIDR such as 242.0.0.0/8, got \"fd00::/8\"");
    CHECK(lines[3] == "m.yaml:7:9: proxy.mode: \"mode\" must be one of [\"bind\", \"redirect\"]");
    CHECK(lines[4] == "m.yaml:8:14: log.level: \"level\" must be one of [\"debug\", \"info\", \"warn\", \"error\"]");
    auto bad_listen = conf::load_config_text("dns:\n  listen: [\"localhost:53\"]\n", "m.yaml");
    REQUIRE(bad_listen.errors.size() == 1);
    CHECK(bad_listen.errors[0].path == "dns.listen[0]");
    auto root = conf::load_config_text("dns:\n  zones: [\".\"]\n", "m.yaml");
    REQUIRE(root.errors.size() == 1);
    CHECK(root.errors[0].format() == "m.yaml:2:11: dns.zones[0]: must be a DNS name other than the root, got \".\"");
    auto syntax = conf::load_config_text("dns: [\n", "m.yaml");
    REQUIRE(syntax.errors.size() == 1);
    CHECK_THAT(syntax.errors[0].message, Catch::StartsWith("invalid YAML"));
}

TEST_CASE("proxy bounds that contradict each other, and integers in hex")
{
    auto r = conf::load_config_text("proxy:\n  dnsMinTtl: 10m\n  dnsMaxTtl: 1m\n  ejectBase: 1h\n  connectAttempts: 0\n", "m.yaml");
    std::vector<std::string> lines;
    for (const auto& e : r.errors) lines.push_back(e.format());
    REQUIRE(lines.size() == 3);
    CHECK(lines[0] == "m.yaml:2:3: proxy.dnsMinTtl: must not be above proxy.dnsMaxTtl");
    CHECK(lines[1] == "m.yaml:2:3: proxy.ejectBase: must not be above proxy.ejectMax");
    CHECK(lines[2] == "m.yaml:5:20: proxy.connectAttempts: must be between 1 and 100");
    auto hex = conf::load_config_text("proxy:\n  upstreamMark: 0xFF\n", "m.yaml");
    REQUIRE(hex.ok());
    CHECK(hex.config.proxy.upstream_mark == 255);
    auto bad_hex = conf::load_config_text("proxy:\n  upstreamMark: 0xZZ\n", "m.yaml");
    REQUIRE(bad_hex.errors.size() == 1);
    CHECK(bad_hex.errors[0].message == "must be an integer, got \"0xZZ\"");
}

TEST_CASE("durations and addresses")
{
    CHECK(conf::parse_duration("1h30m") == 90min);
    CHECK(conf::parse_duration("250ms") == 250ms);
    CHECK(conf::parse_duration("0") == 0ms);
    CHECK_FALSE(conf::parse_duration("30"));
    CHECK_FALSE(conf::parse_duration("-1s"));
    CHECK_FALSE(conf::parse_duration("1d"));
    CHECK(conf::format_duration(90min) == "90m");
    CHECK(conf::format_duration(1h) == "1h");
    CHECK(conf::parse_host_port("[::1]:53")->host == "::1");
    CHECK_FALSE(conf::parse_host_port("::1:53"));
    CHECK_FALSE(conf::parse_host_port("127.0.0.1:65536"));
    CHECK_FALSE(conf::parse_host_port("127.0.0.1"));
}

TEST_CASE("MESD_CONFIG and MESD_DATA_DIR")
{
    char dir_template[] = "/tmp/mesd-config-XXXXXX";
    std::string dir = mkdtemp(dir_template);
    std::string path = dir + "/mesd.yaml";
    FILE* f = std::fopen(path.c_str(), "w");
    std::fputs("dataDir: /from/file\nvip:\n  ipv4: 127.242.0.0/16\n", f);
    std::fclose(f);
    setenv("MESD_CONFIG", path.c_str(), 1);
    unsetenv("MESD_DATA_DIR");
    auto from_env = conf::load_config(std::nullopt);
    CHECK(from_env.ok());
    CHECK(from_env.config.data_dir == "/from/file");
    CHECK(from_env.config.vip.ipv4 == "127.242.0.0/16");
    setenv("MESD_DATA_DIR", "/from/env", 1);
    CHECK(conf::load_config(std::nullopt).config.data_dir == "/from/env");
    unsetenv("MESD_CONFIG");
    unsetenv("MESD_DATA_DIR");
    auto missing = conf::load_config(std::string("/nonexistent/mesd.yaml"));
    REQUIRE(missing.errors.size() == 1);
    CHECK(missing.errors[0].format() == "/nonexistent/mesd.yaml: cannot read the configuration file");
    std::remove(path.c_str());
    std::remove(dir.c_str());
}
