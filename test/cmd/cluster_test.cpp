// Cluster mode as users run it: a real etcd cluster on loopback, real mesd nodes mirroring
// it, mesctl writing to it, dig reading from every node.
#include "test/support/cluster.hpp"

#include <catch2/catch.hpp>

#include <csignal>
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
