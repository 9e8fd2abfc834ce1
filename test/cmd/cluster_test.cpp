// Cluster mode as users run it: a real etcd cluster on loopback, real mesd nodes mirroring
// it, mesctl writing to it, dig reading from every node.
#include "test/support/cluster.hpp"

#include <catch2/catch.hpp>

#include "store/cluster.hpp"
#include "test/support/certs.hpp"

#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <regex>
#include <set>
#include <thread>

using namespace test_support;
using namespace std::chrono_literals;

TEST_CASE("cluster: an apply on one node is answered by dig on the others")
{
    EtcdCluster etcd;
    Fleet fleet(etcd, 3);
    auto applied = fleet.apply(0, generator_doc + mes_doc("web", 8080));
    REQUIRE(applied.exit_code == 0);
    CHECK(applied.out.find("created MeshExternalService default/web 127.242.") != std::string::npos);
    auto vip = fleet.wait_for_answer(1, "web.mesh");
    REQUIRE_FALSE(vip.empty());
    CHECK(fleet.wait_for_answer(2, "web.mesh") == vip);
    CHECK(fleet.wait_for_answer(0, "web.mesh") == vip);

    // The same status on every node.
    auto first = fleet.ctl(0, {"get", "mes", "web", "-o", "json"});
    for (int n : {1, 2}) CHECK(fleet.ctl(n, {"get", "mes", "web", "-o", "json"}).out == first.out);

    // Every node registered, current, and says so.
    auto nodes = wait_until(5s, [&] {
        auto r = fleet.ctl(0, {"get", "nodes"});
        return r.out.find("node-0") != std::string::npos && r.out.find("node-1") != std::string::npos &&
               r.out.find("node-2") != std::string::npos;
    });
    CHECK(nodes);
    for (int n = 0; n < 3; ++n) {
        auto ready = fleet.node(n).admin_get("/ready");
        CHECK(ready.find("200 OK") != std::string::npos);
        auto metrics = fleet.node(n).admin_get("/metrics");
        CHECK(metrics.find("mesd_cluster_connected 1") != std::string::npos);
        CHECK(metric_value(metrics, "mesd_cluster_revision") > 0);
    }

    // A delete on another node takes the name away everywhere.
    REQUIRE(fleet.ctl(2, {"delete", "mes", "web"}).exit_code == 0);
    for (int n = 0; n < 3; ++n) CHECK(fleet.wait_for_answer(n, "web.mesh", "") == "");
}

namespace {

EtcdOptions one_member()
{
    EtcdOptions o;
    o.members = 1;
    return o;
}

// name -> VIP on node n, from `mesctl get vips -o json` (the node's copy).
std::map<std::string, std::string> vips_on(const Fleet& fleet, int n)
{
    auto r = fleet.ctl(n, {"get", "vips", "-o", "json"});
    REQUIRE(r.exit_code == 0);
    return vips_in_use(r.out);
}

// Many MES in one YAML file: names PREFIX-FROM .. PREFIX-(TO-1).
std::string many_mes(const std::string& prefix, int from, int to)
{
    std::string out;
    for (int i = from; i < to; ++i) out += mes_doc(prefix + "-" + std::to_string(i), 80);
    return out;
}

// What etcd itself holds is whole: every MES has a VIP, its claim names it, no VIP is
// claimed twice and no claim is left without its MES.
void check_etcd_whole(const EtcdCluster& etcd, std::size_t want_mes, std::size_t want_without_vip = 0)
{
    store::etcd::Options o;
    o.endpoints = etcd.endpoints();
    auto client = store::etcd::Client::connect(o);
    REQUIRE(client);
    store::cluster::Layout layout("/mesd/");
    auto res = (*client)->range({layout.resources(), store::etcd::prefix_end(layout.resources()), 0, 0, false, false});
    REQUIRE(res);
    std::map<std::string, std::string> claims;  // vip -> owner
    auto vips = (*client)->range({layout.vips(), store::etcd::prefix_end(layout.vips()), 0, 0, false, false});
    REQUIRE(vips);
    for (const auto& kv : vips->kvs) claims[kv.key.substr(layout.vips().size())] = kv.value;
    std::set<std::string> seen;
    std::size_t mes = 0, without_vip = 0;
    for (const auto& kv : res->kvs) {
        auto key = layout.parse_resource(kv.key);
        REQUIRE(key);
        if (key->kind != conf::Kind::mesh_external_service) continue;
        ++mes;
        auto e = store::cluster::decode_value(kv.value, *key, kv.create_revision);
        REQUIRE(e);
        if (!e->ipv4) {
            ++without_vip;
            continue;
        }
        auto ip = e->ipv4->to_string();
        CHECK(seen.insert(ip).second);
        CHECK(claims[ip] == key->mesh + "/" + key->name);
    }
    CHECK(mes == want_mes);
    CHECK(without_vip == want_without_vip);
    CHECK(claims.size() == seen.size());
}

// Every node's copy holds `want` MES, the same VIPs as node 0, and checks clean.
void check_fleet_agrees(const Fleet& fleet, int nodes, std::size_t want)
{
    std::map<std::string, std::string> first;
    for (int n = 0; n < nodes; ++n) {
        std::map<std::string, std::string> vips;
        bool complete = wait_until(20s, [&] {
            vips = vips_on(fleet, n);
            return vips.size() == want;
        }, 100ms);
        CHECK(complete);
        if (n == 0) first = vips;
        else CHECK(vips == first);
        std::set<std::string> distinct;
        for (const auto& [name, ip] : vips) distinct.insert(ip);
        CHECK(distinct.size() == vips.size());
        auto check = fleet.ctl(n, {"check"});
        CHECK(check.exit_code == 0);
        CHECK(check.err == "");
    }
}

}  // namespace

TEST_CASE("cluster: concurrent applies from three nodes give every MES one VIP")
{
    EtcdCluster etcd;
    Fleet fleet(etcd, 3);
    REQUIRE(fleet.apply(0, generator_doc).exit_code == 0);
    // 3 x 1,000 MES, each node's names overlapping its neighbours': 2,000 distinct.
    std::vector<std::string> files;
    for (int n = 0; n < 3; ++n) files.push_back(fleet.dir().write("load-" + std::to_string(n) + ".yaml", many_mes("svc", n * 500, n * 500 + 1000)));
    std::vector<RunResult> results(3);
    std::vector<std::thread> appliers;
    auto began = std::chrono::steady_clock::now();
    for (int n = 0; n < 3; ++n)
        appliers.emplace_back([&, n] { results[static_cast<std::size_t>(n)] = fleet.ctl(n, {"apply", "-f", files[static_cast<std::size_t>(n)]}); });
    for (auto& t : appliers) t.join();
    auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - began);
    INFO("3 x 1,000 concurrent applies took " << took.count() << " ms");
    for (const auto& r : results) {
        INFO(r.err);
        CHECK(r.exit_code == 0);
    }
    check_etcd_whole(etcd, 2000);
    check_fleet_agrees(fleet, 3, 2000);
    // A name applied by two nodes resolves to the one VIP everywhere.
    auto vip = fleet.wait_for_answer(0, "svc-700.mesh");
    for (int n : {1, 2}) CHECK(fleet.wait_for_answer(n, "svc-700.mesh", vip.c_str()) == vip);
}

TEST_CASE("cluster: a deleted MES's VIP is not reused within the quarantine on any node")
{
    EtcdCluster etcd(one_member());
    FleetOptions small;
    small.vip_section = "  ipv4: 127.242.0.0/29\n  quarantine: 1h\n";  // six usable addresses
    Fleet fleet(etcd, 2, small);
    auto applied = fleet.apply(0, many_mes("q", 0, 6));
    REQUIRE(applied.exit_code == 0);
    std::map<std::string, std::string> before;
    REQUIRE(wait_until(10s, [&] { return (before = vips_on(fleet, 0)).size() == 6; }));
    REQUIRE_FALSE(before["q-3"].empty());
    REQUIRE(fleet.ctl(1, {"delete", "mes", "q-3"}).exit_code == 0);
    // The pool is full but for q-3's address, which is in quarantine: a new MES gets none,
    // whichever node applies it.
    for (int n : {0, 1}) {
        auto r = fleet.apply(n, mes_doc("late-" + std::to_string(n)));
        REQUIRE(r.exit_code == 0);
        CHECK(r.err.find("has no VIP: no addresses left in pool 127.242.0.0/29") != std::string::npos);
        CHECK(r.out.find(before["q-3"]) == std::string::npos);
    }
    check_etcd_whole(etcd, 7, 2);  // six, one deleted, two late ones without a VIP
}

TEST_CASE("cluster: a quarantined VIP returns to the pool when its lease runs out")
{
    EtcdCluster etcd(one_member());
    FleetOptions small;
    small.vip_section = "  ipv4: 127.242.0.0/30\n  quarantine: 2s\n";  // two usable addresses
    Fleet fleet(etcd, 1, small);
    REQUIRE(fleet.apply(0, many_mes("r", 0, 2)).exit_code == 0);
    std::map<std::string, std::string> vips;
    REQUIRE(wait_until(10s, [&] { return (vips = vips_on(fleet, 0)).size() == 2; }));
    auto freed = vips["r-1"];
    REQUIRE_FALSE(freed.empty());
    REQUIRE(fleet.ctl(0, {"delete", "mes", "r-1"}).exit_code == 0);
    auto at_once = fleet.apply(0, mes_doc("next"));
    CHECK(at_once.err.find("has no VIP") != std::string::npos);
    // Applied again once the quarantine's lease has expired, the MES gets the freed address.
    std::this_thread::sleep_for(3s);
    auto later = fleet.apply(0, mes_doc("next"));
    REQUIRE(later.exit_code == 0);
    CHECK(later.out.find("MeshExternalService default/next " + freed) != std::string::npos);
    check_etcd_whole(etcd, 2);
}

TEST_CASE("cluster: an etcd member killed during applies leaves nothing half-written")
{
    EtcdCluster etcd;
    Fleet fleet(etcd, 2);
    REQUIRE(fleet.apply(0, generator_doc).exit_code == 0);
    constexpr int rounds = 16;
    std::vector<RunResult> results(rounds);
    std::thread killer([&] {
        std::this_thread::sleep_for(300ms);
        etcd.kill(0);  // the member mesctl and the nodes reach first
    });
    for (int i = 0; i < rounds; ++i) results[static_cast<std::size_t>(i)] = fleet.apply(i % 2, many_mes("k" + std::to_string(i), 0, 25));
    killer.join();
    int failed = 0;
    for (int i = 0; i < rounds; ++i) {
        const auto& r = results[static_cast<std::size_t>(i)];
        if (r.exit_code == 0) continue;
        ++failed;
        INFO(r.err);
        CHECK(r.err.find("etcd") != std::string::npos);  // a failure says what failed
        // and applying the same file again finishes it.
        CHECK(fleet.apply(0, many_mes("k" + std::to_string(i), 0, 25)).exit_code == 0);
    }
    INFO(failed << " of " << rounds << " applies failed while the member died");
    check_etcd_whole(etcd, rounds * 25);
    check_fleet_agrees(fleet, 2, rounds * 25);
}

TEST_CASE("cluster: with all of etcd stopped every node still answers and apply fails clearly")
{
    EtcdCluster etcd;
    Fleet fleet(etcd, 2);
    REQUIRE(fleet.apply(0, generator_doc + mes_doc("before")).exit_code == 0);
    auto vip = fleet.wait_for_answer(1, "before.mesh");
    REQUIRE_FALSE(vip.empty());

    etcd.stop_all();
    for (int n = 0; n < 2; ++n) {
        CHECK(wait_until(10s, [&] { return fleet.node(n).admin_get("/metrics").find("mesd_cluster_connected 0") != std::string::npos; }));
        CHECK(fleet.dig(n, "before.mesh") == vip);
        auto ready = fleet.node(n).admin_get("/ready");
        CHECK(ready.find("200 OK") != std::string::npos);
        CHECK(ready.find("serving from cache") != std::string::npos);
        CHECK(fleet.node(n).log().find("etcd unreachable; serving from the local copy") != std::string::npos);
    }
    auto refused = fleet.apply(0, mes_doc("during"));
    CHECK(refused.exit_code == 1);
    CHECK(refused.err.find("etcd at ") != std::string::npos);
    CHECK(refused.err.find("nothing was applied") != std::string::npos);
    CHECK(fleet.ctl(0, {"get", "mes", "during"}).exit_code == 1);  // nothing written locally either

    etcd.start_all();
    for (int n = 0; n < 2; ++n)
        CHECK(wait_until(20s, [&] { return fleet.node(n).admin_get("/metrics").find("mesd_cluster_connected 1") != std::string::npos; }, 100ms));
    REQUIRE(fleet.apply(1, mes_doc("after")).exit_code == 0);
    for (int n = 0; n < 2; ++n) CHECK_FALSE(fleet.wait_for_answer(n, "after.mesh").empty());
    CHECK(fleet.node(0).log().find("msg=\"etcd connected\"") != std::string::npos);
}

TEST_CASE("cluster: a node restarted resumes from its revision and after compaction reads everything again")
{
    EtcdCluster etcd(one_member());
    Fleet fleet(etcd, 2);
    REQUIRE(fleet.apply(0, generator_doc + mes_doc("a") + mes_doc("b")).exit_code == 0);
    REQUIRE(fleet.wait_for_answer(1, "b.mesh") != "");

    // Stopped, missing one change, started again: it catches up from where it stopped.
    fleet.stop(1);
    REQUIRE(fleet.apply(0, mes_doc("c")).exit_code == 0);
    fleet.start(1);
    CHECK(fleet.wait_for_answer(1, "c.mesh") != "");
    CHECK(fleet.node(1).log().find("reading the whole state") == std::string::npos);
    CHECK(metric_value(fleet.node(1).admin_get("/metrics"), "mesd_cluster_resyncs_total") == 0);

    // Stopped while etcd compacts the history it would resume from: it reads a whole copy.
    fleet.stop(1);
    REQUIRE(fleet.apply(0, mes_doc("d")).exit_code == 0);
    REQUIRE(fleet.ctl(0, {"delete", "mes", "a"}).exit_code == 0);
    etcd.compact();
    fleet.start(1);
    CHECK(fleet.wait_for_answer(1, "d.mesh") != "");
    CHECK(fleet.wait_for_answer(1, "a.mesh", "") == "");
    CHECK(fleet.node(1).log().find("compacted") != std::string::npos);
    CHECK(metric_value(fleet.node(1).admin_get("/metrics"), "mesd_cluster_resyncs_total") == 1);
    check_fleet_agrees(fleet, 2, 3);
}

TEST_CASE("cluster: a node killed while it reads a whole copy has all of it or none")
{
    EtcdCluster etcd(one_member());
    Fleet fleet(etcd, 2);
    fleet.stop(1);
    REQUIRE(fleet.apply(0, generator_doc + many_mes("bulk", 0, 5000)).exit_code == 0);
    std::filesystem::remove_all(fleet.data_dir(1));  // a new node: it reads everything
    fleet.start(1);
    bool seen = wait_until(10s, [&] { return fleet.node(1).log().find("reading the whole state") != std::string::npos; }, 1ms);
    CHECK(seen);
    fleet.kill(1);
    // What the killed node left: the copy before (none) or the whole one, nothing between.
    auto left = vips_on(fleet, 1).size();
    CHECK((left == 0 || left == 5000));
    CHECK(fleet.ctl(1, {"check"}).exit_code == 0);
    fleet.start(1);
    check_fleet_agrees(fleet, 2, 5000);
    CHECK(fleet.wait_for_answer(1, "bulk-4999.mesh") != "");
}


TEST_CASE("cluster: etcd over TLS with client certificates")
{
    EtcdOptions secure;
    secure.members = 1;
    secure.tls = true;
    secure.client_cert_auth = true;
    EtcdCluster etcd(secure);
    FleetOptions tls;
    tls.etcd_extra = "    tls: {caFile: " + etcd.ca_file() + ", certFile: " + etcd.client_cert_file() +
                     ", keyFile: " + etcd.client_key_file() + "}\n";
    Fleet fleet(etcd, 1, tls);
    auto applied = fleet.apply(0, generator_doc + mes_doc("secure"));
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    CHECK(fleet.wait_for_answer(0, "secure.mesh") != "");
    CHECK(fleet.node(0).admin_get("/metrics").find("mesd_cluster_connected 1") != std::string::npos);

    // Without the client certificate the members refuse the connection, and mesctl says where.
    auto no_cert = std::regex_replace(file_text(fleet.config(0)), std::regex(", certFile: [^,]+, keyFile: [^}]+"), "");
    auto r = run({MESCTL_PATH, "--config", fleet.dir().write("nocert.yaml", no_cert), "apply", "-f",
                  fleet.dir().write("y.yaml", mes_doc("y"))});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("etcd at https://") != std::string::npos);
    CHECK(r.err.find("nothing was applied") != std::string::npos);
    // Nor is a member whose certificate the configured CA did not sign trusted.
    auto other_ca = fleet.dir().write("other-ca.pem", make_ca("another CA").cert_pem);
    auto wrong_ca = std::regex_replace(file_text(fleet.config(0)), std::regex("caFile: [^,]+"), "caFile: " + other_ca);
    r = run({MESCTL_PATH, "--config", fleet.dir().write("wrongca.yaml", wrong_ca), "get", "nodes"});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("certificate") != std::string::npos);
}

TEST_CASE("cluster: etcd over TLS with a user and password")
{
    EtcdOptions secure;
    secure.members = 1;
    secure.tls = true;
    secure.root_password = "s3cret-pw";
    EtcdCluster etcd(secure);
    FleetOptions auth;
    auth.etcd_extra = "    tls: {caFile: " + etcd.ca_file() + "}\n    username: root\n    password: s3cret-pw\n";
    Fleet fleet(etcd, 1, auth);
    auto applied = fleet.apply(0, generator_doc + mes_doc("secure"));
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    CHECK(fleet.wait_for_answer(0, "secure.mesh") != "");
    CHECK(wait_until(5s, [&] { return fleet.ctl(0, {"get", "nodes"}).out.find("node-0") != std::string::npos; }));

    // A wrong password is refused, said so, and never shown.
    auto wrong = std::regex_replace(file_text(fleet.config(0)), std::regex("s3cret-pw"), "wrong-pw");
    auto r = run({MESCTL_PATH, "--config", fleet.dir().write("wrong.yaml", wrong), "apply", "-f",
                  fleet.dir().write("x.yaml", mes_doc("x"))});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("authentication as root failed") != std::string::npos);
    CHECK(r.err.find("wrong-pw") == std::string::npos);
    CHECK(fleet.node(0).log().find("s3cret-pw") == std::string::npos);
}

TEST_CASE("cluster: client certificates and a password together are refused by the gateway and said why")
{
    EtcdOptions secure;
    secure.members = 1;
    secure.tls = true;
    secure.client_cert_auth = true;
    secure.root_password = "s3cret-pw";
    EtcdCluster etcd(secure);
    TempDir dir;
    auto config = dir.write("c.yaml", "dataDir: " + (dir.path / "data").string() + "\ncluster:\n  etcd:\n    endpoints: [\"" +
                                          etcd.endpoint(0) + "\"]\n    tls: {caFile: " + etcd.ca_file() +
                                          ", certFile: " + etcd.client_cert_file() + ", keyFile: " +
                                          etcd.client_key_file() + "}\n    username: root\n    password: s3cret-pw\n");
    auto r = run({MESCTL_PATH, "--config", config, "get", "nodes"});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("not both: drop certFile and keyFile") != std::string::npos);
}

TEST_CASE("cluster: import of a store of 10000 MES keeps every VIP")
{
    EtcdCluster etcd(one_member());
    TempDir single;
    auto single_config = single.write("single.yaml", "dataDir: " + (single.path / "data").string() +
                                                         "\nvip:\n  ipv4: 127.242.0.0/16\n");
    auto input = single.write("all.yaml", generator_doc + many_mes("imp", 0, 10000));
    REQUIRE(run({MESCTL_PATH, "--config", single_config, "apply", "-f", input}).exit_code == 0);
    REQUIRE(run({MESCTL_PATH, "--config", single_config, "delete", "mes", "imp-17"}).exit_code == 0);
    auto vips_json = run({MESCTL_PATH, "--config", single_config, "get", "vips", "-o", "json"}).out;

    std::string endpoints;
    for (const auto& e : etcd.endpoints()) endpoints += (endpoints.empty() ? "" : ",") + e;
    auto import = run({MESCTL_PATH, "--config", single_config, "--etcd-endpoints", endpoints, "cluster", "import"});
    INFO(import.err);
    REQUIRE(import.exit_code == 0);
    CHECK(import.out.find("imported 10000 resources") != std::string::npos);  // 9,999 MES and the generator
    // Again: everything is there already.
    auto again = run({MESCTL_PATH, "--config", single_config, "--etcd-endpoints", endpoints, "cluster", "import"});
    CHECK(again.exit_code == 0);
    CHECK(again.out.find("imported 0 resources") != std::string::npos);

    // mesd will not start in cluster mode on the single-node store (it would be replaced).
    MesdOptions on_single;
    on_single.extra_config = "cluster:\n  etcd:\n    endpoints: [\"" + etcd.endpoint(0) + "\"]\n";
    CHECK_THROWS(Mesd(single.path / "node-on-single", [&] {
        auto o = on_single;
        o.extra_config = "dataDir: " + (single.path / "data").string() + "\n" + o.extra_config;
        return o;
    }()));

    // A new node serves every VIP the single store had, and the quarantine came along.
    Fleet fleet(etcd, 1);
    check_fleet_agrees(fleet, 1, 9999);
    auto mirrored = fleet.ctl(0, {"get", "vips", "-o", "json"}).out;
    CHECK(vips_in_use(mirrored) == vips_in_use(vips_json));
    store::etcd::Options o;
    o.endpoints = etcd.endpoints();
    auto client = store::etcd::Client::connect(o);
    REQUIRE(client);
    auto q = (*client)->range({"/mesd/quarantine/", store::etcd::prefix_end("/mesd/quarantine/"), 0, 0, true, false});
    REQUIRE(q);
    CHECK(q->kvs.size() == 1);
}

TEST_CASE("cluster: invalid input writes nothing and prune and Secrets behave as in single-node mode")
{
    EtcdCluster etcd(one_member());
    Fleet fleet(etcd, 2);
    REQUIRE(fleet.apply(0, generator_doc + mes_doc("a") + mes_doc("b")).exit_code == 0);

    // An invalid document: nothing written to etcd.
    auto bad = fleet.apply(1, mes_doc("c") + mes_doc("bad", 0));
    CHECK(bad.exit_code == 1);
    CHECK(bad.err.find("nothing was applied") != std::string::npos);
    check_etcd_whole(etcd, 2);

    // A Secret referenced by a MES: looked up in etcd, its value never shown, delete guarded.
    auto key_ref = "  tls:\n    enabled: true\n    verification:\n      caCert:\n        secret: ca\n";
    auto missing = fleet.apply(1, mes_doc("uses-ca", 80, key_ref));
    CHECK(missing.exit_code == 0);  // applied with a warning, as Kuma accepts it
    CHECK(missing.err.find("secret \"ca\" not found in mesh \"default\"") != std::string::npos);
    auto ca = make_ca("cluster test CA").cert_pem;
    std::string b64 = run({"/usr/bin/base64", "-w0", fleet.dir().write("ca.pem", ca)}).out;
    REQUIRE(fleet.apply(0, "type: Secret\nname: ca\ndata: " + b64 + "\n").exit_code == 0);
    auto uses = fleet.apply(1, mes_doc("uses-ca", 80, key_ref));
    INFO(uses.err);
    REQUIRE(uses.exit_code == 0);
    auto refused = fleet.ctl(0, {"delete", "secret", "ca"});
    CHECK(refused.exit_code == 1);
    CHECK(refused.err.find("Secret default/ca is used by MeshExternalService default/uses-ca") != std::string::npos);
    CHECK(fleet.wait_for_answer(1, "uses-ca.mesh") != "");
    std::string shown;
    CHECK(wait_until(10s, [&] { return (shown = fleet.ctl(1, {"get", "secrets", "ca", "-o", "yaml"}).out).find("name: ca") != std::string::npos; }));
    CHECK(shown.find(b64.substr(0, 40)) == std::string::npos);

    // --prune: what the input no longer names goes, MES before the Secret they used.
    auto pruned = fleet.ctl(1, {"apply", "--prune", "-f", fleet.dir().write("keep.yaml", generator_doc + mes_doc("b"))});
    INFO(pruned.err);
    CHECK(pruned.exit_code == 0);
    CHECK(pruned.out.find("unchanged MeshExternalService default/b") != std::string::npos);
    CHECK(pruned.out.find("deleted MeshExternalService default/a") != std::string::npos);
    CHECK(pruned.out.find("deleted MeshExternalService default/uses-ca") != std::string::npos);
    CHECK(pruned.out.find("deleted Secret default/ca") != std::string::npos);
    for (int n = 0; n < 2; ++n) {
        CHECK(fleet.wait_for_answer(n, "a.mesh", "") == "");
        CHECK(fleet.wait_for_answer(n, "b.mesh") != "");
    }
    check_etcd_whole(etcd, 1);
    check_fleet_agrees(fleet, 2, 1);
}

TEST_CASE("cluster: single applies find the free VIPs of a crowded pool")
{
    EtcdCluster etcd(one_member());
    FleetOptions crowded;
    crowded.vip_section = "  ipv4: 127.242.0.0/23\n";  // 510 usable addresses
    Fleet fleet(etcd, 1, crowded);
    // 480 in one apply (a block from a random place, wrapping), then one at a time: each
    // single apply starts at a random place, most likely inside the block, and must get out.
    REQUIRE(fleet.apply(0, many_mes("bulk", 0, 480)).exit_code == 0);
    for (int i = 0; i < 30; ++i) {
        auto r = fleet.apply(0, mes_doc("one-" + std::to_string(i)));
        INFO(r.err);
        REQUIRE(r.exit_code == 0);
        CHECK(r.err.find("has no VIP") == std::string::npos);
    }
    // The pool is full now: the next one is told so.
    auto full = fleet.apply(0, mes_doc("one-too-many"));
    CHECK(full.err.find("has no VIP: no addresses left in pool 127.242.0.0/23") != std::string::npos);
    check_etcd_whole(etcd, 511, 1);
}

TEST_CASE("cluster: a member left without a leader is dropped for one that has one")
{
    EtcdCluster etcd;
    Fleet fleet(etcd, 1);  // its watch is on member 0, the first endpoint
    REQUIRE(fleet.apply(0, generator_doc + mes_doc("before")).exit_code == 0);
    REQUIRE(fleet.wait_for_answer(0, "before.mesh") != "");
    // Members 1 and 2 stop answering: member 0 keeps its sockets open but has no leader.
    etcd.pause(1);
    etcd.pause(2);
    CHECK(wait_until(15s, [&] {
        return fleet.node(0).admin_get("/metrics").find("mesd_cluster_connected 0") != std::string::npos;
    }, 100ms));
    CHECK(fleet.node(0).admin_get("/ready").find("serving from cache") != std::string::npos);
    CHECK(fleet.dig(0, "before.mesh") != "");
    etcd.resume(1);
    etcd.resume(2);
    CHECK(wait_until(20s, [&] {
        return fleet.node(0).admin_get("/metrics").find("mesd_cluster_connected 1") != std::string::npos;
    }, 100ms));
    REQUIRE(fleet.apply(0, mes_doc("after")).exit_code == 0);
    CHECK(fleet.wait_for_answer(0, "after.mesh") != "");
}

TEST_CASE("cluster: a node that cannot listen exits at once with the reason")
{
    EtcdCluster etcd(one_member());
    Fleet fleet(etcd, 1);
    // A second node on the first one's DNS port: it must fail and exit, not hang.
    TempDir dir;
    MesdOptions o;
    o.dns_listen = "127.0.0.1:" + std::to_string(fleet.node(0).dns_port());
    o.extra_config = "cluster:\n  nodeName: clash\n  etcd:\n    endpoints: [\"" + etcd.endpoint(0) + "\"]\n";
    auto began = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH(Mesd(dir.path / "clash", o), Catch::Contains("cannot listen"));
    CHECK(std::chrono::steady_clock::now() - began < 10s);
}

TEST_CASE("cluster: import keeps a VIP in etcd's quarantine out of an imported MES")
{
    EtcdCluster etcd(one_member());
    Fleet fleet(etcd, 1);
    // The cluster's first VIP is drawn at random from its /16; the /24 below holds only .1 to
    // .254, so a MES is added until one of them gets such an address.
    std::map<std::string, std::string> vips;
    std::string gone, released;
    int added = 0;
    for (int i = 0; i < 4 && released.empty(); ++i, ++added) {
        auto name = "gone" + std::to_string(i);
        REQUIRE(fleet.apply(0, mes_doc(name)).exit_code == 0);
        REQUIRE(wait_until(10s, [&] { return (vips = vips_on(fleet, 0)).contains(name); }));
        auto last = vips[name].substr(vips[name].rfind('.') + 1);
        if (last != "0" && last != "255") gone = name, released = vips[name];
    }
    REQUIRE_FALSE(released.empty());
    REQUIRE(fleet.ctl(0, {"delete", "mes", gone}).exit_code == 0);

    // A single-node store with the whole /24 around that address in use: one of its MES
    // holds the very address etcd has in quarantine.
    TempDir single;
    auto pool = vip::Pool::parse(released.substr(0, released.rfind('.')) + ".0/24");
    REQUIRE(pool);
    auto config = single.write("single.yaml", "dataDir: " + (single.path / "data").string() + "\nvip:\n  ipv4: " +
                                                  pool->to_string() + "\n");
    auto filled = run({MESCTL_PATH, "--config", config, "apply", "-f", single.write("all.yaml", many_mes("imp", 0, 254))});
    REQUIRE(filled.exit_code == 0);
    REQUIRE(filled.out.find(" " + released + "\n") != std::string::npos);
    auto import = run({MESCTL_PATH, "--config", config, "--etcd-endpoints", etcd.endpoint(0), "cluster", "import"});
    CHECK(import.exit_code == 1);
    CHECK(import.err.find("is in quarantine in etcd") != std::string::npos);
    // The others came in, the one on the quarantined VIP did not; MES passed over above stay.
    check_etcd_whole(etcd, 253 + static_cast<std::size_t>(added - 1));
}
