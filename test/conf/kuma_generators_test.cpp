// Kuma's current HostnameGenerator API: its validator's table and its hostname generation
// table (test/conf/kuma/hostnamegenerator-validate.yaml, hostname-evaluate.yaml) run through
// mesd, the labels Kuma computes on what is written to a zone, the order of generators, and
// spec.extension kept as written.
#include "test/conf/kuma_tables.hpp"
#include "test/conf/support.hpp"
#include "test/support/text.hpp"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <sstream>

using namespace test_support;

namespace {

std::map<std::string, std::string> string_map(const YAML::Node& node)
{
    std::map<std::string, std::string> out;
    for (auto it = node.begin(); it != node.end(); ++it) out[it->first.as<std::string>()] = it->second.as<std::string>();
    return out;
}

conf::Resource generator(const std::string& name, const std::string& tmpl, std::map<std::string, std::string> labels = {})
{
    conf::Resource g;
    g.kind = conf::Kind::hostname_generator;
    g.mesh.clear();
    g.name = name;
    g.labels = std::move(labels);
    conf::HostnameGenerator spec;
    spec.selects_mesh_external_services = true;
    spec.template_text = tmpl;
    g.spec = spec;
    return g;
}

conf::Resource service(const std::string& name, std::map<std::string, std::string> labels = {},
                       const std::string& mesh = "default")
{
    conf::Resource m;
    m.kind = conf::Kind::mesh_external_service;
    m.mesh = mesh;
    m.name = name;
    m.labels = std::move(labels);
    m.spec = conf::MeshExternalService{};
    return m;
}

const conf::Resource& only(const conf::LoadResult& r)
{
    REQUIRE(r.documents.size() == 1);
    return r.documents[0].resource;
}

}  // namespace

TEST_CASE("Kuma's HostnameGenerator validator table: same field paths and messages")
{
    auto cases = YAML::LoadFile((kuma_dir / "hostnamegenerator-validate.yaml").string());
    REQUIRE(cases.IsSequence());
    std::size_t from_kuma = 0;
    for (const auto& c : cases) {
        from_kuma += c["origin"].as<std::string>() == "kuma-testdata";
        bool differs = c["difference"].IsDefined();
        auto expected = violations_of(differs ? c["mesd"] : c["violations"]);
        if (differs) CHECK(expected != violations_of(c["violations"]));
        auto r = load("type: HostnameGenerator\nname: gen\nspec:\n" + indent(c["spec"].as<std::string>(), 2));
        std::vector<Violation> got;
        for (const auto* d : errors(r)) got.push_back({d->path, d->message});
        std::ranges::sort(got);
        INFO("case: " << c["entry"].as<std::string>());
        INFO(Catch::Detail::stringify(messages(r)));
        CHECK(got == expected);
    }
    CHECK(from_kuma == 13);  // every entry of Kuma's table
}

TEST_CASE("Kuma's hostname generation table: hostnames and TemplateError messages")
{
    auto cases = YAML::LoadFile((kuma_dir / "hostname-evaluate.yaml").string());
    REQUIRE(cases.IsSequence());
    std::size_t from_kuma = 0;
    for (const auto& c : cases) {
        from_kuma += c["origin"].as<std::string>() == "kuma-testdata";
        auto gen = generator("gen", c["template"].as<std::string>());
        auto mes = service(c["name"].as<std::string>(), string_map(c["labels"]), c["mesh"].as<std::string>());
        conf::Ordered g{&gen, 1}, s{&mes, 2};
        auto local_zone = c["localZone"] ? c["localZone"].as<std::string>() : std::string();
        auto st = conf::generate_hostnames(std::span(&g, 1), std::span(&s, 1), {}, local_zone);
        INFO("case: " << c["entry"].as<std::string>());
        REQUIRE(st.size() == 1);
        REQUIRE(st[0].generators.size() == 1);
        const auto& cond = st[0].generators[0].conditions.at(0);
        INFO(cond.message);
        if (c["expected"]) {
            REQUIRE(st[0].addresses.size() == 1);
            CHECK(st[0].addresses[0].hostname == c["expected"].as<std::string>());
            CHECK(cond.reason == "Generated");
        } else {
            CHECK(st[0].addresses.empty());
            CHECK(cond.status == "False");
            CHECK(cond.reason == "TemplateError");
            if (c["error"]) CHECK_THAT(cond.message, Catch::Contains(c["error"].as<std::string>()));
            if (c["message"]) CHECK(cond.message == c["message"].as<std::string>());
        }
    }
    CHECK(from_kuma == 12);  // every entry of Kuma's table
}

TEST_CASE("a MES written to mesd gets the labels Kuma computes in a zone")
{
    conf::LoadOptions zone;
    zone.zone = "east";
    auto u = load("type: MeshExternalService\nname: backend\nmesh: payments\nlabels:\n  team: a\n  kuma.io/display-name: other\n"
                  "spec:\n  match: {port: 80}\n  endpoints: [{address: example.com, port: 80}]\n",
                  zone);
    CHECK_VALID(u);
    CHECK(only(u).labels == std::map<std::string, std::string>{{"team", "a"},
                                                               {"kuma.io/display-name", "backend"},
                                                               {"kuma.io/mesh", "payments"},
                                                               {"kuma.io/origin", "zone"},
                                                               {"kuma.io/zone", "east"},
                                                               {"kuma.io/env", "universal"}});
    // Given zone and env labels are kept (Kuma sets them only when absent).
    auto k = load("apiVersion: kuma.io/v1alpha1\nkind: MeshExternalService\nmetadata:\n  name: backend\n"
                  "  namespace: my-ns\n  labels:\n    kuma.io/zone: west\nspec:\n  match: {port: 80}\n"
                  "  endpoints: [{address: example.com, port: 80}]\n",
                  zone);
    CHECK_VALID(k);
    CHECK(only(k).labels == std::map<std::string, std::string>{{"k8s.kuma.io/namespace", "my-ns"},
                                                               {"kuma.io/display-name", "backend"},
                                                               {"kuma.io/mesh", "default"},
                                                               {"kuma.io/origin", "zone"},
                                                               {"kuma.io/zone", "west"},
                                                               {"kuma.io/env", "kubernetes"}});
    // A generator: no mesh label (it has no mesh), the rest as for a MES.
    auto g = load("type: HostnameGenerator\nname: gen\nspec:\n  selector: {meshExternalService: {}}\n"
                  "  template: \"{{ .Name }}.mesh\"\n");
    CHECK_VALID(g);
    CHECK(only(g).mesh.empty());
    CHECK(only(g).labels == std::map<std::string, std::string>{{"kuma.io/display-name", "gen"},
                                                               {"kuma.io/origin", "zone"},
                                                               {"kuma.io/zone", "default"},
                                                               {"kuma.io/env", "universal"}});
}

TEST_CASE("the name rule is checked on the display name: synced names are accepted")
{
    // Synced from a Kubernetes zone by a global control plane: labels kept as written.
    auto synced = load("type: MeshExternalService\nname: backend.my-ns\nlabels:\n  kuma.io/origin: global\n"
                       "  kuma.io/display-name: backend\nspec:\n  match: {port: 80}\n"
                       "  endpoints: [{address: example.com, port: 80}]\n");
    CHECK_VALID(synced);
    CHECK(only(synced).labels == std::map<std::string, std::string>{{"kuma.io/origin", "global"},
                                                                    {"kuma.io/display-name", "backend"}});
    // Written here, the display name is the name: `backend.my-ns` is not an RFC 1035 label.
    auto local = load("type: MeshExternalService\nname: backend.my-ns\nlabels:\n  kuma.io/display-name: backend\n"
                      "spec:\n  match: {port: 80}\n  endpoints: [{address: example.com, port: 80}]\n");
    CHECK(has_error(local, "name", std::string(conf::rfc1035_label_message)));
    // Synced, but its display name is not one either.
    auto bad = load("type: MeshExternalService\nname: backend.my-ns\nlabels:\n  kuma.io/origin: global\n"
                    "spec:\n  match: {port: 80}\n  endpoints: [{address: example.com, port: 80}]\n");
    CHECK(has_error(bad, "name", std::string(conf::rfc1035_label_message)));
}

TEST_CASE("a synced MES renders its display name and its zone's name")
{
    auto r = load("type: MeshExternalService\nname: backend.my-ns\nlabels:\n  kuma.io/origin: global\n"
                  "  kuma.io/display-name: backend\nspec:\n  match: {port: 80}\n"
                  "  endpoints: [{address: example.com, port: 80}]\n");
    CHECK_VALID(r);
    auto gen = generator("gen", "{{ .DisplayName }}.{{ .Zone }}.mesh");
    conf::Ordered g{&gen, 1}, s{&only(r), 2};
    // No kuma.io/zone label: the zone mesd is configured as.
    auto st = conf::generate_hostnames(std::span(&g, 1), std::span(&s, 1), {}, "east");
    REQUIRE(st[0].addresses.size() == 1);
    CHECK(st[0].addresses[0].hostname == "backend.east.mesh");
}

TEST_CASE("generators labelled kuma.io/origin zone come first then by age")
{
    // Both render x.mesh. By age the global one would give it to `older`; the zone's one,
    // younger but first, gives it to `younger`, the only MES it selects.
    auto old_global = generator("a-global", "x.mesh", {{"kuma.io/origin", "global"}});
    auto young_zone = generator("z-zone", "x.mesh", {{"kuma.io/origin", "zone"}});
    std::get<conf::HostnameGenerator>(young_zone.spec).match_labels = {{"pick", "yes"}};
    auto older = service("older"), younger = service("younger", {{"pick", "yes"}});
    std::vector<conf::Ordered> gens{{&old_global, 1}, {&young_zone, 5}};
    std::vector<conf::Ordered> mes{{&older, 2}, {&younger, 3}};
    auto st = conf::generate_hostnames(gens, mes);
    REQUIRE(st.size() == 2);
    REQUIRE_FALSE(st[1].addresses.empty());
    CHECK(st[1].addresses[0].hostname == "x.mesh");
    CHECK(st[0].addresses.empty());
    CHECK(st[0].generators.at(0).conditions.at(0).message == "Hostname collision with MeshExternalService: younger");
    // Relabelled as synced from elsewhere, the zone's one is ordered by age like the other.
    young_zone.labels["kuma.io/origin"] = "global";
    st = conf::generate_hostnames(gens, mes);
    CHECK(st[0].addresses.at(0).hostname == "x.mesh");
    CHECK(st[1].addresses.empty());
    // Without origins, age decides, then the name.
    auto a = generator("a", "x"), b = generator("b", "x");
    CHECK(conf::order_key({&b, 0}) < conf::order_key({&a, 1}));
    CHECK(conf::order_key({&a, 3}) < conf::order_key({&b, 3}));
}

TEST_CASE("a collision names the MES that holds the name")
{
    auto gen = generator("gen", "{{ .DisplayName }}.mesh");
    auto first = service("first", {{"kuma.io/display-name", "same"}});
    auto second = service("second", {{"kuma.io/display-name", "same"}});
    std::vector<conf::Ordered> gens{{&gen, 1}};
    std::vector<conf::Ordered> mes{{&second, 3}, {&first, 2}};
    auto st = conf::generate_hostnames(gens, mes);
    CHECK(st[1].addresses.at(0).hostname == "same.mesh");
    CHECK(st[0].addresses.empty());
    CHECK(st[0].generators.at(0).conditions.at(0) ==
          conf::Condition{"Generated", "False", "Collision", "Hostname collision with MeshExternalService: first"});
}

TEST_CASE("spec.extension is checked as Kuma checks it and kept as written")
{
    auto m = load("type: MeshExternalService\nname: ext\nspec:\n  match: {port: 80}\n"
                  "  endpoints: [{address: example.com, port: 80}]\n"
                  "  extension:\n    type: my-plugin\n    config:\n      retries: 3\n      hosts: [a, b]\n      on: true\n");
    CHECK_VALID(m);
    REQUIRE(only_mes(m).extension.has_value());
    CHECK(only_mes(m).extension->type == "my-plugin");
    REQUIRE(only_mes(m).extension->config.has_value());
    auto config = YAML::Load(*only_mes(m).extension->config);
    CHECK(config["retries"].as<int>() == 3);
    CHECK(config["hosts"][1].as<std::string>() == "b");
    CHECK(config["on"].as<bool>());
    // The endpoints stay what mesd carries the traffic to.
    CHECK(only_mes(m).endpoints.size() == 1);

    auto no_type = load("type: MeshExternalService\nname: ext\nspec:\n  match: {port: 80}\n"
                        "  endpoints: [{address: example.com, port: 80}]\n  extension:\n    type: \"\"\n");
    CHECK(has_error(no_type, "spec.extension.type", "must not be empty"));
    auto unknown = load("type: MeshExternalService\nname: ext\nspec:\n  match: {port: 80}\n"
                        "  endpoints: [{address: example.com, port: 80}]\n  extension:\n    type: a\n    kind: b\n");
    CHECK(has_error(unknown, "spec.extension.kind", "unknown field \"kind\""));

    auto g = load("type: HostnameGenerator\nname: gen\nspec:\n  selector: {meshExternalService: {}}\n"
                  "  template: \"{{ .Name }}.mesh\"\n  extension:\n    type: dns-plugin\n");
    CHECK_VALID(g);
    REQUIRE(only(g).generator()->extension.has_value());
    CHECK(only(g).generator()->extension->type == "dns-plugin");
    CHECK_FALSE(only(g).generator()->extension->config.has_value());
}

TEST_CASE("a HostnameGenerator written with a mesh keeps it")
{
    auto g = load("type: HostnameGenerator\nname: gen\nmesh: payments\nspec:\n  selector: {meshExternalService: {}}\n"
                  "  template: \"{{ .Name }}.mesh\"\n");
    CHECK_VALID(g);
    CHECK(only(g).mesh == "payments");
    auto k = load("apiVersion: kuma.io/v1alpha1\nkind: HostnameGenerator\nmetadata:\n  name: gen\n  namespace: kuma-system\n"
                  "spec:\n  selector: {meshExternalService: {}}\n  template: \"{{ .Name }}.mesh\"\n");
    CHECK_VALID(k);
    CHECK(only(k).mesh.empty());
    // Diagnostics of a generator of no mesh name it alone.
    auto bad = load("type: HostnameGenerator\nname: gen\nspec:\n  selector: {meshExternalService: {}}\n  template: \"\"\n");
    REQUIRE_FALSE(errors(bad).empty());
    CHECK(errors(bad)[0]->format() == "test.yaml:5:13: HostnameGenerator gen: spec.template: must not be empty");
}

TEST_CASE("the zone a configuration names")
{
    auto c = conf::load_config_text("zone: east\n", "mesd.yaml");
    CHECK(c.ok());
    CHECK(c.config.zone == "east");
    CHECK(conf::load_config_text("", "mesd.yaml").config.zone == "default");
    auto bad = conf::load_config_text("zone: East.1\n", "mesd.yaml");
    REQUIRE(bad.errors.size() == 1);
    CHECK(bad.errors[0].path == "zone");
}
