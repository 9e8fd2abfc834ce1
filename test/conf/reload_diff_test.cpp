// What a reload of the configuration file changes, key by key: live or needing a restart.
#include "conf/conf.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <set>
#include <string>

namespace {

conf::Config loaded(const std::string& text)
{
    auto r = conf::load_config_text(text, "mesd.yaml");
    INFO(text);
    REQUIRE(r.ok());
    return r.config;
}

const conf::ConfigChange* find(const std::vector<conf::ConfigChange>& changes, const std::string& key)
{
    auto it = std::ranges::find_if(changes, [&](const auto& c) { return c.key == key; });
    return it == changes.end() ? nullptr : &*it;
}

}  // namespace

TEST_CASE("reload: the same file changes nothing")
{
    std::string text = "dns:\n  ttl: 45s\n  forward:\n    upstreams: [\"127.0.0.1:5353\"]\nproxy:\n  connectTimeout: 2s\n";
    CHECK(conf::reload_changes(loaded(text), loaded(text)).empty());
}

TEST_CASE("reload: live keys are named with their old and new values")
{
    auto before = loaded("dns:\n  ttl: 30s\n  forward:\n    upstreams: [\"127.0.0.1:5353\"]\n    allow: [\"10.0.0.0/8\"]\n"
                         "log:\n  level: info\nproxy:\n  idleTimeout: 1h\n");
    auto after = loaded("dns:\n  ttl: 7s\n  negativeTtl: 5s\n  forward:\n    upstreams: [\"127.0.0.1:5354\", \"[::1]:53\"]\n"
                        "    allow: [\"10.0.0.0/8\", \"192.0.2.0/24\"]\n    maxInFlight: 10\n"
                        "  rateLimit:\n    responsesPerSecond: 5\n"
                        "log:\n  level: debug\nproxy:\n  idleTimeout: 90s\n");
    auto changes = conf::reload_changes(before, after);
    std::set<std::string> keys;
    for (const auto& c : changes) {
        keys.insert(c.key);
        CHECK(c.live);
    }
    CHECK(keys == std::set<std::string>{"dns.ttl", "dns.negativeTtl", "dns.forward.upstreams", "dns.forward.allow",
                                        "dns.forward.maxInFlight", "dns.rateLimit.responsesPerSecond", "log.level",
                                        "proxy.idleTimeout"});
    const auto* ttl = find(changes, "dns.ttl");
    REQUIRE(ttl);
    CHECK(ttl->old_value == "30s");
    CHECK(ttl->new_value == "7s");
    const auto* ups = find(changes, "dns.forward.upstreams");
    REQUIRE(ups);
    CHECK(ups->old_value == "[127.0.0.1:5353]");
    CHECK(ups->new_value == "[127.0.0.1:5354,[::1]:53]");
}

TEST_CASE("reload: listen addresses data dir and the like need a restart")
{
    auto before = loaded("dataDir: /var/lib/a\ndns:\n  listen: [\"127.0.0.1:53\"]\nmeshes: [default]\nworkers: 2\n"
                         "proxy:\n  mode: bind\nadmin:\n  listen: 127.0.0.1:9901\n");
    auto after = loaded("dataDir: /var/lib/b\ndns:\n  listen: [\"127.0.0.2:53\"]\nmeshes: [default, other]\nworkers: 4\n"
                        "proxy:\n  mode: redirect\nadmin:\n  listen: 127.0.0.1:9902\n");
    auto changes = conf::reload_changes(before, after);
    std::set<std::string> keys;
    for (const auto& c : changes) {
        keys.insert(c.key);
        CHECK_FALSE(c.live);
    }
    CHECK(keys == std::set<std::string>{"dataDir", "dns.listen", "meshes", "workers", "proxy.mode", "admin.listen"});
    const auto* listen = find(changes, "dns.listen");
    REQUIRE(listen);
    CHECK(listen->old_value == "[127.0.0.1:53]");
    CHECK(listen->new_value == "[127.0.0.2:53]");
}

TEST_CASE("reload: moving the access log is live and turning it on or off is not")
{
    auto off = loaded("proxy:\n  idleTimeout: 1h\n");
    auto a = loaded("proxy:\n  accessLog:\n    path: /tmp/a.log\n");
    auto b = loaded("proxy:\n  accessLog:\n    path: /tmp/b.log\n    format: json\n");
    auto moved = conf::reload_changes(a, b);
    REQUIRE(find(moved, "proxy.accessLog.path"));
    CHECK(find(moved, "proxy.accessLog.path")->live);
    REQUIRE(find(moved, "proxy.accessLog.format"));
    CHECK(find(moved, "proxy.accessLog.format")->live);
    auto on = conf::reload_changes(off, a);
    REQUIRE(find(on, "proxy.accessLog.path"));
    CHECK_FALSE(find(on, "proxy.accessLog.path")->live);
    auto turned_off = conf::reload_changes(a, off);
    REQUIRE(find(turned_off, "proxy.accessLog.path"));
    CHECK_FALSE(find(turned_off, "proxy.accessLog.path")->live);
}

TEST_CASE("reload: an etcd password change is named without its value")
{
    auto before = loaded("cluster:\n  etcd:\n    endpoints: [\"127.0.0.1:2379\"]\n    username: u\n    password: old-secret\n");
    auto after = loaded("cluster:\n  etcd:\n    endpoints: [\"127.0.0.1:2379\"]\n    username: u\n    password: new-secret\n");
    auto changes = conf::reload_changes(before, after);
    const auto* pw = find(changes, "cluster.etcd.password");
    REQUIRE(pw);
    CHECK_FALSE(pw->live);
    CHECK(pw->old_value.find("secret") == std::string::npos);
    CHECK(pw->new_value.find("secret") == std::string::npos);
}

TEST_CASE("reload: every key is listed once")
{
    std::set<std::string_view> seen;
    for (const auto& k : conf::reload_keys()) CHECK(seen.insert(k.key).second);
    CHECK(seen.count("dns.ttl"));
    CHECK(seen.count("dns.listen"));
}

TEST_CASE("reload: every key the reader takes is classed as live or needing a restart")
{
    // The reader's keys (conf::config_keys(), sections included) against reload_keys(): a key
    // added to the file must be given a class, so a reload never ignores a change silently.
    std::set<std::string> classed;
    for (const auto& k : conf::reload_keys()) classed.insert(std::string(k.key));
    std::set<std::string> keys(conf::config_keys().begin(), conf::config_keys().end());
    for (const auto& key : keys) {
        bool section = std::ranges::any_of(keys, [&](const std::string& k) { return k.starts_with(key + "."); });
        if (section && !classed.contains(key)) continue;  // a section: its keys are classed one by one
        // The etcd TLS files are compared under their own names.
        std::string name = key.starts_with("cluster.etcd.tls.") ? "cluster.etcd." + key.substr(17) : key;
        INFO(key);
        CHECK(classed.contains(name));
    }
    for (const auto& key : classed) {
        INFO(key);
        std::string name = key;
        for (std::string file : {"caFile", "certFile", "keyFile"})
            if (key == "cluster.etcd." + file) name = "cluster.etcd.tls." + file;
        CHECK(keys.contains(name));
    }
}
