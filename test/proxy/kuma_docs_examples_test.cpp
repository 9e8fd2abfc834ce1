// Every MeshExternalService and HostnameGenerator example of Kuma's MeshExternalService pages
// (conf/kuma-examples/, exactly as the docs write them, in both the Universal and the
// Kubernetes shape) end to end through mesd: `mesctl validate` accepts each file, `mesctl
// apply` writes each shape's set to a store, and a mesd loading the set answers each
// example's generated hostname with a VIP through which a client reaches a local stand-in
// for the example's public endpoint. As in seed_test.cpp, the stand-ins run in a network
// namespace where a dnsmasq points the public names at them, holding certificates from a CA
// made here that mesd trusts as its system store (SSL_CERT_FILE). The Secrets the examples
// name (the docs give none) are written here in Kuma's documented Secret shapes.
#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/netns.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string python = "/usr/bin/python3";
const std::string curl = "/usr/bin/curl";
const std::string nc = "/usr/bin/nc";

std::string base64(const std::string& in)
{
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8) |
                     static_cast<unsigned char>(in[i + 2]);
        for (int s = 18; s >= 0; s -= 6) out += alphabet[(v >> s) & 63];
    }
    if (i < in.size()) {
        unsigned v = static_cast<unsigned char>(in[i]) << 16;
        if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += i + 1 < in.size() ? alphabet[(v >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

// A Secret as Kuma's Secrets page writes it, in the shape of the examples beside it.
std::string secret_yaml(bool kubernetes, const std::string& name, const std::string& bytes)
{
    if (kubernetes)
        return "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: " + name +
               "\n  namespace: kuma-system\n  labels:\n    kuma.io/mesh: default\ndata:\n  value: " + base64(bytes) +
               "\ntype: system.kuma.io/secret\n";
    return "---\ntype: Secret\nname: " + name + "\nmesh: default\ndata: " + base64(bytes) + "\n";
}

// One example: its file stem in conf/kuma-examples/, the hostname a client asks for (from the
// guide's HostnameGenerator for the guide's examples, from mesd's default generator
// `{{ .DisplayName }}.extsvc.mesh.local` for the resource page's, which names none), and
// what a client through VIP:port gets.
struct Example {
    std::string stem;
    std::string hostname;
    int port;
    std::function<void(const Namespace&, const std::string& vip, const Dir&)> check;
};

// An HTTP GET through VIP:port with the generated name as the client would send it.
std::string get(const Namespace& ns, const std::string& host, const std::string& vip, int port)
{
    auto p = std::to_string(port);
    return ns.in({curl, "-sS", "--max-time", "5", "--resolve", host + ":" + p + ":" + vip, "http://" + host + ":" + p + "/"}).out;
}

// The VIP mesd answers for `name`, or what dig printed instead.
std::string vip_of(const Namespace& ns, const Mesd& mesd, const std::string& name)
{
    auto vip = ns.in({"/usr/bin/dig", "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), name, "+short"}).out;
    while (!vip.empty() && vip.back() == '\n') vip.pop_back();
    return vip;
}

std::string tcp_line(const Namespace& ns, const std::string& vip, int port)
{
    return ns.in({nc, "-N", "-w", "5", vip, std::to_string(port)}, "echo this\n").out;
}

}  // namespace

TEST_CASE("every example of Kuma's MeshExternalService pages applies and serves against local stand-ins")
{
    const std::string examples = std::string(MESD_SOURCE_DIR) + "/conf/kuma-examples/";
    const std::string peer = std::string(MESD_SOURCE_DIR) + "/test/proxy/peers/grpc_echo.py";
    Dir dir;
    Namespace ns("mesd-kdocs");
    // An address of the docs' own (TEST-NET-3), given to the namespace's loopback.
    REQUIRE(ns.in({"/usr/sbin/ip", "addr", "add", "203.0.113.10/32", "dev", "lo"}).exit_code == 0);

    // The public CA mesd trusts, a corporate CA it does not (private-api names it through a
    // Secret), and a CA the database stand-in wants its clients' certificates from.
    auto ca = make_ca("stand-in public CA");
    auto corp = make_ca("stand-in corporate CA");
    auto client_ca = make_ca("stand-in database client CA");
    auto ca_file = dir.write("ca.crt", ca.cert_pem);
    auto client_ca_file = dir.write("client-ca.crt", client_ca.cert_pem);
    auto pair = [&](const std::string& name, const KeyPair& kp) {
        return std::pair{dir.write(name + ".crt", kp.cert_pem), dir.write(name + ".key", kp.key_pem)};
    };
    auto [httpbin_crt, httpbin_key] = pair("httpbin", make_leaf(ca, "httpbin.org", {"DNS:httpbin.org"}));
    auto [tcpbin_crt, tcpbin_key] = pair("tcpbin", make_leaf(ca, "tcpbin.com", {"DNS:tcpbin.com"}));
    auto [grpcbin_crt, grpcbin_key] = pair("grpcbin", make_leaf(ca, "grpcbin.test.k6.io", {"DNS:grpcbin.test.k6.io"}));
    auto [pg_crt, pg_key] =
        pair("postgres", make_leaf(ca, "postgres.external.example.com", {"DNS:postgres.external.example.com"}));
    // api-gateway's three endpoints answer as the name its serverName gives.
    auto [api_crt, api_key] = pair("api", make_leaf(ca, "api.example.com", {"DNS:api.example.com"}));
    auto [corp_crt, corp_key] = pair("corp", make_leaf(corp, "internal.corp.example.com", {"DNS:internal.corp.example.com"}));
    // Only the SPIFFE ID: spiffe-service's Prefix entry is what must match.
    auto [spiffe_crt, spiffe_key] =
        pair("spiffe", make_leaf(ca, "service.example.com", {"URI:spiffe://example.com/ns/production/sa/web"}));
    // The same but for another namespace: the serverName is left only in its CN, which is no
    // SAN, so spiffe-service's verification must refuse it (as Envoy's SAN matchers do).
    auto [staging_crt, staging_key] =
        pair("staging", make_leaf(ca, "service.example.com", {"URI:spiffe://example.com/ns/staging/sa/web"}));
    auto db_client = make_leaf(client_ca, "database-client", {"DNS:database-client"}, -1, 365, true);

    Child dnsmasq(ns.wrap({"/usr/sbin/dnsmasq", "-k", "--user=root", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                           "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--port=53", "--address=/httpbin.org/127.0.0.1",
                           "--address=/tcpbin.com/127.0.0.1", "--address=/grpcbin.test.k6.io/127.0.0.1",
                           "--address=/postgres.external.example.com/127.0.0.1", "--address=/api1.example.com/127.0.0.2",
                           "--address=/api2.example.com/127.0.0.3", "--address=/internal.corp.example.com/127.0.0.4",
                           "--address=/service.example.com/127.0.0.5", "--address=/cn-only.example.com/127.0.0.6"}),
                  (dir.path / "dnsmasq.out").string(), (dir.path / "dnsmasq.err").string());

    // local-service's socket is /var/run/service.sock (/run on this system): nginx and mesd
    // each see a directory of the test there, bound over /run in their own mount namespace
    // (`ip netns exec` makes one, its mounts not shared back), so nothing is made outside.
    std::filesystem::create_directories(dir.path / "run");
    auto with_run = [&](std::vector<std::string> argv) {
        argv.insert(argv.begin(), {"/bin/sh", "-c", "mount --bind \"$0\" /run && exec \"$@\"", (dir.path / "run").string()});
        return ns.wrap(argv);
    };
    auto server = [](const std::string& listen, const std::string& cert, const std::string& key) {
        return "  server {\n    listen " + listen + ";\n" +
               (cert.empty() ? "" : "    ssl_certificate " + cert + ";\n    ssl_certificate_key " + key + ";\n") +
               "    location / { return 200 \"host=$http_host scheme=$scheme addr=$server_addr\\n\"; }\n  }\n";
    };
    std::string servers = server("127.0.0.1:443 ssl", httpbin_crt, httpbin_key) + server("127.0.0.2:443 ssl", api_crt, api_key) +
                          server("127.0.0.3:443 ssl", api_crt, api_key) + server("203.0.113.10:443 ssl", api_crt, api_key) +
                          server("127.0.0.4:443 ssl", corp_crt, corp_key) + server("127.0.0.5:443 ssl", spiffe_crt, spiffe_key) +
                          server("127.0.0.6:443 ssl", staging_crt, staging_key) +
                          server("unix:/run/service.sock", "", "");
    dir.write("nginx.conf", nginx_config(dir.path,
                                         "    listen 127.0.0.1:80;\n"
                                         "    location / { return 200 \"host=$http_host scheme=$scheme addr=$server_addr\\n\"; }\n",
                                         servers));
    auto out = [&](const std::string& name) { return (dir.path / name).string(); };
    Child nginx(with_run({"/usr/sbin/nginx", "-c", out("nginx.conf"), "-e", out("nginx.err")}), out("nginx.out"), out("nginx.stderr"));
    Child echo(ns.wrap({"/usr/bin/socat", "TCP-LISTEN:4242,bind=127.0.0.1,fork,reuseaddr", "EXEC:cat"}));
    Child echo_tls(ns.wrap({"/usr/bin/socat",
                            "OPENSSL-LISTEN:4243,bind=127.0.0.1,fork,reuseaddr,verify=0,cert=" + tcpbin_crt + ",key=" + tcpbin_key,
                            "EXEC:cat"}));
    // mes-tcp-mtls's client certificate is tcpbin's own (its CA is not at hand, and it has
    // expired): asked for and shown, not verified. The database's is verified and required.
    Child echo_mtls(ns.wrap({"/usr/bin/openssl", "s_server", "-accept", "127.0.0.1:4244", "-cert", tcpbin_crt, "-key", tcpbin_key,
                             "-verify", "1", "-rev"}),
                    out("mtls.out"), out("mtls.err"));
    Child database(ns.wrap({"/usr/bin/openssl", "s_server", "-accept", "127.0.0.1:5432", "-cert", pg_crt, "-key", pg_key, "-Verify", "1",
                            "-verify_return_error", "-CAfile", client_ca_file, "-rev"}),
                   out("database.out"), out("database.err"));
    Child grpc(ns.wrap({python, peer, "serve", "127.0.0.1:9000"}), out("grpc.out"), out("grpc.err"));
    Child grpcs(ns.wrap({python, peer, "serve", "127.0.0.1:9001", grpcbin_crt, grpcbin_key}), out("grpcs.out"), out("grpcs.err"));
    for (std::string at : {"127.0.0.1 53", "127.0.0.1 80", "127.0.0.1 443", "127.0.0.2 443", "127.0.0.3 443", "203.0.113.10 443",
                           "127.0.0.4 443", "127.0.0.5 443", "127.0.0.6 443", "127.0.0.1 4242", "127.0.0.1 4243",
                           "127.0.0.1 4244", "127.0.0.1 5432", "127.0.0.1 9000", "127.0.0.1 9001"}) {
        INFO(at);
        auto space = at.find(' ');
        REQUIRE(eventually([&] { return ns.in({nc, "-z", "-w", "1", at.substr(0, space), at.substr(space + 1)}).exit_code == 0; }, 10s));
    }
    REQUIRE(eventually([&] { return std::filesystem::exists(dir.path / "run/service.sock"); }, 10s));

    const std::string guide = ".svc.meshext.local", fallback = ".extsvc.mesh.local";
    std::vector<Example> all = {
        // Kuma's MeshExternalService resource page.
        {"resource-httpbin", "httpbin" + fallback, 80,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             CHECK(get(n, "httpbin" + fallback, vip, 80) == "host=httpbin.org scheme=http addr=127.0.0.1\n");
         }},
        {"resource-httpbin-tls", "httpbin-tls" + fallback, 80,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             CHECK(get(n, "httpbin-tls" + fallback, vip, 80) == "host=httpbin.org scheme=https addr=127.0.0.1\n");
         }},
        {"resource-database", "database" + fallback, 5432,
         [&](const Namespace& n, const std::string& vip, const Dir& d) {
             CHECK(tcp_line(n, vip, 5432).find("siht ohce") != std::string::npos);
             // The stand-in required a client certificate from its CA: the Secrets' pair.
             CHECK((file_text((d.path / "database.out").string()) + file_text((d.path / "database.err").string()))
                       .find("CN = database-client") != std::string::npos);
         }},
        {"resource-grpc-api", "grpc-api" + fallback, 9000,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             CHECK(n.in({python, peer, "call", vip + ":9000", "grpc-api"}).out == "echo:grpc-api\n");
         }},
        {"resource-api-gateway", "api-gateway" + fallback, 443,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             // Every endpoint is used: requests until each of the three has answered.
             std::set<std::string> seen;
             for (int i = 0; i < 40 && seen.size() < 3; ++i) {
                 auto got = get(n, "api-gateway" + fallback, vip, 443);
                 auto at = got.find("addr=");
                 if (got.starts_with("host=") && at != std::string::npos) seen.insert(got.substr(at + 5, got.size() - at - 6));
                 else FAIL_CHECK("unexpected answer: " << got);
             }
             CHECK(seen == std::set<std::string>{"127.0.0.2", "127.0.0.3", "203.0.113.10"});
         }},
        {"resource-local-service", "local-service" + fallback, 8080,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             CHECK(get(n, "local-service" + fallback, vip, 8080).find("scheme=http addr=unix:") != std::string::npos);
         }},
        {"resource-private-api", "private-api" + fallback, 443,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             CHECK(get(n, "private-api" + fallback, vip, 443).find("scheme=https addr=127.0.0.4\n") != std::string::npos);
         }},
        {"resource-spiffe-service", "spiffe-service" + fallback, 443,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             CHECK(get(n, "spiffe-service" + fallback, vip, 443).find("scheme=https addr=127.0.0.5\n") != std::string::npos);
         }},
        // Kuma's MeshExternalService guide, with its HostnameGenerator.
        {"guide-mes-tcp", "mes-tcp" + guide, 4242,
         [&](const Namespace& n, const std::string& vip, const Dir&) { CHECK(tcp_line(n, vip, 4242) == "echo this\n"); }},
        {"guide-mes-tcp-tls", "mes-tcp-tls" + guide, 4243,
         [&](const Namespace& n, const std::string& vip, const Dir&) { CHECK(tcp_line(n, vip, 4243) == "echo this\n"); }},
        {"guide-mes-tcp-mtls", "mes-tcp-mtls" + guide, 4244,
         [&](const Namespace& n, const std::string& vip, const Dir& d) {
             CHECK(tcp_line(n, vip, 4244).find("siht ohce") != std::string::npos);
             CHECK((file_text((d.path / "mtls.out").string()) + file_text((d.path / "mtls.err").string()))
                       .find("CN = tcpbin.com-client") != std::string::npos);
         }},
        {"guide-mes-http", "mes-http" + guide, 80,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             CHECK(get(n, "mes-http" + guide, vip, 80) == "host=httpbin.org scheme=http addr=127.0.0.1\n");
         }},
        {"guide-mes-https", "mes-https" + guide, 80,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             CHECK(get(n, "mes-https" + guide, vip, 80) == "host=httpbin.org scheme=https addr=127.0.0.1\n");
         }},
        {"guide-mes-grpc", "mes-grpc" + guide, 9000,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             CHECK(n.in({python, peer, "list", vip + ":9000"}).out == "mesd.test.Echo\ngrpc.reflection.v1alpha.ServerReflection\n");
         }},
        {"guide-mes-grpcs", "mes-grpcs" + guide, 9001,
         [&](const Namespace& n, const std::string& vip, const Dir&) {
             CHECK(n.in({python, peer, "list", vip + ":9001"}).out == "mesd.test.Echo\ngrpc.reflection.v1alpha.ServerReflection\n");
         }},
    };

    // Every file of conf/kuma-examples/ is one of the examples above or the guide's generator.
    std::set<std::string> files, covered{"guide-hg-example.universal.yaml", "guide-hg-example.kubernetes.yaml"};
    for (const auto& e : std::filesystem::directory_iterator(examples)) files.insert(e.path().filename().string());
    for (const auto& ex : all) covered.insert({ex.stem + ".universal.yaml", ex.stem + ".kubernetes.yaml"});
    CHECK(files == covered);

    for (std::string form : {"universal", "kubernetes"}) {
        INFO("shape " << form);
        auto resources = dir.path / ("resources-" + form);
        std::filesystem::create_directories(resources);
        auto copy = [&](const std::string& stem) {
            auto file = stem + "." + form + ".yaml";
            auto r = run({MESCTL_PATH, "validate", examples + file});
            INFO(file << ": " << r.out << r.err);
            CHECK(r.exit_code == 0);
            // Alone, the two that name Secrets are valid with a warning: as in Kuma, a MES may
            // be applied before its Secret.
            if (stem == "resource-database" || stem == "resource-private-api")
                CHECK((r.out + r.err).find("not found in mesh \"default\"; TLS connections to this service are refused") !=
                      std::string::npos);
            std::filesystem::copy_file(examples + file, resources / file);
        };
        copy("guide-hg-example");
        for (const auto& ex : all) copy(ex.stem);
        bool kube = form == "kubernetes";
        // Not an example: spiffe-service's spec towards an endpoint holding the staging
        // certificate, which must be refused.
        {
            auto text = file_text(examples + "resource-spiffe-service." + form + ".yaml");
            for (auto [from, to] : {std::pair<std::string, std::string>{"name: spiffe-service", "name: spiffe-cn-only"},
                                    {"address: service.example.com", "address: cn-only.example.com"}}) {
                auto at = text.find(from);
                REQUIRE(at != std::string::npos);
                text.replace(at, from.size(), to);
            }
            dir.write("resources-" + form + "/spiffe-cn-only.yaml", text);
        }
        dir.write("resources-" + form + "/secrets.yaml",
                  secret_yaml(kube, "postgres-client-cert", db_client.cert_pem) +
                      secret_yaml(kube, "postgres-client-key", db_client.key_pem) +
                      secret_yaml(kube, "corporate-ca-cert", corp.cert_pem));

        // Applied to a store of their own by mesctl, every example and Secret is stored.
        auto applied = run({MESCTL_PATH, "--data-dir", out("store-" + form), "apply", "-f", resources.string()});
        INFO(applied.out << applied.err);
        REQUIRE(applied.exit_code == 0);
        for (const auto& ex : all) {
            auto name = ex.hostname.substr(0, ex.hostname.find('.'));
            CHECK(run({MESCTL_PATH, "--data-dir", out("store-" + form), "get", "mes", name, "--mesh", "default"}).exit_code == 0);
        }
        for (std::string secret : {"postgres-client-cert", "postgres-client-key", "corporate-ca-cert"})
            CHECK(run({MESCTL_PATH, "--data-dir", out("store-" + form), "get", "secrets", secret, "--mesh", "default"}).exit_code == 0);

        MesdOptions options;
        options.wrapper = with_run({"/usr/bin/env", "SSL_CERT_FILE=" + ca_file});
        options.conf_dir = resources.string();
        options.vip_section = "  ipv4: 127.244.0.0/16\n";
        options.dns_section = "  forward:\n    upstreams: [\"127.0.0.1:53\"]\n";
        Mesd mesd(dir.path / ("mesd-" + form), options);
        for (const auto& ex : all) {
            INFO(ex.stem << " " << ex.hostname);
            INFO("mesd's log:\n" << mesd.log());
            auto vip = vip_of(ns, mesd, ex.hostname);
            CHECK(vip.starts_with("127.244."));
            if (!vip.starts_with("127.244.")) continue;
            ex.check(ns, vip, dir);
        }
        {
            auto vip = vip_of(ns, mesd, "spiffe-cn-only" + fallback);
            REQUIRE(vip.starts_with("127.244."));
            auto got = get(ns, "spiffe-cn-only" + fallback, vip, 443);
            INFO(got);
            CHECK(got.find("addr=127.0.0.6") == std::string::npos);
            CHECK(eventually([&] { return mesd.log().find("certificate name mismatch: service.example.com is not among "
                                                          "[spiffe://example.com/ns/staging/sa/web]") != std::string::npos; }));
        }
        CHECK(mesd.stop() == 0);
    }
}
