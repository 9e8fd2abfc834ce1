// Kuma's current data source shapes through mesctl and mesd: shown back as written, and a MES
// applied before its Secret (or with PEM that does not parse) accepted with a warning, its
// TLSReady condition saying why, its connections refused until the Secret arrives.
#include "conf/conf.hpp"
#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/text.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <sstream>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string openssl = "/usr/bin/openssl";
const std::string dig = "/usr/bin/dig";

const std::string generator =
    "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

std::string secret_doc(const std::string& name, const std::string& bytes)
{
    return "---\ntype: Secret\nname: " + name + "\ndata: " + conf::base64_encode(bytes) + "\n";
}

// A MES originating TLS to 127.0.0.1:`port` (serverName api.test), `verification` being the
// lines of its data sources (indented 6).
std::string tls_mes(const std::string& name, int match_port, int port, const std::string& verification)
{
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(match_port) +
           ", protocol: tcp}\n  endpoints: [{address: 127.0.0.1, port: " + std::to_string(port) +
           "}]\n  tls:\n    enabled: true\n    verification:\n      serverName: api.test\n" + verification;
}

const std::string kuma_ca_ref = "      caCert:\n        type: Secret\n        secretRef:\n          kind: Secret\n"
                                "          name: backend-ca\n";

}  // namespace

TEST_CASE("mesctl get -o yaml shows each data source in the shape it was written in")
{
    Dir dir;
    std::string config = dir.write("mesd.yaml", "dataDir: " + (dir.path / "data").string() +
                                                    "\nvip:\n  ipv4: 127.242.0.0/16\n");
    auto ctl = [&](std::vector<std::string> args) { return mesctl_with(config, std::move(args)); };
    auto ca = make_ca("mesd test CA");
    auto client = make_leaf(ca, "client", {"DNS:client.test"}, -1, 365, true);
    std::string kuma = tls_mes("kuma", 7400, 7443,
                               "      caCert:\n        type: InsecureInline\n        insecureInline:\n"
                               "          value: |\n" + indent(ca.cert_pem, 12) +
                               "      clientCert:\n        type: Secret\n        secretRef:\n          kind: Secret\n"
                               "          name: client-cert\n"
                               "      clientKey:\n        type: InsecureInline\n        insecureInline:\n"
                               "          value: |\n" + indent(client.key_pem, 12));
    std::string seed = tls_mes("seed", 7400, 7443,
                               "      caCert:\n        inline: " + conf::base64_encode(ca.cert_pem) +
                               "\n      clientCert:\n        secret: client-cert\n"
                               "      clientKey:\n        inlineString: |\n" + indent(client.key_pem, 10));
    auto applied = ctl({"apply", "-f", dir.write("in.yaml", kuma + seed + secret_doc("client-cert", client.cert_pem))});
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    CHECK(applied.err.empty());

    auto k = ctl({"get", "mes", "kuma", "-o", "yaml"});
    REQUIRE(k.exit_code == 0);
    INFO(k.out);
    CHECK_THAT(k.out, Catch::Contains("caCert:\n        type: InsecureInline\n        insecureInline:\n          value: "));
    CHECK_THAT(k.out, Catch::Contains("BEGIN CERTIFICATE"));
    CHECK_THAT(k.out, Catch::Contains("clientCert:\n        type: Secret\n        secretRef:\n          kind: Secret\n"
                                      "          name: client-cert\n"));
    // A client key is never shown, whatever its shape.
    CHECK_THAT(k.out, Catch::Contains("clientKey:\n        type: InsecureInline\n        insecureInline:\n"
                                      "          value: <redacted>\n"));
    CHECK_THAT(k.out, !Catch::Contains("PRIVATE KEY"));
    CHECK_THAT(k.out, !Catch::Contains("inlineString"));

    auto s = ctl({"get", "mes", "seed", "-o", "yaml"});
    REQUIRE(s.exit_code == 0);
    INFO(s.out);
    CHECK_THAT(s.out, Catch::Contains("caCert:\n        inline: " + conf::base64_encode(ca.cert_pem)));
    CHECK_THAT(s.out, Catch::Contains("clientCert:\n        secret: client-cert\n"));
    CHECK_THAT(s.out, Catch::Contains("clientKey:\n        inlineString: <redacted>\n"));
    CHECK_THAT(s.out, !Catch::Contains("secretRef"));
    // Both are usable: the condition says so.
    CHECK_THAT(s.out, Catch::Contains("type: TLSReady"));
    CHECK_THAT(s.out, Catch::Contains("reason: Ready"));

    // The same input again changes nothing; the other shape of the same bytes is a change,
    // and is then shown.
    auto again = ctl({"apply", "-f", dir.path.string() + "/in.yaml"});
    CHECK_THAT(again.out, Catch::Contains("unchanged MeshExternalService default/kuma"));
    auto reshaped = ctl({"apply", "-f", dir.write("re.yaml", tls_mes("kuma", 7400, 7443,
                                                                     "      caCert:\n        inlineString: |\n" +
                                                                         indent(ca.cert_pem, 10)))});
    CHECK_THAT(reshaped.out, Catch::Contains("configured MeshExternalService default/kuma"));
    auto shown = ctl({"get", "mes", "kuma", "-o", "json"}).out;
    CHECK_THAT(shown, Catch::Contains("\"inlineString\": \"-----BEGIN CERTIFICATE-----"));
    CHECK_THAT(shown, !Catch::Contains("InsecureInline"));
}

TEST_CASE("a MES applied before its Secret is accepted and refuses connections until the Secret arrives")
{
    Dir dir;
    auto ca = make_ca("mesd test CA");
    auto leaf = make_leaf(ca, "api.test", {"DNS:api.test", "IP:127.0.0.1"});
    int backend_port = free_tcp_port();
    Child backend({openssl, "s_server", "-accept", "127.0.0.1:" + std::to_string(backend_port), "-cert",
                   dir.write("leaf.crt", leaf.cert_pem), "-key", dir.write("leaf.key", leaf.key_pem), "-rev", "-quiet"},
                  (dir.path / "backend.out").string(), (dir.path / "backend.err").string());
    REQUIRE(eventually([&] { return accepting("127.0.0.1", backend_port); }));

    MesdOptions options;
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);
    auto ctl = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {MESCTL_PATH, "--config", mesd.config()});
        return run(args);
    };
    auto vip = [&](const std::string& name) {
        auto out = output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), name + ".mesh", "+short"});
        while (!out.empty() && out.back() == '\n') out.pop_back();
        return out;
    };

    // `locked` names a Secret that does not exist yet; `garbled` has a CA that is no PEM.
    auto applied = ctl({"apply", "-f",
                        dir.write("mes.yaml", generator + tls_mes("locked", 7100, backend_port, kuma_ca_ref) +
                                                  tls_mes("garbled", 7401, backend_port,
                                                          "      caCert:\n        type: InsecureInline\n"
                                                          "        insecureInline:\n          value: not a certificate\n"))});
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    CHECK_THAT(applied.out, Catch::Contains("created MeshExternalService default/locked"));
    CHECK_THAT(applied.err, Catch::Contains("mes.yaml:21:17: warning: MeshExternalService default/locked: "
                                            "spec.tls.verification.caCert.secretRef.name: secret \"backend-ca\" not "
                                            "found in mesh \"default\"; TLS connections to this service are refused "
                                            "until this is fixed"));
    CHECK_THAT(applied.err, Catch::Contains("warning: MeshExternalService default/garbled: "
                                            "spec.tls.verification.caCert.insecureInline.value: not a PEM certificate"));

    // The condition says why, in every view.
    auto yaml = ctl({"get", "mes", "locked", "-o", "yaml"}).out;
    INFO(yaml);
    CHECK_THAT(yaml, Catch::Contains("conditions:\n    - type: TLSReady\n"));
    CHECK_THAT(yaml, Catch::Contains("reason: SecretNotFound\n"));
    CHECK_THAT(yaml, Catch::Contains("message: \"caCert: secret \\\"backend-ca\\\" not found\""));
    CHECK_THAT(ctl({"get", "mes"}).out, Catch::Contains("SecretNotFound(tls)"));
    CHECK_THAT(ctl({"get", "mes"}).out, Catch::Contains("InvalidCertificate(tls)"));
    auto inspected = ctl({"inspect", "locked"}).out;
    CHECK_THAT(inspected, Catch::Contains("condition:   tls: TLSReady=False SecretNotFound: caCert: secret \"backend-ca\" not found"));
    CHECK_THAT(inspected, Catch::Contains("(refused: TLS cannot be used, SecretNotFound)"));

    // mesd refuses the connections rather than carry them in the clear.
    std::string locked_vip, garbled_vip;
    REQUIRE(eventually([&] { return !(locked_vip = vip("locked")).empty() && !(garbled_vip = vip("garbled")).empty(); }, 10s));
    REQUIRE(eventually([&] {
        return mesd.admin_get("/config").find("\"tlsError\": \"tls.verification.caCert: Secret backend-ca not found\"") !=
               std::string::npos;
    }, 10s));
    CHECK(say(locked_vip, 7100, "hello\n").empty());
    CHECK(say(garbled_vip, 7401, "hello\n").empty());

    // The Secret arrives: the condition clears and connections go through, with no restart.
    auto secret = ctl({"apply", "-f", dir.write("secret.yaml", secret_doc("backend-ca", ca.cert_pem))});
    INFO(secret.err);
    REQUIRE(secret.exit_code == 0);
    CHECK(secret.err.empty());
    CHECK(eventually([&] { return say(locked_vip, 7100, "hello\n") == "olleh\n"; }, 10s));
    yaml = ctl({"get", "mes", "locked", "-o", "yaml"}).out;
    CHECK_THAT(yaml, Catch::Contains("reason: Ready\n"));
    CHECK_THAT(ctl({"get", "mes"}).out, !Catch::Contains("SecretNotFound"));
    // The other stays refused: its own PEM is still no certificate.
    CHECK(say(garbled_vip, 7401, "hello\n").empty());
    CHECK_THAT(ctl({"get", "mes", "garbled", "-o", "yaml"}).out, Catch::Contains("reason: InvalidCertificate\n"));
}
