// Kuma's default HostnameGenerators in cluster mode: created in etcd by the nodes, once,
// where etcd lacks them, and answered by every node; real etcd, real mesd nodes, dig.
#include "test/support/cluster.hpp"

#include <catch2/catch.hpp>

#include "store/cluster.hpp"

#include <atomic>
#include <fstream>
#include <iterator>
#include <locale>
#include <map>
#include <memory>
#include <thread>
#include <variant>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

constexpr const char* local_default = "local-mesh-external-service";
constexpr const char* synced_default = "synced-mesh-external-service";
constexpr const char* default_template = "{{ .DisplayName }}.extsvc.mesh.local";

EtcdOptions one_member()
{
    EtcdOptions o;
    o.members = 1;
    return o;
}

FleetOptions fleet_options(bool defaults = true)
{
    FleetOptions o;
    o.vip_section = "  ipv4: 127.244.0.0/16\n";
    if (!defaults) o.extra_config = "defaultHostnameGenerators: false\n";
    return o;
}

std::unique_ptr<store::etcd::Client> client_of(const EtcdCluster& etcd)
{
    store::etcd::Options o;
    o.endpoints = etcd.endpoints();
    auto client = store::etcd::Client::connect(o);
    REQUIRE(client);
    return std::move(*client);
}

struct Generator {
    std::int64_t version = 0;
    std::int64_t create_revision = 0;
    std::string template_text;
};

// Every HostnameGenerator of no mesh in etcd, by name.
std::map<std::string, Generator> generators_in(const EtcdCluster& etcd)
{
    auto client = client_of(etcd);
    store::cluster::Layout layout("/mesd/");
    auto prefix = layout.resources_of("", conf::Kind::hostname_generator);
    auto r = client->range({prefix, store::etcd::prefix_end(prefix), 0, 0, false, false});
    REQUIRE(r);
    std::map<std::string, Generator> out;
    for (const auto& kv : r->kvs) {
        auto key = layout.parse_resource(kv.key);
        REQUIRE(key);
        auto e = store::cluster::decode_value(kv.value, *key, kv.create_revision);
        REQUIRE(e);
        REQUIRE(e->resource.generator());
        out[key->name] = Generator{kv.version, kv.create_revision, e->resource.generator()->template_text};
    }
    return out;
}

bool defaults_in(const EtcdCluster& etcd)
{
    auto g = generators_in(etcd);
    return g.contains(local_default) && g.contains(synced_default);
}

// How many times node logs say a default was created.
std::size_t creations_logged(const std::string& log)
{
    std::size_t n = 0;
    for (auto at = log.find("default resource created in etcd"); at != std::string::npos;
         at = log.find("default resource created in etcd", at + 1))
        ++n;
    return n;
}

// The version of node-0's record in etcd: above 1 once its heart has beaten twice, so its
// first beat, which creates the defaults, has ended.
std::int64_t node_record_version(const EtcdCluster& etcd)
{
    auto client = client_of(etcd);
    store::cluster::Layout layout("/mesd/");
    auto r = client->range({layout.node("node-0"), "", 0, 0, false, false});
    REQUIRE(r);
    return r->kvs.empty() ? 0 : r->kvs.front().version;
}

// std::regex (the Mesd fixture's) narrows characters through the locale's ctype, whose cache
// fills on first use: a race libstdc++ accepts but ThreadSanitizer reports. Filled here,
// before nodes start on several threads.
void fill_ctype_cache()
{
    const auto& ctype = std::use_facet<std::ctype<char>>(std::locale());
    for (int c = 0; c < 256; ++c) (void)ctype.narrow(static_cast<char>(c), '\0');
}

}  // namespace

TEST_CASE("cluster defaults: three nodes started at once on an empty etcd create each default once")
{
    EtcdCluster etcd(one_member());
    // Three one-node fleets started on three threads: their first beats race.
    std::vector<std::unique_ptr<Fleet>> fleets(3);
    std::vector<std::string> failures(3);  // Catch's macros are for this thread only
    fill_ctype_cache();
    {
        std::vector<std::thread> starting;
        for (std::size_t i = 0; i < fleets.size(); ++i)
            starting.emplace_back([&, i] {
                try {
                    fleets[i] = std::make_unique<Fleet>(etcd, 1, fleet_options());
                } catch (const std::exception& e) {
                    failures[i] = e.what();
                }
            });
        for (auto& t : starting) t.join();
    }
    for (std::size_t i = 0; i < fleets.size(); ++i) {
        INFO(failures[i]);
        REQUIRE(fleets[i]);
    }
    REQUIRE(wait_until(10s, [&] { return defaults_in(etcd); }, 100ms));

    // Exactly the two, each written once (version 1: no node overwrote another's), with
    // Kuma's template.
    auto generators = generators_in(etcd);
    CHECK(generators.size() == 2);
    for (const auto& [name, g] : generators) {
        INFO(name);
        CHECK(g.version == 1);
        CHECK(g.template_text == default_template);
    }
    // Each creation logged by the one node that made it.
    REQUIRE(wait_until(5s, [&] {
        std::size_t logged = 0;
        for (auto& f : fleets) logged += creations_logged(f->node(0).log());
        return logged == 2;
    }));
    std::size_t logged = 0;
    for (auto& f : fleets) logged += creations_logged(f->node(0).log());
    CHECK(logged == 2);

    // A MES with no generator of its own is answered as Kuma names it, by every node.
    auto applied = fleets[0]->apply(0, mes_doc("dflt-web", 8431));
    REQUIRE(applied.exit_code == 0);
    auto vip = fleets[1]->wait_for_answer(0, "dflt-web.extsvc.mesh.local");
    CHECK(vip.starts_with("127.244."));
    for (auto& f : fleets) CHECK(f->wait_for_answer(0, "dflt-web.extsvc.mesh.local") == vip);
}

TEST_CASE("cluster defaults: a node restarted recreates a default deleted on purpose and leaves present ones")
{
    EtcdCluster etcd(one_member());
    Fleet fleet(etcd, 2, fleet_options());
    REQUIRE(wait_until(10s, [&] { return defaults_in(etcd); }, 100ms));
    REQUIRE(fleet.apply(0, mes_doc("dflt-again", 8432)).exit_code == 0);
    auto vip = fleet.wait_for_answer(1, "dflt-again.extsvc.mesh.local");
    REQUIRE(vip.starts_with("127.244."));
    auto before = generators_in(etcd);

    // Deleted: gone from every node until a node starts again, as in Kuma.
    auto deleted = fleet.ctl(0, {"delete", "hostnamegenerator", local_default});
    INFO(deleted.err);
    REQUIRE(deleted.exit_code == 0);
    for (int n = 0; n < 2; ++n) CHECK(fleet.wait_for_answer(n, "dflt-again.extsvc.mesh.local", "") == "");
    CHECK_FALSE(generators_in(etcd).contains(local_default));

    fleet.stop(1);
    fleet.start(1);
    CHECK(wait_until(10s, [&] { return defaults_in(etcd); }, 100ms));
    auto after = generators_in(etcd);
    CHECK(after[local_default].version == 1);
    CHECK(after[local_default].create_revision > before[local_default].create_revision);
    // The one present was left as it was.
    CHECK(after[synced_default].version == 1);
    CHECK(after[synced_default].create_revision == before[synced_default].create_revision);
    CHECK(creations_logged(fleet.node(1).log()) == 1);
    for (int n = 0; n < 2; ++n) CHECK(fleet.wait_for_answer(n, "dflt-again.extsvc.mesh.local") == vip);
}

TEST_CASE("cluster defaults: create_absent from many writers at once creates each key once and keeps a user's own")
{
    EtcdCluster etcd(one_member());
    store::cluster::Layout layout("/mesd/");
    // A user's own generator of a default's name, there first.
    auto own = conf::default_hostname_generators();
    own.resize(1);
    REQUIRE(own[0].name == local_default);
    std::get<conf::HostnameGenerator>(own[0].spec).template_text = "{{ .DisplayName }}.mine.mesh.local";
    {
        auto client = client_of(etcd);
        auto first = store::cluster::create_absent(*client, layout, own);
        REQUIRE(first);
        CHECK(first->size() == 1);
    }

    constexpr int writers = 8;
    std::atomic<std::size_t> created{0};
    std::atomic<int> failed{0};
    std::vector<std::thread> threads;
    std::atomic<int> ready{0};
    for (int i = 0; i < writers; ++i)
        threads.emplace_back([&] {
            store::etcd::Options o;
            o.endpoints = etcd.endpoints();
            auto client = store::etcd::Client::connect(o);
            if (!client) {
                ++failed;
                return;
            }
            ++ready;
            while (ready.load() < writers && failed.load() == 0) std::this_thread::yield();
            auto r = store::cluster::create_absent(**client, layout, conf::default_hostname_generators());
            if (!r) ++failed;
            else created += r->size();
        });
    for (auto& t : threads) t.join();
    CHECK(failed.load() == 0);
    CHECK(created.load() == 1);  // the synced default, by one writer
    auto generators = generators_in(etcd);
    CHECK(generators.size() == 2);
    CHECK(generators[local_default].template_text == "{{ .DisplayName }}.mine.mesh.local");
    CHECK(generators[local_default].version == 1);
    CHECK(generators[synced_default].template_text == default_template);
    CHECK(generators[synced_default].version == 1);

    // A MES needs a VIP with it: refused, nothing written.
    conf::Resource mes;
    mes.kind = conf::Kind::mesh_external_service;
    mes.mesh = "default";
    mes.name = "dflt-refused";
    auto client = client_of(etcd);
    std::vector<conf::Resource> one{mes};
    CHECK_FALSE(store::cluster::create_absent(*client, layout, one));
}

TEST_CASE("cluster defaults: with defaultHostnameGenerators false a node creates nothing and a user's own is kept")
{
    EtcdCluster etcd(one_member());
    Fleet off(etcd, 1, fleet_options(false));
    REQUIRE(wait_until(10s, [&] { return node_record_version(etcd) >= 2; }, 100ms));
    CHECK(generators_in(etcd).empty());
    CHECK(creations_logged(off.node(0).log()) == 0);

    // A user's own generator of a default's name, then a node with the defaults on: only the
    // missing one is created.
    auto own = "---\ntype: HostnameGenerator\nname: local-mesh-external-service\nspec:\n  selector:\n"
               "    meshExternalService:\n      matchLabels: {}\n  template: \"{{ .Name }}.own.mesh.local\"\n";
    auto applied = off.apply(0, own);
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    off.stop(0);
    Fleet on(etcd, 1, fleet_options());
    REQUIRE(wait_until(10s, [&] { return defaults_in(etcd); }, 100ms));
    auto generators = generators_in(etcd);
    CHECK(generators[local_default].template_text == "{{ .Name }}.own.mesh.local");
    CHECK(generators[local_default].version == 1);
    CHECK(generators[synced_default].template_text == default_template);
    CHECK(creations_logged(on.node(0).log()) == 1);
    CHECK(on.node(0).log().find("default resources already in etcd") != std::string::npos);
}

TEST_CASE("cluster defaults: apply --prune keeps the defaults the nodes created")
{
    EtcdCluster etcd(one_member());
    Fleet fleet(etcd, 1, fleet_options());
    REQUIRE(wait_until(10s, [&] { return defaults_in(etcd); }, 100ms));
    auto before = generators_in(etcd);
    REQUIRE(fleet.apply(0, mes_doc("dflt-keep", 8433) + mes_doc("dflt-gone", 8434)).exit_code == 0);
    REQUIRE(fleet.wait_for_answer(0, "dflt-gone.extsvc.mesh.local") != "");

    auto pruned = fleet.ctl(0, {"apply", "--prune", "-f", fleet.dir().write("dflt-prune.yaml", mes_doc("dflt-keep", 8433))});
    INFO(pruned.err);
    REQUIRE(pruned.exit_code == 0);
    CHECK(pruned.out.find("deleted MeshExternalService default/dflt-gone") != std::string::npos);
    CHECK(pruned.out.find("HostnameGenerator") == std::string::npos);
    auto after = generators_in(etcd);
    CHECK(after.size() == 2);
    for (const auto& name : {local_default, synced_default}) {
        INFO(name);
        CHECK(after[name].create_revision == before[name].create_revision);
        CHECK(after[name].version == 1);
    }
    CHECK(fleet.wait_for_answer(0, "dflt-gone.extsvc.mesh.local", "") == "");
    CHECK(fleet.wait_for_answer(0, "dflt-keep.extsvc.mesh.local") != "");

    // With the defaults off in mesctl's configuration they are the input's to keep or not.
    auto off_config = fleet.dir().write("dflt-off.yaml", [&] {
        std::ifstream in(fleet.config(0));
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        return text + "defaultHostnameGenerators: false\n";
    }());
    auto pruned_off = run({MESCTL_PATH, "--config", off_config, "apply", "--prune", "-f",
                           fleet.dir().write("dflt-prune-2.yaml", mes_doc("dflt-keep", 8433))});
    INFO(pruned_off.err);
    REQUIRE(pruned_off.exit_code == 0);
    CHECK(pruned_off.out.find("deleted HostnameGenerator " + std::string(local_default)) != std::string::npos);
    CHECK(generators_in(etcd).empty());
}

TEST_CASE("cluster defaults: a node started while etcd is away serves and creates them once etcd is back")
{
    EtcdCluster etcd(one_member());
    Fleet fleet(etcd, 1, fleet_options());
    REQUIRE(wait_until(10s, [&] { return defaults_in(etcd); }, 100ms));
    REQUIRE(fleet.apply(0, mes_doc("dflt-late", 8435)).exit_code == 0);
    auto vip = fleet.wait_for_answer(0, "dflt-late.extsvc.mesh.local");
    REQUIRE(vip.starts_with("127.244."));
    for (const auto& name : {local_default, synced_default})
        REQUIRE(fleet.ctl(0, {"delete", "hostnamegenerator", name}).exit_code == 0);
    REQUIRE(fleet.wait_for_answer(0, "dflt-late.extsvc.mesh.local", "") == "");

    fleet.stop(0);
    etcd.stop_all();
    fleet.start(0);  // ready from its copy: nothing waits for etcd
    auto ready = fleet.node(0).admin_get("/ready");
    CHECK(ready.find("200 OK") != std::string::npos);
    CHECK(fleet.dig(0, "dflt-late.extsvc.mesh.local") == "");
    CHECK(creations_logged(fleet.node(0).log()) == 0);

    etcd.start_all();
    CHECK(wait_until(20s, [&] { return defaults_in(etcd); }, 200ms));
    CHECK(fleet.wait_for_answer(0, "dflt-late.extsvc.mesh.local") == vip);
    CHECK(creations_logged(fleet.node(0).log()) == 2);
}

TEST_CASE("cluster defaults: a node whose creation etcd refuses serves and tries again at each beat")
{
    EtcdOptions secure;
    secure.members = 1;
    secure.tls = true;
    secure.root_password = "dflt-root-pw";
    EtcdCluster etcd(secure);
    // A user who may read everything and keep its node record, but not write resources.
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{"user", "add", "dflt-node", "--new-user-password=dflt-node-pw"},
          {"role", "add", "dflt-node"},
          {"role", "grant-permission", "dflt-node", "--prefix=true", "read", "/mesd/"},
          {"role", "grant-permission", "dflt-node", "--prefix=true", "readwrite", "/mesd/nodes/"},
          {"user", "grant-role", "dflt-node", "dflt-node"}}) {
        auto r = etcd.etcdctl(args);
        INFO(r.err);
        REQUIRE(r.exit_code == 0);
    }
    auto options = fleet_options();
    options.etcd_extra = "    tls: {caFile: " + etcd.ca_file() + "}\n    username: dflt-node\n    password: dflt-node-pw\n";
    Fleet fleet(etcd, 1, options);
    auto generator_keys = [&] {
        return etcd.etcdctl({"get", "--prefix", "--keys-only", "/mesd/res//hostnamegenerator/"}).out;
    };
    const std::string refused = "cannot create the default resources in etcd; trying again at the next beat";
    REQUIRE(wait_until(10s, [&] { return fleet.node(0).log().find(refused) != std::string::npos; }, 100ms));
    CHECK(fleet.node(0).log().find("permission denied") != std::string::npos);
    // Ready once its first copy is in (the heart may be refused before the watch has it).
    CHECK(wait_until(10s, [&] { return fleet.node(0).admin_get("/ready").find("200 OK") != std::string::npos; }, 100ms));
    CHECK(generator_keys().find("mesh-external-service") == std::string::npos);
    // Refused again at the next beat, and not said again.
    std::this_thread::sleep_for(2500ms);
    auto log = fleet.node(0).log();
    CHECK(log.find(refused) == log.rfind(refused));

    auto granted = etcd.etcdctl({"role", "grant-permission", "dflt-node", "--prefix=true", "readwrite", "/mesd/res/"});
    INFO(granted.err);
    REQUIRE(granted.exit_code == 0);
    CHECK(wait_until(10s, [&] { return creations_logged(fleet.node(0).log()) == 2; }, 100ms));
    auto keys = generator_keys();
    CHECK(keys.find("/mesd/res//hostnamegenerator/local-mesh-external-service") != std::string::npos);
    CHECK(keys.find("/mesd/res//hostnamegenerator/synced-mesh-external-service") != std::string::npos);
}
