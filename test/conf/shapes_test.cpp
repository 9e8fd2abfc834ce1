// Both document shapes, several documents per file, HostnameGenerators, Secrets, and the
// checks across documents.
#include "test/conf/support.hpp"
#include "test/support/certs.hpp"

using namespace test_support;

TEST_CASE("Universal shape, with the seed's apiVersion next to type")
{
    auto r = load("apiVersion: kuma.io/v1alpha1\ntype: MeshExternalService\nname: mes-tcp\nmesh: payments\n"
                  "labels:\n  team: a\nspec:\n  match:\n    port: 4242\n  endpoints:\n    - address: tcpbin.com\n      port: 4242\n");
    CHECK_VALID(r);
    const auto& res = r.documents.at(0).resource;
    CHECK(res.kind == conf::Kind::mesh_external_service);
    CHECK(res.name == "mes-tcp");
    CHECK(res.mesh == "payments");
    CHECK(res.labels.at("team") == "a");
    CHECK(res.mark.line == 1);
    CHECK(has_error(load("apiVersion: v2\ntype: Secret\nname: s\ndata: dGVzdA==\n"), "apiVersion",
                    "must be \"kuma.io/v1alpha1\""));
}

TEST_CASE("Universal mesh defaults to default")
{
    auto r = load("type: MeshExternalService\nname: a\nspec: {}\n");
    CHECK_VALID(r);
    CHECK(r.documents.at(0).resource.mesh == "default");
}

TEST_CASE("Kubernetes shape: mesh from the kuma.io/mesh label, namespace kept as a label")
{
    auto r = load("apiVersion: kuma.io/v1alpha1\nkind: MeshExternalService\nmetadata:\n  name: mes-k8s\n"
                  "  namespace: kuma-system\n  labels:\n    kuma.io/mesh: payments\n  annotations:\n    a: b\n"
                  "spec:\n  match:\n    port: 443\n  endpoints:\n    - address: example.com\n      port: 443\n");
    CHECK_VALID(r);
    const auto& res = r.documents.at(0).resource;
    CHECK(res.name == "mes-k8s");
    CHECK(res.mesh == "payments");
    CHECK(res.labels.at("k8s.kuma.io/namespace") == "kuma-system");

    auto no_label = load("apiVersion: kuma.io/v1alpha1\nkind: MeshExternalService\nmetadata:\n  name: x\nspec: {}\n");
    CHECK_VALID(no_label);
    CHECK(no_label.documents.at(0).resource.mesh == "default");

    auto bad = load("apiVersion: kuma.io/v1\nkind: MeshExternalService\nmetadata:\n  name: x\n  uid: 1\nspec: {}\n");
    CHECK(has_error(bad, "apiVersion", "must be \"kuma.io/v1alpha1\""));
    CHECK(has_error(bad, "metadata.uid", "unknown field \"uid\""));
    CHECK(has_error(load("apiVersion: kuma.io/v1alpha1\nkind: MeshExternalService\nspec: {}\n"), "metadata",
                    "must be defined"));
}

TEST_CASE("Secrets in both shapes")
{
    auto r = load("type: Secret\nname: ca\nmesh: default\ndata: dGVzdA==\n---\n"
                  "apiVersion: v1\nkind: Secret\nmetadata:\n  name: key\n  namespace: kuma-system\n"
                  "  labels:\n    kuma.io/mesh: default\ntype: system.kuma.io/secret\ndata:\n  value: a2V5\n");
    CHECK_VALID(r);
    REQUIRE(r.documents.size() == 2);
    CHECK(r.documents[0].resource.secret()->data == "test");
    CHECK(r.documents[1].resource.secret()->data == "key");
    CHECK(r.documents[1].resource.kind == conf::Kind::secret);
    CHECK(has_error(load("type: Secret\nname: s\ndata: \"not base64!\"\n"), "data", "must be valid base64"));
    CHECK(has_error(load("type: Secret\nname: s\n"), "data", "must be defined"));
    CHECK(has_error(load("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ntype: Opaque\ndata:\n  value: a2V5\n"),
                    "type", "must be \"system.kuma.io/secret\""));
}

TEST_CASE("secret references resolve against the input, then the store")
{
    auto pair = make_self_signed("client");
    std::string mes_doc =
        "type: MeshExternalService\nname: m\nspec:\n  tls:\n    verification:\n"
        "      clientCert:\n        secret: cert\n      clientKey:\n        secret: key\n";
    std::string secrets = "---\ntype: Secret\nname: cert\ndata: " + conf::base64_encode(pair.cert_pem) +
                          "\n---\ntype: Secret\nname: key\ndata: " + conf::base64_encode(pair.key_pem) + "\n";
    CHECK_VALID(load(mes_doc + secrets));

    auto missing = load(mes_doc);
    // Missing Secrets are warnings, not errors: Kuma accepts a MES applied before its Secret.
    CHECK_VALID(missing);
    CHECK(has_warning(missing, "spec.tls.verification.clientCert.secret", "secret \"cert\" not found in mesh \"default\""));
    CHECK(has_warning(missing, "spec.tls.verification.clientKey.secret", "secret \"key\" not found in mesh \"default\""));

    conf::LoadOptions in_store;
    in_store.secret_exists = [](std::string_view mesh, std::string_view name) {
        return mesh == "default" && (name == "cert" || name == "key");
    };
    CHECK_VALID(load(mes_doc, in_store));

    // A Secret of another mesh does not count.
    auto other_mesh = load(mes_doc + "---\ntype: Secret\nname: cert\nmesh: other\ndata: dGVzdA==\n");
    CHECK(has_warning(other_mesh, "spec.tls.verification.clientCert.secret", "secret \"cert\" not found in mesh \"default\""));

    // The Secret's bytes must suit their use.
    auto swapped = load("type: MeshExternalService\nname: m\nspec:\n  tls:\n    verification:\n"
                        "      clientCert:\n        secret: key\n      clientKey:\n        secret: cert\n" + secrets);
    CHECK_VALID(swapped);  // warnings: the TLS condition says why it cannot be used
    CHECK(has_warning(swapped, "spec.tls.verification.clientCert.secret", "secret \"key\" used as clientCert: not a valid PEM certificate"));
    CHECK(has_warning(swapped, "spec.tls.verification.clientKey.secret", "secret \"cert\" used as clientKey: not a PEM private key"));
}

TEST_CASE("several documents per file, each reported on its own")
{
    auto r = load("type: MeshExternalService\nname: a\nspec: {}\n---\n---\n"
                  "type: MeshExternalService\nname: B\nspec: {}\n---\n"
                  "type: HostnameGenerator\nname: g\nspec:\n  selector:\n    meshExternalService:\n"
                  "      matchLabels:\n        team: a\n  template: \"{{ .Name }}.mesh\"\n");
    REQUIRE(r.documents.size() == 3);
    CHECK(r.documents[0].valid());
    CHECK_FALSE(r.documents[1].valid());
    CHECK(r.documents[1].resource.mark.line == 6);
    CHECK(r.documents[2].valid());
    const auto* g = r.documents[2].resource.generator();
    REQUIRE(g);
    CHECK(g->selects_mesh_external_services);
    CHECK(g->match_labels.at("team") == "a");
    CHECK(g->template_text == "{{ .Name }}.mesh");
}

TEST_CASE("duplicate names in one input")
{
    auto r = load("type: MeshExternalService\nname: a\nspec: {}\n---\n"
                  "type: MeshExternalService\nname: a\nspec: {}\n---\n"
                  "type: MeshExternalService\nname: a\nmesh: other\nspec: {}\n---\n"
                  "type: HostnameGenerator\nname: a\nspec:\n  selector:\n    meshService: {}\n  template: a.mesh\n");
    CHECK(r.documents[0].valid());
    CHECK_FALSE(r.documents[1].valid());
    CHECK(r.documents[2].valid());
    CHECK(r.documents[3].valid());
    CHECK(has_error(r, "name", "duplicate MeshExternalService default/a, first defined at test.yaml:1:1"));
}

TEST_CASE("HostnameGenerator selector and template checks")
{
    auto gen = [](const std::string& spec) {
        return load("type: HostnameGenerator\nname: g\nmesh: default\nspec:\n" + spec);
    };
    CHECK_VALID(gen("  selector:\n    meshExternalService:\n      matchLabels: {}\n  template: \"{{ .Name }}.mesh\"\n"));
    CHECK_VALID(gen("  selector:\n    meshService: {}\n  template: \"{{ .Name }}.svc.mesh.local\"\n"));
    CHECK_VALID(gen("  selector:\n    meshMultiZoneService: {}\n  template: \"{{ .Name }}.mzsvc\"\n"));
    CHECK_VALID(gen("  selector:\n    meshExternalService: {}\n  template: \"{{ label \\\"team\\\" }}.{{ .Mesh }}\"\n"));

    std::string one_selector = "exact one selector (meshService, meshExternalService) must be defined";
    CHECK(has_error(gen("  template: \"{{ .Name }}.mesh\"\n"), "spec.selector", one_selector));
    CHECK(has_error(gen("  selector:\n    meshService: {}\n    meshExternalService: {}\n  template: a\n"),
                    "spec.selector", one_selector));
    CHECK(has_error(gen("  selector:\n    meshService: {}\n  template: \"\"\n"), "spec.template", "must not be empty"));
    CHECK(has_error(gen("  selector:\n    meshService: {}\n"), "spec.template", "must not be empty"));
    CHECK(has_error(gen("  selector:\n    meshService: {}\n  template: \"{{ .Name[4 }}.mesh\"\n"), "spec.template",
                    "couldn't parse template: template: :1: bad character U+005B '['"));
    CHECK(has_error(gen("  selector:\n    meshService: {}\n  template: \"{{ lower .Name }}.mesh\"\n"), "spec.template",
                    "couldn't parse template: template: :1: function \"lower\" not defined"));

    std::string dns = std::string(" which is not a valid DNS name: ") + std::string(conf::rfc1123_subdomain_message);
    auto renders = [&](const std::string& tmpl, const std::string& out) {
        auto r = gen("  selector:\n    meshService: {}\n  template: \"" + tmpl + "\"\n");
        INFO(tmpl);
        CHECK(has_error(r, "spec.template", "template renders to \"" + out + "\"" + dns));
    };
    renders("{{ .Name }}.MESH", "name.MESH");
    renders(".{{ .Name }}.mesh", ".name.mesh");
    renders("{{ .Name }}..mesh", "name..mesh");
    renders("{{ .Name }}_x.mesh", "name_x.mesh");
}

TEST_CASE("documents without a known kind")
{
    auto no_kind = load("name: x\nspec: {}\n");
    REQUIRE(no_kind.documents.size() == 1);
    CHECK_FALSE(no_kind.documents[0].kind_known);
    CHECK(has_error(no_kind, "", "a resource needs \"type\" (Universal shape) or \"kind\" (Kubernetes shape)"));
    CHECK(has_error(load("type: MeshService\nname: x\n"), "type",
                    "unknown kind \"MeshService\" (expected MeshExternalService, HostnameGenerator or Secret)"));
    CHECK(has_error(load("- a\n- b\n"), "", "a resource must be a mapping with \"type\" (Universal) or \"kind\" (Kubernetes)"));
    CHECK(messages(load("just text\n")).at(0) ==
          "test.yaml:1:1: a resource must be a mapping with \"type\" (Universal) or \"kind\" (Kubernetes)");
}

TEST_CASE("unknown and duplicate fields, wrong YAML types")
{
    auto r = load("type: MeshExternalService\nname: a\nspec:\n  match:\n    port: 80\n    port: 81\n  endpoint: []\n");
    CHECK(has_error(r, "spec.match.port", "duplicate field \"port\""));
    CHECK(has_error(r, "spec.endpoint", "unknown field \"endpoint\""));
    CHECK(has_error(load("type: MeshExternalService\nname: a\nspec: [1]\n"), "spec", "must be a mapping (key: value pairs)"));
    CHECK(has_error(load("type: MeshExternalService\nname: a\nlabels: [a]\nspec: {}\n"), "labels",
                    "must be a mapping of strings, got a list"));
    CHECK(has_error(load("type: MeshExternalService\nname: {a: b}\nspec: {}\n"), "name", "must be a string, got a mapping"));
    CHECK(has_error(load("type: MeshExternalService\nname: a\nspec:\n  tls:\n    enabled: \"true\"\n"), "spec.tls.enabled",
                    "must be a boolean (true or false), got \"true\""));
    CHECK(has_error(load("type: MeshExternalService\nname: a\nmesh: Bad_Mesh\nspec: {}\n"), "mesh",
                    std::string(conf::rfc1123_subdomain_message)));
}
