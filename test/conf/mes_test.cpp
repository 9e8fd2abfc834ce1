// MeshExternalService validation, rule by rule, with Kuma's golden cases re-created.
#include "test/conf/support.hpp"
#include "test/support/certs.hpp"

using namespace test_support;

namespace {

std::string mes(const std::string& spec, const std::string& name = "example")
{
    return "type: MeshExternalService\nname: " + name + "\nmesh: default\nspec:\n" + spec;
}

}  // namespace

TEST_CASE("minimal valid MES gets the defaults")
{
    auto r = load(mes("  match:\n    type: HostnameGenerator\n    port: 9000\n    protocol: tcp\n"
                      "  endpoints:\n    - address: 1.1.1.1\n      port: 12345\n"));
    CHECK_VALID(r);
    const auto& m = only_mes(r);
    CHECK(m.port == 9000);
    CHECK(m.protocol == conf::Protocol::tcp);
    REQUIRE(m.endpoints.size() == 1);
    CHECK(m.endpoints[0].kind == conf::AddressKind::ipv4);
    CHECK(m.endpoints[0].port == 12345);
    CHECK(m.endpoints[0].priority == 0);
    CHECK_FALSE(m.tls.has_value());
}

TEST_CASE("match may be left out: type defaults, every port matches")
{
    auto r = load(mes("  endpoints:\n    - address: example.com\n"));
    CHECK_VALID(r);
    const auto& m = only_mes(r);
    CHECK_FALSE(m.port.has_value());
    CHECK(m.protocol == conf::Protocol::tcp);
    CHECK_FALSE(m.endpoints[0].port.has_value());
    CHECK(m.endpoints[0].kind == conf::AddressKind::hostname);
}

TEST_CASE("full valid MES with every field")
{
    auto ca = make_self_signed("ca.example");
    auto client = make_self_signed("client.example");
    std::string yaml = mes(
        "  match:\n    type: HostnameGenerator\n    port: 443\n    protocol: http2\n"
        "  endpoints:\n"
        "    - address: 1.1.1.1\n      port: 12345\n      priority: 0\n"
        "    - address: 2001:db8::1\n      port: 443\n      priority: 1\n"
        "    - address: example.com\n      port: 80\n      priority: 128\n"
        "    - address: unix:///tmp/example.sock\n"
        "  tls:\n    enabled: true\n    version:\n      min: TLS12\n      max: TLS13\n"
        "    allowRenegotiation: true\n"
        "    verification:\n      mode: SkipCA\n      serverName: example.com\n"
        "      subjectAltNames:\n        - type: Exact\n          value: example.com\n"
        "        - type: Prefix\n          value: \"spiffe://example.local/ns/local\"\n"
        "        - value: default-exact.example.com\n"
        "      caCert:\n        inline: " + conf::base64_encode(ca.cert_pem) + "\n"
        "      clientCert:\n        secret: client-cert\n"
        "      clientKey:\n        inlineString: |\n" +
        [&] {
            std::string indented;
            std::string line;
            for (char c : client.key_pem) {
                line += c;
                if (c == '\n') { indented += "          " + line; line.clear(); }
            }
            return indented;
        }() +
        "---\ntype: Secret\nname: client-cert\nmesh: default\ndata: " + conf::base64_encode(client.cert_pem) + "\n");
    auto r = load(yaml);
    CHECK_VALID(r);
    REQUIRE(r.documents.size() == 2);
    const auto& m = *r.documents[0].resource.mes();
    CHECK(m.protocol == conf::Protocol::http2);
    REQUIRE(m.endpoints.size() == 4);
    CHECK(m.endpoints[1].kind == conf::AddressKind::ipv6);
    CHECK(m.endpoints[2].priority == 128);
    CHECK(m.endpoints[3].kind == conf::AddressKind::unix_socket);
    CHECK(m.endpoints[3].unix_path() == "/tmp/example.sock");
    REQUIRE(m.tls.has_value());
    const auto& tls = *m.tls;
    CHECK(tls.enabled);
    CHECK(tls.min == conf::TlsVersion::tls12);
    CHECK(tls.max == conf::TlsVersion::tls13);
    CHECK(tls.allow_renegotiation);
    CHECK(tls.mode == conf::VerificationMode::skip_ca);
    CHECK(tls.server_name == "example.com");
    REQUIRE(tls.subject_alt_names.size() == 3);
    CHECK(tls.subject_alt_names[1].type == conf::SanMatch::prefix);
    CHECK(tls.subject_alt_names[2].type == conf::SanMatch::exact);
    REQUIRE(tls.ca_cert.has_value());
    CHECK(tls.ca_cert->type == conf::DataSource::Type::inline_bytes);
    CHECK(tls.ca_cert->value == ca.cert_pem);
    CHECK(tls.client_cert->type == conf::DataSource::Type::secret);
    CHECK(tls.client_cert->value == "client-cert");
    CHECK(tls.client_key->type == conf::DataSource::Type::inline_string);
    CHECK(tls.client_key->value == client.key_pem);
}

TEST_CASE("full invalid MES reports every violation with its position")
{
    std::string yaml = mes(
        "  match:\n"
        "    type: UnknownMatchType\n"       // 6
        "    port: 0\n"                      // 7
        "    protocol: unknown\n"            // 8
        "  endpoints:\n"
        "    - address: 1.1.1.1\n"
        "      port: \"80\"\n"               // 11
        "    - address: 1.1.1.2\n"
        "      port: 999999\n"               // 13
        "    - address: example.com\n"
        "      priority: 129\n"              // 15
        "    - address: unix:///tmp/example.sock\n"
        "      port: 80\n"                   // 17
        "    - port: 90\n"                   // 18
        "    - address: \"not a host!\"\n"   // 19
        "  tls:\n"
        "    enabled: maybe\n"               // 21
        "    version:\n"
        "      min: TLS15\n"                 // 23
        "      max: TLS16\n"                 // 24
        "    verification:\n"
        "      serverName: not[]valid\n"     // 26
        "      mode: Unknown\n"              // 27
        "      subjectAltNames:\n"
        "        - type: Regex\n"            // 29
        "          value: .*.example.com\n"
        "      clientCert:\n"
        "        secret: \"123\"\n"          // 32
        "      caCert:\n"
        "        inline: x\n"                // 34
        "        inlineString: y\n"
        "  extra: 1\n",                      // 36
        "Full_Invalid");
    auto r = load(yaml);
    CHECK_FALSE(r.ok());
    auto all = errors(r);
    INFO(Catch::Detail::stringify(messages(r)));
    CHECK(all.size() >= 15);
    CHECK(has_error(r, "name", std::string(conf::rfc1035_label_message)));
    CHECK(has_error(r, "spec.match.type", "unrecognized type 'UnknownMatchType' - only 'HostnameGenerator' is supported"));
    CHECK(has_error(r, "spec.match.port", "port must be a valid (1-65535)"));
    CHECK(has_error(r, "spec.match.protocol", "\"protocol\" must be one of [\"tcp\", \"grpc\", \"http\", \"http2\"]"));
    CHECK(has_error(r, "spec.endpoints[0].port", "must be an integer, got string \"80\""));
    CHECK(has_error(r, "spec.endpoints[1].port", "port must be a valid (1-65535)"));
    CHECK(has_error(r, "spec.endpoints[2].priority", "priority must be in the range 0-128"));
    CHECK(has_error(r, "spec.endpoints[3].port", "must not be defined when endpoint is a unix path"));
    CHECK(has_error(r, "spec.endpoints[4].address", "address has to be a valid IP or hostname"));
    CHECK(has_error(r, "spec.endpoints[5].address", "address has to be a valid IP or hostname"));
    CHECK(has_error(r, "spec.tls.enabled", "must be a boolean (true or false), got \"maybe\""));
    CHECK(has_error(r, "spec.tls.version.min", "\"min\" must be one of [\"TLSAuto\", \"TLS10\", \"TLS11\", \"TLS12\", \"TLS13\"]"));
    CHECK(has_error(r, "spec.tls.version.max", "\"max\" must be one of [\"TLSAuto\", \"TLS10\", \"TLS11\", \"TLS12\", \"TLS13\"]"));
    CHECK(has_error(r, "spec.tls.verification.serverName", "must be a valid DNS name"));
    CHECK(has_error(r, "spec.tls.verification.mode", "\"mode\" must be one of [\"SkipSAN\", \"SkipCA\", \"SkipAll\", \"Secured\"]"));
    CHECK(has_error(r, "spec.tls.verification.subjectAltNames[0].type", "\"type\" must be one of [\"Prefix\", \"Exact\"]"));
    CHECK(has_error(r, "spec.tls.verification.clientKey", "must be defined when clientCert is defined"));
    // A missing Secret is not an error (Kuma accepts it): a warning.
    CHECK(has_warning(r, "spec.tls.verification.clientCert.secret", "secret \"123\" not found in mesh \"default\""));
    CHECK(has_error(r, "spec.tls.verification.caCert", "must define only one of inline, inlineString, secret"));
    CHECK(has_error(r, "spec.extra", "unknown field \"extra\""));

    // Positions point at the offending value, and errors come in file order.
    auto lines = messages(r);
    CHECK(std::ranges::find(lines, "test.yaml:7:11: MeshExternalService default/Full_Invalid: spec.match.port: "
                                   "port must be a valid (1-65535)") != lines.end());
    CHECK(std::ranges::find(lines, "test.yaml:36:3: MeshExternalService default/Full_Invalid: spec.extra: "
                                   "unknown field \"extra\"") != lines.end());
    for (std::size_t i = 1; i < all.size(); ++i) CHECK(all[i - 1]->mark.line <= all[i]->mark.line);
}

TEST_CASE("min TLS version above max")
{
    auto r = load(mes("  tls:\n    version:\n      min: TLS13\n      max: TLS12\n"));
    CHECK(has_error(r, "spec.tls.version.min", "min version must be lower than max"));
    CHECK(errors(r).size() == 1);
    CHECK_VALID(load(mes("  tls:\n    version:\n      min: TLS12\n      max: TLS12\n")));
    CHECK_VALID(load(mes("  tls:\n    version:\n      min: TLS13\n      max: TLSAuto\n")));
}

TEST_CASE("MES names: 63 characters, 64 characters, not RFC 1035")
{
    CHECK_VALID(load(mes("  endpoints: []\n", std::string(63, 'a'))));
    auto too_long = load(mes("  endpoints: []\n", std::string(64, 'a')));
    CHECK(has_error(too_long, "name", "must be no more than 63 characters"));
    auto not_1035 = load(mes("  endpoints: []\n", "1external.service"));
    CHECK(has_error(not_1035, "name", std::string(conf::rfc1035_label_message)));
    auto empty = load(mes("  endpoints: []\n", "\"\""));
    CHECK(has_error(empty, "name", "must not be empty"));
}

TEST_CASE("clientCert and clientKey only together")
{
    auto pair = make_self_signed("client");
    std::string cert = "      clientCert:\n        inline: " + conf::base64_encode(pair.cert_pem) + "\n";
    std::string key = "      clientKey:\n        inline: " + conf::base64_encode(pair.key_pem) + "\n";
    auto no_key = load(mes("  tls:\n    verification:\n" + cert));
    CHECK(has_error(no_key, "spec.tls.verification.clientKey", "must be defined when clientCert is defined"));
    auto no_cert = load(mes("  tls:\n    verification:\n" + key));
    CHECK(has_error(no_cert, "spec.tls.verification.clientCert", "must be defined when clientKey is defined"));
    CHECK_VALID(load(mes("  tls:\n    verification:\n" + cert + key)));

    auto other = make_self_signed("other");
    std::string other_key = "      clientKey:\n        inline: " + conf::base64_encode(other.key_pem) + "\n";
    auto mismatch = load(mes("  tls:\n    verification:\n" + cert + other_key));
    CHECK_VALID(mismatch);  // not Kuma's to check: a warning, and the TLS condition says it
    CHECK(has_warning(mismatch, "spec.tls.verification.clientKey", "private key does not match the client certificate"));
}

TEST_CASE("inline certificates and keys that OpenSSL cannot load are warnings as in Kuma")
{
    auto bad_cert = load(mes("  tls:\n    verification:\n      caCert:\n        inline: dGVzdA==\n"));
    CHECK_VALID(bad_cert);
    CHECK(has_warning(bad_cert, "spec.tls.verification.caCert.inline",
                    "not a PEM certificate (no \"-----BEGIN CERTIFICATE-----\" block)"));
    auto garbled = load(mes("  tls:\n    verification:\n      caCert:\n        inlineString: |\n"
                            "          -----BEGIN CERTIFICATE-----\n          AAAA\n          -----END CERTIFICATE-----\n"));
    CHECK_VALID(garbled);
    CHECK(has_warning(garbled, "spec.tls.verification.caCert.inlineString", "not a valid PEM certificate"));
    auto bad_b64 = load(mes("  tls:\n    verification:\n      caCert:\n        inline: \"%%%\"\n"));
    CHECK(has_error(bad_b64, "spec.tls.verification.caCert.inline", "must be valid base64"));
    auto no_source = load(mes("  tls:\n    verification:\n      caCert: {}\n"));
    // Neither shape: read as Kuma's, whose message it gets word for word.
    CHECK(has_error(no_source, "spec.tls.verification.caCert.type", " must be one of: EnvVar, InsecureInline, File, Secret"));
    auto cert_as_key = make_self_signed("k");
    auto wrong_role = load(mes("  tls:\n    verification:\n      clientCert:\n        inline: " +
                               conf::base64_encode(cert_as_key.cert_pem) + "\n      clientKey:\n        inline: " +
                               conf::base64_encode(cert_as_key.cert_pem) + "\n"));
    CHECK_VALID(wrong_role);
    CHECK(has_warning(wrong_role, "spec.tls.verification.clientKey.inline", "not a PEM private key"));
}

TEST_CASE("an expired certificate is a warning, not an error")
{
    auto expired = make_self_signed("old", -30, -1);
    auto r = load(mes("  tls:\n    verification:\n      caCert:\n        inline: " +
                      conf::base64_encode(expired.cert_pem) + "\n"));
    CHECK_VALID(r);
    REQUIRE(r.documents[0].diagnostics.size() == 1);
    const auto& d = r.documents[0].diagnostics[0];
    CHECK(d.severity == conf::Severity::warning);
    CHECK(d.path == "spec.tls.verification.caCert.inline");
    CHECK_THAT(d.message, Catch::StartsWith("certificate expired on "));
    CHECK_THAT(d.format(), Catch::Contains(": warning: MeshExternalService default/example: "));
    auto future = make_self_signed("new", 10, 20);
    auto f = load(mes("  tls:\n    verification:\n      caCert:\n        inline: " +
                      conf::base64_encode(future.cert_pem) + "\n"));
    CHECK_VALID(f);
    REQUIRE(f.documents[0].diagnostics.size() == 1);
    CHECK_THAT(f.documents[0].diagnostics[0].message, Catch::StartsWith("certificate is not valid before "));
}

TEST_CASE("endpoints with priorities")
{
    auto r = load(mes("  endpoints:\n"
                      "    - address: 1.1.1.1\n      port: 80\n      priority: 0\n"
                      "    - address: 1.1.1.2\n      port: 80\n      priority: 1\n"
                      "    - address: 1.1.1.3\n      port: 80\n      priority: 128\n"));
    CHECK_VALID(r);
    const auto& m = only_mes(r);
    CHECK(m.endpoints[0].priority == 0);
    CHECK(m.endpoints[1].priority == 1);
    CHECK(m.endpoints[2].priority == 128);
    CHECK(has_error(load(mes("  endpoints:\n    - address: 1.1.1.1\n      priority: -1\n")),
                    "spec.endpoints[0].priority", "priority must be in the range 0-128"));
}

TEST_CASE("endpoint addresses: IPs, names, unix sockets")
{
    CHECK_VALID(load(mes("  endpoints:\n    - address: \"::1\"\n      port: 1\n    - address: tcpbin.com\n      port: 65535\n")));
    CHECK(has_error(load(mes("  endpoints:\n    - address: unix://relative/path\n")),
                    "spec.endpoints[0].address", "address has to be a valid IP or hostname or a unix path (unix:///absolute/path)"));
    CHECK(has_error(load(mes("  endpoints:\n    - address: unix:///" + std::string(120, 'x') + "\n")),
                    "spec.endpoints[0].address", "unix socket path is longer than 107 bytes"));
    CHECK(has_error(load(mes("  endpoints:\n    - address: 1.2.3.4.5\n")),
                    "spec.endpoints[0].address", "address has to be a valid IP or hostname"));
    CHECK(has_error(load(mes("  endpoints:\n    - address: example.com\n      port: 0\n")),
                    "spec.endpoints[0].port", "port must be a valid (1-65535)"));
    CHECK(has_error(load(mes("  endpoints:\n    - address: example.com\n      port: 99999999999999999999999\n")),
                    "spec.endpoints[0].port", "port must be a valid (1-65535)"));
    CHECK(has_error(load(mes("  endpoints:\n    - address: example.com\n      port: [80]\n")),
                    "spec.endpoints[0].port", "must be an integer, got a list"));
    CHECK(has_error(load(mes("  endpoints: example.com\n")), "spec.endpoints", "must be a list"));
    CHECK(has_error(load(mes("  endpoints:\n    - address: example.com\n      weight: 3\n")),
                    "spec.endpoints[0].weight", "unknown field \"weight\""));
}

TEST_CASE("verification fields")
{
    CHECK(has_error(load(mes("  tls:\n    verification:\n      serverName: 10.0.0.1\n")),
                    "spec.tls.verification.serverName", "must be a valid DNS name"));
    CHECK(has_error(load(mes("  tls:\n    verification:\n      subjectAltNames:\n        - type: Exact\n")),
                    "spec.tls.verification.subjectAltNames[0].value", "must be defined"));
    CHECK(has_error(load(mes("  tls:\n    verification:\n      clientCert:\n        secret: Not_A_Name\n      clientKey:\n        secret: k\n")),
                    "spec.tls.verification.clientCert.secret", std::string(conf::rfc1123_subdomain_message)));
    for (auto mode : {"Secured", "SkipSAN", "SkipCA", "SkipAll"})
        CHECK_VALID(load(mes(std::string("  tls:\n    verification:\n      mode: ") + mode + "\n")));
    for (auto protocol : {"tcp", "grpc", "http", "http2"})
        CHECK_VALID(load(mes(std::string("  match:\n    protocol: ") + protocol + "\n")));
}
