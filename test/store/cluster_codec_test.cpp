// The parts of cluster mode that need no etcd: the key layout, the value format, and the
// configuration section.
#include "store/cluster.hpp"
#include "test/support/resources.hpp"

#include <catch2/catch.hpp>

using store::cluster::Layout;

TEST_CASE("cluster layout: resource keys round trip and other keys are not resources")
{
    Layout layout("/mesd/");
    auto key = layout.resource(conf::Kind::mesh_external_service, "default", "web");
    CHECK(key == "/mesd/res/default/meshexternalservice/web");
    auto parsed = layout.parse_resource(key);
    REQUIRE(parsed);
    CHECK(parsed->kind == conf::Kind::mesh_external_service);
    CHECK(parsed->mesh == "default");
    CHECK(parsed->name == "web");
    CHECK(layout.parse_resource(layout.resource(conf::Kind::secret, "m", "s"))->kind == conf::Kind::secret);
    CHECK_FALSE(layout.parse_resource("/mesd/vip/127.0.0.1"));
    CHECK_FALSE(layout.parse_resource("/mesd/nodes/a"));
    CHECK_FALSE(layout.parse_resource("/mesd/res/default/unknownkind/x"));
    // A HostnameGenerator of no mesh (it serves every mesh); nothing else lacks one.
    auto meshless = layout.parse_resource(layout.resource(conf::Kind::hostname_generator, "", "local-mesh-external-service"));
    REQUIRE(meshless);
    CHECK(meshless->mesh.empty());
    CHECK(meshless->name == "local-mesh-external-service");
    CHECK_FALSE(layout.parse_resource(layout.resource(conf::Kind::mesh_external_service, "", "web")));
    CHECK_FALSE(layout.parse_resource("/mesd/res/default/meshexternalservice/"));
    CHECK_FALSE(layout.parse_resource("/mesd/res/default/meshexternalservice/a/b"));
    CHECK_FALSE(layout.parse_resource("/other/res/default/meshexternalservice/web"));
    CHECK(layout.vip(*vip::Address::parse("127.242.0.1")) == "/mesd/vip/127.242.0.1");
}

TEST_CASE("cluster values: a MES with both VIPs round trips and damage is refused")
{
    store::MirrorEntry e;
    e.resource = test_support::make_mes("web", 8080);
    e.created_at = store::Clock::time_point(std::chrono::seconds(1'700'000'000));
    e.modified_at = store::Clock::time_point(std::chrono::seconds(1'700'000'100));
    e.ipv4 = vip::Address::parse("127.242.0.7");
    e.ipv6 = vip::Address::parse("fd00::7");
    auto bytes = store::cluster::encode_value(e);
    store::ResourceKey key{conf::Kind::mesh_external_service, "default", "web"};
    auto back = store::cluster::decode_value(bytes, key, 42);
    REQUIRE(back);
    CHECK(back->created == 42);
    CHECK(back->created_at == e.created_at);
    CHECK(back->modified_at == e.modified_at);
    CHECK(back->ipv4 == e.ipv4);
    CHECK(back->ipv6 == e.ipv6);
    CHECK(back->resource.name == "web");
    CHECK(back->resource.mes()->port == 8080);

    // A value under another resource's key, cut short, or of another format is not taken.
    CHECK_FALSE(store::cluster::decode_value(bytes, store::ResourceKey{conf::Kind::mesh_external_service, "default", "x"}, 1));
    for (std::size_t cut = 0; cut < bytes.size(); ++cut)
        CHECK_FALSE(store::cluster::decode_value(std::string_view(bytes).substr(0, cut), key, 1));
    CHECK_FALSE(store::cluster::decode_value("{\"json\": true}", key, 1));
    CHECK_FALSE(store::cluster::decode_value(bytes + "x", key, 1));
}

TEST_CASE("cluster config: the section read with defaults and each error placed")
{
    auto ok = conf::load_config_text("cluster:\n  nodeName: a-1\n  etcd:\n    endpoints: [http://127.0.0.1:2379, "
                                     "\"etcd-2.example:2379\", \"https://[::1]:2379\"]\n",
                                     "c.yaml");
    REQUIRE(ok.ok());
    CHECK(ok.config.cluster.enabled);
    CHECK(ok.config.cluster.node_name == "a-1");
    CHECK(ok.config.cluster.etcd.endpoints.size() == 3);
    CHECK(ok.config.cluster.etcd.prefix == "/mesd/");
    CHECK(ok.config.cluster.etcd.dial_timeout == std::chrono::seconds(2));
    CHECK_FALSE(conf::load_config_text("dataDir: /x\n", "c.yaml").config.cluster.enabled);

    auto errors = [](const std::string& text) {
        auto r = conf::load_config_text(text, "c.yaml");
        std::string all;
        for (const auto& d : r.errors) all += d.format() + "\n";
        return all;
    };
    CHECK(errors("cluster:\n  nodeName: a\n") .find("cluster.etcd: must be given") != std::string::npos);
    CHECK(errors("cluster:\n  etcd:\n    endpoints: []\n").find("must list at least one etcd member") != std::string::npos);
    CHECK(errors("cluster:\n  etcd:\n    endpoints: [\"ftp://x:1\"]\n").find("c.yaml:3:17: cluster.etcd.endpoints[0]") !=
          std::string::npos);
    CHECK(errors("cluster:\n  etcd:\n    endpoints: [\"a:1\"]\n    prefix: /mesd\n").find("cluster.etcd.prefix: must end with '/'") !=
          std::string::npos);
    CHECK(errors("cluster:\n  etcd:\n    endpoints: [\"a:1\"]\n    tls: {certFile: /c}\n")
              .find("certFile and keyFile go together") != std::string::npos);
    CHECK(errors("cluster:\n  etcd:\n    endpoints: [\"a:1\"]\n    password: x\n").find("must be given with a password") !=
          std::string::npos);
    CHECK(errors("cluster:\n  nodeName: \"a b\"\n  etcd:\n    endpoints: [\"a:1\"]\n").find("cluster.nodeName") !=
          std::string::npos);
    CHECK(errors("cluster:\n  etcd:\n    endpoints: [\"a:1\"]\n    dialTimeout: forever\n").find("cluster.etcd.dialTimeout") !=
          std::string::npos);
    CHECK(errors("cluster:\n  etcd:\n    endpoints: [\"a:1\"]\n    bogus: 1\n").find("bogus") != std::string::npos);

    conf::ConfigResult flagged;
    conf::set_etcd_endpoints(flagged, "127.0.0.1:2379,http://127.0.0.2:2379", "--etcd-endpoints");
    CHECK(flagged.ok());
    CHECK(flagged.config.cluster.enabled);
    CHECK(flagged.config.cluster.etcd.endpoints.size() == 2);
    conf::ConfigResult bad;
    conf::set_etcd_endpoints(bad, "127.0.0.1", "--etcd-endpoints");
    CHECK_FALSE(bad.ok());
}
