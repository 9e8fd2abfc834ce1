// Kuma's current MeshExternalService API: its validator's table (test/conf/kuma/cases.yaml)
// run through mesd's loader, the data source shapes of Kuma and of the seed side by side, and
// the TLS condition that stands in for what Kuma does not validate (Secrets, PEM).
#include "test/conf/kuma_tables.hpp"
#include "test/conf/support.hpp"
#include "test/support/text.hpp"
#include "test/support/certs.hpp"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <sstream>

using namespace test_support;

namespace {

std::string read_text(const std::filesystem::path& p)
{
    std::ifstream in(p);
    REQUIRE(in.good());
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// Kuma's expected violations for `file`: none when it has no .output.yaml (Kuma accepts it).
std::vector<Violation> kuma_output(const std::string& file)
{
    auto p = kuma_dir / (file + ".output.yaml");
    if (!std::filesystem::exists(p)) return {};
    return violations_of(YAML::LoadFile(p.string())["violations"]);
}

// The spec of a Kuma testdata input as a Universal document of mesd's; the spec starts on
// line spec_first_line.
constexpr int spec_first_line = 5;
std::string universal_document(const std::string& name, const std::string& spec)
{
    std::string out = "type: MeshExternalService\nname: \"" + name + "\"\nmesh: default\nspec:\n";
    std::istringstream lines(spec);
    for (std::string line; std::getline(lines, line);) out += "  " + line + "\n";
    return out;
}

std::string mes(const std::string& spec) { return "type: MeshExternalService\nname: example\nspec:\n" + spec; }

std::string tls_with(const std::string& verification, bool enabled = true)
{
    return std::string("  endpoints:\n    - address: example.com\n      port: 443\n  tls:\n    enabled: ") +
           (enabled ? "true" : "false") + "\n    verification:\n" + verification;
}

}  // namespace

TEST_CASE("Kuma's MeshExternalService validator table: same field paths and messages")
{
    auto cases = YAML::LoadFile((kuma_dir / "cases.yaml").string());
    REQUIRE(cases.IsSequence());
    REQUIRE(cases.size() >= 13);  // Kuma's table has 13 entries; every one is here
    std::size_t from_kuma = 0, differences = 0;
    for (const auto& c : cases) {
        auto file = c["file"].as<std::string>();
        auto input = read_text(kuma_dir / (file + ".input.yaml"));
        auto kuma = kuma_output(file);
        bool differs = c["difference"].IsDefined();
        from_kuma += c["origin"].as<std::string>() == "kuma-testdata";
        differences += differs;
        // A deliberate difference says what mesd does instead, and it must differ.
        auto expected = differs ? violations_of(c["mesd"]) : kuma;
        if (differs) REQUIRE(c["mesd"].IsSequence());

        std::string shown = (kuma_dir / (file + ".input.yaml")).string();
        auto r = conf::load_text(universal_document(c["name"].as<std::string>(), input), shown);
        std::vector<Violation> got;
        for (const auto* d : errors(r)) {
            got.push_back({d->path, d->message});
            // Every error points into the spec (or at the name) of the document.
            CHECK(d->mark.file == shown);
            CHECK(d->mark.line >= (d->path == "name" ? 2 : spec_first_line));
            CHECK(d->mark.col >= 1);
        }
        std::ranges::sort(got);

        INFO("case: " << c["entry"].as<std::string>() << " (" << file << ")");
        INFO(Catch::Detail::stringify(messages(r)));
        CHECK(got == expected);
        if (differs) CHECK(expected != kuma);
        for (const auto& w : c["warnings"])
            CHECK(std::ranges::any_of(r.documents.front().diagnostics, [&](const conf::Diagnostic& d) {
                return d.severity == conf::Severity::warning && d.path == w.as<std::string>();
            }));
    }
    CHECK(from_kuma == 13);
    CHECK(differences >= 6);
}

TEST_CASE("Kuma's errors carry the position of the field they are about")
{
    auto input = read_text(kuma_dir / "full-invalid.input.yaml");
    auto r = load(universal_document("external-service", input));
    // `type: File` of caCert is line 22 of the input, its value at column 13 (15 in the document).
    auto lines = messages(r);
    INFO(Catch::Detail::stringify(lines));
    CHECK(std::ranges::find(lines, "test.yaml:" + std::to_string(22 + spec_first_line - 1) +
                                       ":15: MeshExternalService default/external-service: "
                                       "spec.tls.verification.caCert.type: File must be one of: Secret, "
                                       "InsecureInline") != lines.end());
}

TEST_CASE("both data source shapes decode to the same bytes and remember their shape")
{
    auto pair = make_self_signed("client");
    std::string kuma = "      caCert:\n        type: InsecureInline\n        insecureInline:\n          value: |\n" +
                       indent(pair.cert_pem, 12) +
                       "      clientCert:\n        type: Secret\n        secretRef:\n          kind: Secret\n"
                       "          name: cert\n"
                       "      clientKey:\n        type: Secret\n        secretRef:\n          kind: Secret\n"
                       "          name: key\n";
    std::string seed = "      caCert:\n        inline: " + conf::base64_encode(pair.cert_pem) +
                       "\n      clientCert:\n        secret: cert\n      clientKey:\n        inlineString: |\n" +
                       indent(pair.key_pem, 10);
    conf::LoadOptions store;
    store.secret_exists = [](std::string_view, std::string_view) { return true; };

    auto k = load(mes(tls_with(kuma)), store);
    CHECK_VALID(k);
    const auto& kt = *only_mes(k).tls;
    using Type = conf::DataSource::Type;
    using Shape = conf::DataSource::Shape;
    CHECK(kt.ca_cert == conf::DataSource{Type::inline_string, pair.cert_pem, Shape::kuma});
    CHECK(kt.client_cert == conf::DataSource{Type::secret, "cert", Shape::kuma});
    CHECK(kt.client_key == conf::DataSource{Type::secret, "key", Shape::kuma});
    CHECK(conf::referenced_secrets(only_mes(k)) == std::vector<std::string>{"cert", "key"});

    auto s = load(mes(tls_with(seed)), store);
    CHECK_VALID(s);
    const auto& st = *only_mes(s).tls;
    CHECK(st.ca_cert == conf::DataSource{Type::inline_bytes, pair.cert_pem, Shape::seed});
    CHECK(st.client_cert == conf::DataSource{Type::secret, "cert", Shape::seed});
    CHECK(st.client_key == conf::DataSource{Type::inline_string, pair.key_pem, Shape::seed});

    // Kubernetes' shape reads Kuma's data sources the same way.
    auto kube = load("apiVersion: kuma.io/v1alpha1\nkind: MeshExternalService\nmetadata:\n  name: example\n"
                     "  namespace: kuma-system\n  labels:\n    kuma.io/mesh: default\nspec:\n" + tls_with(kuma), store);
    CHECK_VALID(kube);
    CHECK(only_mes(kube).tls->client_cert == kt.client_cert);

    // One shape per data source: the seed's keys next to Kuma's `type` are unknown fields.
    auto mixed = load(mes(tls_with("      caCert:\n        type: Secret\n        secret: ca\n")), store);
    CHECK(has_error(mixed, "spec.tls.verification.caCert.secret", "unknown field \"secret\""));
    CHECK(has_error(mixed, "spec.tls.verification.caCert.secretRef", "must be defined"));
}

TEST_CASE("a missing Secret or PEM that does not parse is a warning: the MES is valid")
{
    auto missing = load(mes(tls_with("      caCert:\n        type: Secret\n        secretRef:\n          kind: Secret\n"
                                     "          name: ca\n")));
    CHECK_VALID(missing);
    CHECK(has_warning(missing, "spec.tls.verification.caCert.secretRef.name",
                      "secret \"ca\" not found in mesh \"default\"; TLS connections to this service are refused "
                      "until this is fixed"));
    auto garbled = load(mes(tls_with("      caCert:\n        type: InsecureInline\n        insecureInline:\n"
                                     "          value: not a certificate\n")));
    CHECK_VALID(garbled);
    CHECK(has_warning(garbled, "spec.tls.verification.caCert.insecureInline.value", "not a PEM certificate"));
    // With TLS off nothing is refused: the warning says only what is wrong.
    auto off = load(mes(tls_with("      caCert:\n        secret: ca\n", false)));
    CHECK_VALID(off);
    const auto& d = off.documents.front().diagnostics;
    REQUIRE(d.size() == 1);
    CHECK(d[0].message == "secret \"ca\" not found in mesh \"default\"");
}

TEST_CASE("the TLS condition: why a MES's TLS cannot be used with what is stored")
{
    auto pair = make_self_signed("client");
    auto other = make_self_signed("other");
    std::map<std::string, std::string> secrets;
    conf::SecretBytes lookup = [&](std::string_view name) -> std::optional<std::string> {
        auto it = secrets.find(std::string(name));
        if (it == secrets.end()) return std::nullopt;
        return it->second;
    };
    conf::MeshExternalService m;
    m.tls.emplace();
    using Type = conf::DataSource::Type;
    m.tls->client_cert = conf::DataSource{Type::secret, "cert", conf::DataSource::Shape::kuma};
    m.tls->client_key = conf::DataSource{Type::secret, "key", conf::DataSource::Shape::kuma};

    CHECK_FALSE(conf::tls_condition(m, lookup).has_value());  // TLS off: nothing is read
    m.tls->enabled = true;

    auto c = conf::tls_condition(m, lookup);
    REQUIRE(c);
    CHECK(c->type == "TLSReady");
    CHECK(c->status == "False");
    CHECK(c->reason == "SecretNotFound");
    CHECK(c->message == "clientCert: secret \"cert\" not found; clientKey: secret \"key\" not found");

    secrets["cert"] = pair.cert_pem;
    secrets["key"] = "garbage";
    c = conf::tls_condition(m, lookup);
    CHECK(c->reason == "InvalidPrivateKey");
    CHECK_THAT(c->message, Catch::StartsWith("clientKey: secret \"key\": not a PEM private key"));

    secrets["key"] = other.key_pem;
    c = conf::tls_condition(m, lookup);
    CHECK(c->reason == "KeyMismatch");

    secrets["key"] = pair.key_pem;
    c = conf::tls_condition(m, lookup);
    CHECK(c->status == "True");
    CHECK(c->reason == "Ready");
    CHECK(c->message.empty());

    m.tls->ca_cert = conf::DataSource{Type::inline_string, "test", conf::DataSource::Shape::kuma};
    c = conf::tls_condition(m, lookup);
    CHECK(c->status == "False");
    CHECK(c->reason == "InvalidCertificate");
    CHECK_THAT(c->message, Catch::StartsWith("caCert: not a PEM certificate"));
}
