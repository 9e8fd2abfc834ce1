// Kuma's hostname generation: selection, templates, collisions and conditions.
#include "test/conf/support.hpp"

using namespace test_support;

namespace {

conf::Resource mes(const std::string& name, std::map<std::string, std::string> labels = {})
{
    conf::Resource r;
    r.kind = conf::Kind::mesh_external_service;
    r.name = name;
    r.labels = std::move(labels);
    r.spec = conf::MeshExternalService{};
    return r;
}

conf::Resource generator(const std::string& name, const std::string& tmpl, std::map<std::string, std::string> match = {})
{
    conf::Resource r;
    r.kind = conf::Kind::hostname_generator;
    r.name = name;
    conf::HostnameGenerator g;
    g.selects_mesh_external_services = true;
    g.match_labels = std::move(match);
    g.template_text = tmpl;
    r.spec = g;
    return r;
}

}  // namespace

TEST_CASE("every generator applies to every MES it selects")
{
    auto a = mes("a", {{"team", "x"}});
    auto b = mes("b");
    auto all = generator("all", "{{ .Name }}.mesh");
    auto team = generator("team", "{{ .Name }}.{{ label \"team\" }}.team", {{"team", "x"}});
    std::vector<conf::Ordered> gens{{&all, 1}, {&team, 2}};
    std::vector<conf::Ordered> svcs{{&a, 3}, {&b, 4}};
    auto st = conf::generate_hostnames(gens, svcs);
    REQUIRE(st.size() == 2);
    REQUIRE(st[0].addresses.size() == 2);
    CHECK(st[0].addresses[0] == conf::GeneratedAddress{"a.mesh", "HostnameGenerator", "all"});
    CHECK(st[0].addresses[1] == conf::GeneratedAddress{"a.x.team", "HostnameGenerator", "team"});
    REQUIRE(st[1].addresses.size() == 1);
    CHECK(st[1].addresses[0].hostname == "b.mesh");
    REQUIRE(st[1].generators.size() == 1);
    CHECK(st[1].generators[0].conditions.at(0) == conf::Condition{"Generated", "True", "Generated", ""});
}

TEST_CASE("collisions: the older MES keeps the hostname, then the smaller name")
{
    auto older = mes("zeta", {{"kuma.io/display-name", "same"}});
    auto newer = mes("alpha", {{"kuma.io/display-name", "same"}});
    auto gen = generator("g", "{{ .DisplayName }}.mesh");
    std::vector<conf::Ordered> gens{{&gen, 1}};
    std::vector<conf::Ordered> svcs{{&newer, 10}, {&older, 5}};
    auto st = conf::generate_hostnames(gens, svcs);
    CHECK(st[1].addresses.at(0).hostname == "same.mesh");
    CHECK(st[0].addresses.empty());
    CHECK(st[0].generators.at(0).conditions.at(0) ==
          conf::Condition{"Generated", "False", "Collision", "Hostname collision with MeshExternalService: zeta"});

    // Same age: the smaller name wins.
    std::vector<conf::Ordered> tied{{&older, 5}, {&newer, 5}};
    auto st2 = conf::generate_hostnames(gens, tied);
    CHECK(st2[1].addresses.at(0).hostname == "same.mesh");
    CHECK(st2[0].generators.at(0).conditions.at(0).reason == "Collision");
}

TEST_CASE("template errors become TemplateError conditions")
{
    auto a = mes("a");
    auto missing_label = generator("lbl", "{{ label \"team\" }}.mesh");
    auto bad_name = generator("ns", "{{ .Name }}.{{ .Namespace }}.mesh");  // universal: empty namespace
    std::vector<conf::Ordered> gens{{&missing_label, 1}, {&bad_name, 2}};
    std::vector<conf::Ordered> svcs{{&a, 1}};
    auto st = conf::generate_hostnames(gens, svcs);
    CHECK(st[0].addresses.empty());
    REQUIRE(st[0].generators.size() == 2);
    CHECK(st[0].generators[0].generator == "lbl");
    CHECK(st[0].generators[0].conditions.at(0) ==
          conf::Condition{"Generated", "False", "TemplateError",
                          "pre evaluation of template with parameters failed with error=\"template: :1:3: executing "
                          "\\\"\\\" at <label \\\"team\\\">: error calling label: label team not found\""});
    CHECK(st[0].generators[1].conditions.at(0).reason == "TemplateError");
    CHECK_THAT(st[0].generators[1].conditions.at(0).message,
               Catch::StartsWith("generated hostname \"a..mesh\" is not a valid DNS name"));
}

TEST_CASE("a generator that selects nothing leaves no trace, and other selector kinds select nothing")
{
    auto a = mes("a");
    auto none = generator("none", "{{ .Name }}.x", {{"team", "y"}});
    auto ms = generator("ms", "{{ .Name }}.svc");
    std::get<conf::HostnameGenerator>(ms.spec).selects_mesh_external_services = false;
    std::vector<conf::Ordered> gens{{&none, 1}, {&ms, 2}};
    std::vector<conf::Ordered> svcs{{&a, 1}};
    auto st = conf::generate_hostnames(gens, svcs);
    CHECK(st[0].addresses.empty());
    CHECK(st[0].generators.empty());
}

TEST_CASE("template values follow Kuma's labels")
{
    auto r = mes("name", {{"kuma.io/display-name", "disp"}, {"k8s.kuma.io/namespace", "ns"}, {"kuma.io/zone", "z"}});
    r.mesh = "m";
    auto v = conf::template_values(r);
    CHECK(v.name == "name");
    CHECK(v.display_name == "disp");
    CHECK(v.namespace_ == "ns");
    CHECK(v.mesh == "m");
    CHECK(v.zone == "z");
    CHECK(conf::template_values(mes("plain")).display_name == "plain");
}
