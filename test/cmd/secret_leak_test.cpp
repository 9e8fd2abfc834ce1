// Secret values kept out of every output: a marker planted in a Secret (a working client key
// with the marker in a line before its PEM block), in a Secret that is no PEM at all, and in
// an inline key, then looked for in everything mesd and mesctl print.
#include "conf/conf.hpp"
#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"
#include "test/support/text.hpp"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

const std::string dig = "/usr/bin/dig";

std::string secret_doc(const std::string& name, const std::string& bytes)
{
    return "---\ntype: Secret\nname: " + name + "\ndata: " + conf::base64_encode(bytes) + "\n";
}

std::string tls_mes(const std::string& name, int match_port, int port, const std::string& verification)
{
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(match_port) +
           ", protocol: tcp}\n  endpoints: [{address: 127.0.0.1, port: " + std::to_string(port) +
           "}]\n  tls:\n    enabled: true\n    verification:\n      serverName: api.test\n" + verification;
}

const std::string generator =
    "---\ntype: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

// The longest line of a PEM block's body: key material that must not be printed either.
std::string key_body_line(const std::string& pem)
{
    std::string best, line;
    for (char ch : pem + "\n") {
        if (ch != '\n') {
            line += ch;
            continue;
        }
        if (!line.starts_with("-----") && line.size() > best.size()) best = line;
        line.clear();
    }
    return best;
}

}  // namespace

TEST_CASE("secrets: a planted Secret and inline key appear in no output of mesd or mesctl")
{
    TempDir dir;
    const std::string marker = "PlantedSecretMarker" + std::to_string(::getpid()) + "xQz";
    auto ca = make_ca("leak test CA");
    auto leaf = make_leaf(ca, "api.test", {"DNS:api.test", "IP:127.0.0.1"});
    auto client = make_leaf(ca, "client", {"DNS:client.test"}, -1, 365, true);
    // A working key: text before the BEGIN line is no part of the PEM block.
    const std::string key_bytes = marker + "\n" + client.key_pem;
    const std::string garbled = "-----BEGIN PRIVATE KEY-----\n" + marker + "\n-----END PRIVATE KEY-----\n";
    // What must appear nowhere: the marker, the Secrets as stored (base64), the key itself.
    const std::vector<std::string> planted = {marker, conf::base64_encode(key_bytes), conf::base64_encode(garbled),
                                              key_body_line(client.key_pem)};

    int backend_port = free_tcp_port();
    Child backend({"/usr/bin/openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(backend_port), "-cert",
                   dir.write("leaf.crt", leaf.cert_pem), "-key", dir.write("leaf.key", leaf.key_pem), "-CAfile",
                   dir.write("ca.crt", ca.cert_pem), "-Verify", "1", "-rev", "-quiet"},
                  (dir.path / "backend.out").string(), (dir.path / "backend.err").string());
    REQUIRE(eventually([&] { return accepting("127.0.0.1", backend_port); }));

    const std::string ca_inline = "      caCert:\n        inlineString: |\n" + indent(ca.cert_pem, 10);
    const std::string client_cert = "      clientCert:\n        secret: leak-cert\n";
    std::string resources = generator + secret_doc("leak-key", key_bytes) + secret_doc("leak-cert", client.cert_pem) +
                            secret_doc("leak-garbled", garbled) +
                            tls_mes("leak-good", 7466, backend_port, ca_inline + client_cert + "      clientKey:\n        secret: leak-key\n") +
                            tls_mes("leak-bad", 7467, backend_port, ca_inline + client_cert + "      clientKey:\n        secret: leak-garbled\n");
    dir.write("resources/all.yaml", resources);
    auto access_log = (dir.path / "access.log").string();
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "log:\n  level: debug\nproxy:\n  connectTimeout: 2s\n  accessLog:\n    path: " + access_log + "\n";
    Mesd mesd(dir.path / "mesd", options);
    auto vip = [&](const std::string& name) {
        return trim(output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), name + ".mesh", "+short"}));
    };
    // The key works (the backend asks for a client certificate), the garbled one refuses.
    CHECK(eventually([&] { return say(vip("leak-good"), 7466, "hello\n") == "olleh\n"; }));
    CHECK(say(vip("leak-bad"), 7467, "hello\n") != "olleh\n");
    CHECK(eventually([&] { return file_text(access_log).find("leak-bad") != std::string::npos; }));

    std::vector<std::pair<std::string, std::string>> outputs;  // what, text
    for (const char* path : {"/config", "/metrics", "/ready", "/", "/secrets", "/config?secret=leak-key"})
        outputs.emplace_back(std::string("GET ") + path, mesd.admin_get(path));
    auto ctl = [&](std::vector<std::string> args) {
        std::string what = "mesctl";
        for (const auto& a : args) what += " " + a;
        args.insert(args.begin(), {MESCTL_PATH, "--config", mesd.config()});
        auto r = run(args);
        outputs.emplace_back(what, r.out + r.err);
        return r;
    };
    for (const char* kind : {"mes", "secrets"})
        for (const char* format : {"table", "yaml", "json"}) CHECK(ctl({"get", kind, "-o", format}).exit_code == 0);
    CHECK(ctl({"get", "mes", "leak-good", "-o", "yaml"}).exit_code == 0);
    CHECK(ctl({"get", "secrets", "leak-key", "-o", "yaml"}).exit_code == 0);
    CHECK(ctl({"get", "secrets", "leak-key", "-o", "json"}).exit_code == 0);
    CHECK(ctl({"inspect", "leak-good"}).exit_code == 0);
    ctl({"inspect", "leak-bad"});
    // An inline key that is no PEM: refused, and the refusal must not quote it.
    auto inline_bad = dir.write("inline.yaml", tls_mes("leak-inline", 7468, backend_port,
                                                      ca_inline + client_cert + "      clientKey:\n        inlineString: |\n" +
                                                          indent(garbled, 10)));
    ctl({"validate", inline_bad});
    ctl({"apply", "-f", inline_bad});
    ctl({"validate", (dir.path / "resources" / "all.yaml").string()});
    // A Secret whose data is not base64 at all, the marker in it.
    auto bad_base64 = dir.write("bad-secret.yaml", "---\ntype: Secret\nname: leak-raw\ndata: \"" + marker + "!!\"\n");
    ctl({"validate", bad_base64});
    ctl({"apply", "-f", bad_base64});

    // The outputs are about the planted things: each names them, none shows them.
    CHECK_THAT(outputs[0].second, Catch::Contains("leak-bad"));
    CHECK_THAT(ctl({"get", "secrets", "-o", "yaml"}).out, Catch::Contains("leak-key"));
    CHECK(mesd.stop() == 0);
    outputs.emplace_back("mesd's log", mesd.log());
    outputs.emplace_back("mesd's stdout", file_text((dir.path / "mesd" / "mesd.out").string()));
    outputs.emplace_back("the access log", file_text(access_log));
    CHECK_THAT(mesd.log(), Catch::Contains("level=debug"));  // the log was at debug level
    CHECK_THAT(mesd.log(), Catch::Contains("name=leak-bad reason="));  // the garbled key's refusal
    for (const auto& [what, text] : outputs) {
        INFO(what << ":\n" << text);
        if (what != "mesd's stdout") CHECK(!text.empty());
        for (const auto& p : planted) CHECK(text.find(p) == std::string::npos);
    }
}
