// TLS origination through the running mesd: plaintext from the client, TLS from mesd to
// `openssl s_server` backends holding certificates made here (a private CA, leaves with
// DNS, IP and URI SANs, a leaf from another CA, an expired one), in every verification mode.
#include "conf/conf.hpp"
#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/text.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string openssl = "/usr/bin/openssl";
const std::string dig = "/usr/bin/dig";

// openssl s_server with -rev: each line comes back reversed.
struct TlsServer {
    int port = free_tcp_port();
    std::unique_ptr<Child> child;
    TlsServer(const Dir& dir, const std::string& name, const KeyPair& leaf, std::vector<std::string> extra = {})
    {
        auto cert = dir.write(name + ".crt", leaf.cert_pem);
        auto key = dir.write(name + ".key", leaf.key_pem);
        std::vector<std::string> argv{openssl, "s_server", "-accept", "127.0.0.1:" + std::to_string(port), "-cert", cert,
                                      "-key", key, "-rev", "-quiet"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        child = std::make_unique<Child>(argv, (dir.path / (name + ".out")).string(), (dir.path / (name + ".err")).string());
        REQUIRE(eventually([&] { return accepting("127.0.0.1", port); }));
    }
};

struct Case {
    std::string name;
    int backend_port;
    std::string endpoint;
    std::string verification;  // lines under `verification:` (indented 6)
    std::string version;       // lines under `version:` (indented 6)
    Case(std::string n, int port, std::string ep, std::string verif, std::string ver = "")
        : name(std::move(n)), backend_port(port), endpoint(std::move(ep)), verification(std::move(verif)), version(std::move(ver))
    {
    }
};

std::string mes_yaml(const Case& c, int match_port)
{
    std::string doc = "---\ntype: MeshExternalService\nname: " + c.name + "\nspec:\n  match: {port: " +
                      std::to_string(match_port) + "}\n  endpoints: [{address: " + c.endpoint + ", port: " +
                      std::to_string(c.backend_port) + "}]\n  tls:\n    enabled: true\n";
    if (!c.version.empty()) doc += "    version:\n" + c.version;
    if (!c.verification.empty()) doc += "    verification:\n" + c.verification;
    return doc;
}

const std::string generator =
    "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

}  // namespace

TEST_CASE("TLS origination in every verification mode, with version bounds and client certificates")
{
    Dir dir;
    auto ca = make_ca("mesd test CA");
    auto other_ca = make_ca("someone else's CA");
    const std::vector<std::string> sans = {"DNS:api.test", "IP:127.0.0.1", "URI:spiffe://mesh.test/ns/web/sa/api"};
    auto leaf = make_leaf(ca, "api.test", sans);
    auto stranger = make_leaf(other_ca, "api.test", sans);
    auto expired = make_leaf(ca, "api.test", sans, -30, -1);
    auto client = make_leaf(ca, "mesd-client", {"URI:spiffe://mesh.test/mesd"}, -1, 365, true);

    TlsServer good(dir, "good", leaf);
    TlsServer foreign(dir, "foreign", stranger);
    TlsServer old(dir, "old", expired);
    TlsServer tls13(dir, "tls13", leaf, {"-tls1_3"});
    auto ca_file = dir.write("ca.crt", ca.cert_pem);
    TlsServer mtls(dir, "mtls", leaf, {"-Verify", "1", "-CAfile", ca_file});

    const std::string ca_inline = "      caCert:\n        inlineString: |\n" + indent(ca.cert_pem, 10);
    const std::string other_ca_inline = "      caCert:\n        inlineString: |\n" + indent(other_ca.cert_pem, 10);
    const std::string client_inline = "      clientCert:\n        inlineString: |\n" + indent(client.cert_pem, 10) +
                                      "      clientKey:\n        inlineString: |\n" + indent(client.key_pem, 10);

    // Expected: the reversed line, or "" (closed) with the reason counted.
    struct Expect {
        Case c;
        bool works;
        std::string reason;  // part of the reason when it fails
    };
    std::vector<Expect> cases = {
        {{"secured-sni", good.port, "127.0.0.1", "      serverName: api.test\n" + ca_inline}, true, ""},
        {{"secured-ip", good.port, "127.0.0.1", ca_inline}, true, ""},  // no SNI: the IP SAN
        {{"secured-wrong-ca", good.port, "127.0.0.1", "      serverName: api.test\n" + other_ca_inline}, false,
         "certificate verify failed: unable to get local issuer certificate"},
        {{"secured-system-trust", good.port, "127.0.0.1", "      serverName: api.test\n"}, false,
         "certificate verify failed: unable to get local issuer certificate"},
        {{"secured-other-name", good.port, "127.0.0.1", "      serverName: other.test\n" + ca_inline}, false,
         "certificate name mismatch"},
        {{"secured-san-exact", good.port, "127.0.0.1",
          "      serverName: other.test\n      subjectAltNames: [{type: Exact, value: api.test}]\n" + ca_inline},
         true, ""},
        {{"secured-san-exact-miss", good.port, "127.0.0.1",
          "      serverName: other.test\n      subjectAltNames: [{type: Exact, value: api.tes}]\n" + ca_inline},
         false, "certificate name mismatch"},
        {{"secured-san-prefix-uri", good.port, "127.0.0.1",
          "      serverName: other.test\n      subjectAltNames: [{type: Prefix, value: \"spiffe://mesh.test/ns/web/\"}]\n" + ca_inline},
         true, ""},
        {{"secured-san-prefix-miss", good.port, "127.0.0.1",
          "      serverName: other.test\n      subjectAltNames: [{type: Prefix, value: \"spiffe://mesh.test/ns/db/\"}]\n" + ca_inline},
         false, "certificate name mismatch"},
        {{"secured-expired", old.port, "127.0.0.1", "      serverName: api.test\n" + ca_inline}, false,
         "certificate verify failed: certificate has expired"},
        {{"skipsan-other-name", good.port, "127.0.0.1", "      mode: SkipSAN\n      serverName: other.test\n" + ca_inline}, true, ""},
        {{"skipsan-wrong-ca", foreign.port, "127.0.0.1", "      mode: SkipSAN\n      serverName: api.test\n" + ca_inline}, false,
         "certificate verify failed"},
        {{"skipca-wrong-ca", foreign.port, "127.0.0.1", "      mode: SkipCA\n      serverName: api.test\n" + ca_inline}, true, ""},
        {{"skipca-other-name", foreign.port, "127.0.0.1", "      mode: SkipCA\n      serverName: other.test\n" + ca_inline}, false,
         "certificate name mismatch"},
        {{"skipall", foreign.port, "127.0.0.1", "      mode: SkipAll\n      serverName: other.test\n" + ca_inline}, true, ""},
        {{"tls13-only-max12", tls13.port, "127.0.0.1", "      serverName: api.test\n" + ca_inline, "      max: TLS12\n"}, false,
         "protocol version"},
        {{"tls13-only-min13", tls13.port, "127.0.0.1", "      serverName: api.test\n" + ca_inline, "      min: TLS13\n"}, true, ""},
        {{"tls13-only-skipall-max12", tls13.port, "127.0.0.1", "      mode: SkipAll\n", "      max: TLS12\n"}, false,
         "protocol version"},  // bounds apply whatever the mode
        {{"mtls", mtls.port, "127.0.0.1", "      serverName: api.test\n" + ca_inline + client_inline}, true, ""},
        {{"mtls-no-client-cert", mtls.port, "127.0.0.1", "      serverName: api.test\n" + ca_inline}, false, ""},
    };

    std::string resources = generator;
    int match_port = 9400;
    std::map<std::string, int> ports;
    for (const auto& e : cases) {
        ports[e.c.name] = match_port;
        resources += mes_yaml(e.c, match_port++);
    }
    dir.write("resources/all.yaml", resources);
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  connectTimeout: 3s\n  ejectAfter: 100\n";
    Mesd mesd(dir.path / "mesd", options);
    auto vip = [&](const std::string& name) {
        auto out = output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), name + ".mesh", "+short"});
        while (!out.empty() && out.back() == '\n') out.pop_back();
        return out;
    };

    for (const auto& e : cases) {
        INFO("MES " << e.c.name);
        auto got = say(vip(e.c.name), ports[e.c.name], "hello tls\n");
        if (e.works) {
            CHECK(got == "slt olleh\n");
        } else {
            CHECK(got.empty());  // closed, never carried in the clear
            if (!e.reason.empty()) {
                auto metrics = mesd.admin_get("/metrics");
                auto prefix = "mesd_mes_tls_handshake_failures_total{mesh=\"default\",name=\"" + e.c.name + "\",reason=\"";
                auto at = metrics.find(prefix);
                REQUIRE(at != std::string::npos);
                auto line = metrics.substr(at, metrics.find('\n', at) - at);
                CHECK_THAT(line, Catch::Contains(e.reason));
            }
        }
    }
    // Each failing cause is logged once, with its reason.
    auto log = mesd.log();
    CHECK_THAT(log, Catch::Contains("msg=\"TLS handshake failed\" mesh=default name=secured-wrong-ca "
                                    "reason=\"certificate verify failed: unable to get local issuer certificate\""));
}

TEST_CASE("TLS sessions to an endpoint are resumed, and certificates from Secrets follow re-applies")
{
    Dir dir;
    auto ca = make_ca("mesd test CA");
    auto leaf = make_leaf(ca, "api.test", {"DNS:api.test"});
    TlsServer server(dir, "server", leaf);
    auto other_ca = make_ca("another CA");

    auto resources = [&](const KeyPair& trusted) {
        return generator + "---\ntype: Secret\nname: backend-ca\nmesh: default\ndata: " + conf::base64_encode(trusted.cert_pem) +
               "\n---\ntype: MeshExternalService\nname: api\nspec:\n  match: {port: 9500}\n  endpoints: [{address: 127.0.0.1, port: " +
               std::to_string(server.port) + "}]\n  tls:\n    enabled: true\n    verification:\n      serverName: api.test\n"
               "      caCert: {secret: backend-ca}\n";
    };
    dir.write("resources/all.yaml", resources(ca));
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);

    for (int i = 0; i < 4; ++i) CHECK(say("127.242.0.1", 9500, "again\n") == "niaga\n");
    // "CLOSE" makes s_server end the connection first (close_notify, then FIN): the session
    // must stay resumable all the same.
    for (int i = 0; i < 3; ++i) CHECK(say("127.242.0.1", 9500, "CLOSE\n").empty());
    for (int i = 0; i < 2; ++i) CHECK(say("127.242.0.1", 9500, "again\n") == "niaga\n");
    auto counter = [&](const std::string& name) {
        auto metrics = mesd.admin_get("/metrics");
        auto at = metrics.find(name + "{mesh=\"default\",name=\"api\"} ");
        REQUIRE(at != std::string::npos);
        return std::stoi(metrics.substr(metrics.find("} ", at) + 2));
    };
    CHECK(counter("mesd_mes_tls_handshakes_total") == 9);
    CHECK(counter("mesd_mes_tls_resumed_total") == 8);  // every one after the first

    // The Secret now holds another CA: new connections are refused within a second or two.
    dir.write("resources/all.yaml", resources(other_ca));
    CHECK(eventually([&] { return say("127.242.0.1", 9500, "again\n").empty(); }, 5s));
    // And back.
    dir.write("resources/all.yaml", resources(ca));
    CHECK(eventually([&] { return say("127.242.0.1", 9500, "again\n") == "niaga\n"; }, 5s));
}

TEST_CASE("a MES whose TLS Secret is gone refuses connections rather than carry them in the clear")
{
    Dir dir;
    auto ca = make_ca("mesd test CA");
    auto file = dir.write("api.yaml", generator + "---\ntype: Secret\nname: backend-ca\nmesh: default\ndata: " +
                                          conf::base64_encode(ca.cert_pem) +
                                          "\n---\ntype: MeshExternalService\nname: api\nspec:\n  match: {port: 9501}\n"
                                          "  endpoints: [{address: 127.0.0.1, port: 9}]\n  tls:\n    enabled: true\n"
                                          "    verification:\n      caCert: {secret: backend-ca}\n");
    MesdOptions options;
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);
    auto mesctl = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {MESCTL_PATH, "--config", mesd.config()});
        return run(args);
    };
    REQUIRE(mesctl({"apply", "-f", file}).exit_code == 0);
    // Deleting a Secret a MES still uses takes --force; then the MES has no CA to trust.
    REQUIRE(mesctl({"delete", "secret", "backend-ca"}).exit_code != 0);
    REQUIRE(mesctl({"delete", "secret", "backend-ca", "--force"}).exit_code == 0);
    CHECK(eventually([&] {
        return mesd.admin_get("/config").find("\"tlsError\": \"tls.verification.caCert: Secret backend-ca not found\"") !=
               std::string::npos;
    }));
    CHECK(say("127.242.0.1", 9501, "x\n").empty());
    CHECK_THAT(mesd.log(), Catch::Contains("msg=\"TLS settings unusable; refusing connections\" mesh=default name=api"));
}

TEST_CASE("http2 and grpc: h2c from the client, carried to the endpoint in the clear or over TLS with ALPN h2")
{
    Dir dir;
    auto ca = make_ca("mesd test CA");
    auto leaf = make_leaf(ca, "api.test", {"DNS:api.test", "IP:127.0.0.1"});
    auto cert = dir.write("leaf.crt", leaf.cert_pem);
    auto key = dir.write("leaf.key", leaf.key_pem);

    // nginx speaking h2 over TLS (it picks h2 only when the client offers it with ALPN).
    int h2_port = free_tcp_port();
    dir.write("nginx.conf", nginx_config(dir.path, "    listen 127.0.0.1:" + std::to_string(h2_port) + " ssl http2;\n"
                                                   "    ssl_certificate " + cert + ";\n    ssl_certificate_key " + key +
                                                   ";\n    location / { return 200 \"$server_protocol $ssl_protocol\\n\"; }\n"));
    Child nginx({"/usr/sbin/nginx", "-c", (dir.path / "nginx.conf").string(), "-e", (dir.path / "nginx.err").string()});

    // gRPC servers: plaintext (h2c) and TLS.
    const std::string python = "/usr/bin/python3";
    const std::string peer = std::string(MESD_SOURCE_DIR) + "/test/proxy/peers/grpc_echo.py";
    int grpc_port = free_tcp_port(), grpcs_port = free_tcp_port();
    Child grpc_server({python, peer, "serve", "127.0.0.1:" + std::to_string(grpc_port)}, (dir.path / "grpc.out").string(),
                      (dir.path / "grpc.err").string());
    Child grpcs_server({python, peer, "serve", "127.0.0.1:" + std::to_string(grpcs_port), cert, key},
                       (dir.path / "grpcs.out").string(), (dir.path / "grpcs.err").string());
    for (int port : {h2_port, grpc_port, grpcs_port})
        REQUIRE(eventually([&] { return accepting("127.0.0.1", port); }, 15s));

    const std::string trust = "      caCert:\n        inlineString: |\n" + indent(ca.cert_pem, 10);
    auto mes = [&](const std::string& name, int match_port, const std::string& protocol, int port, bool tls) {
        std::string doc = "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(match_port) +
                          ", protocol: " + protocol + "}\n  endpoints: [{address: 127.0.0.1, port: " + std::to_string(port) + "}]\n";
        if (tls) doc += "  tls:\n    enabled: true\n    verification:\n      serverName: api.test\n" + trust;
        return doc;
    };
    dir.write("resources/all.yaml", generator + mes("mes-h2", 9600, "http2", h2_port, true) +
                                        mes("mes-grpc", 9601, "grpc", grpc_port, false) +
                                        mes("mes-grpcs", 9602, "grpc", grpcs_port, true));
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);

    auto h2 = run({"/usr/bin/curl", "-sS", "--max-time", "5", "--http2-prior-knowledge", "http://127.242.0.1:9600/"});
    CHECK(h2.out.starts_with("HTTP/2.0 TLSv1."));  // h2, which nginx speaks over TLS only after ALPN h2
    auto plain = run({python, peer, "call", "127.242.0.2:9601", "over h2c"});
    CHECK(plain.out == "echo:over h2c\n");
    auto secure = run({python, peer, "call", "127.242.0.3:9602", "over TLS"});
    CHECK(secure.out == "echo:over TLS\n");
    // Listing the services: server reflection, a bidirectional stream.
    const std::string services = "mesd.test.Echo\ngrpc.reflection.v1alpha.ServerReflection\n";
    CHECK(run({python, peer, "list", "127.242.0.2:9601"}).out == services);
    CHECK(run({python, peer, "list", "127.242.0.3:9602"}).out == services);
    INFO(secure.err);
}

TEST_CASE("renegotiation requested by the server is refused unless allowRenegotiation")
{
    Dir dir;
    auto ca = make_ca("mesd test CA");
    auto leaf = make_leaf(ca, "api.test", {"DNS:api.test"});
    auto cert = dir.write("leaf.crt", leaf.cert_pem);
    auto key = dir.write("leaf.key", leaf.key_pem);
    const std::string trust = "      caCert:\n        inlineString: |\n" + indent(ca.cert_pem, 10);

    for (bool allowed : {false, true}) {
        INFO("allowRenegotiation: " << allowed);
        // openssl s_server (TLS 1.2: 1.3 has no renegotiation) takes commands on stdin: "r"
        // sends a HelloRequest. Its stdin is a FIFO held open here.
        auto fifo = (dir.path / ("control-" + std::to_string(allowed))).string();
        REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
        int control = ::open(fifo.c_str(), O_RDWR);
        REQUIRE(control >= 0);
        int port = free_tcp_port();
        auto out = dir.path / ("server-" + std::to_string(allowed) + ".out");
        auto err = dir.path / ("server-" + std::to_string(allowed) + ".err");
        Child server({"/bin/sh", "-c", "exec " + openssl + " s_server -accept 127.0.0.1:" + std::to_string(port) + " -cert " +
                                            cert + " -key " + key + " -tls1_2 -state < " + fifo},
                     out.string(), err.string());
        REQUIRE(eventually([&] { return accepting("127.0.0.1", port); }));
        Dir mesd_dir;
        mesd_dir.write("resources/all.yaml",
                       generator + "---\ntype: MeshExternalService\nname: api\nspec:\n  match: {port: 9700}\n"
                                   "  endpoints: [{address: 127.0.0.1, port: " + std::to_string(port) + "}]\n"
                                   "  tls:\n    enabled: true\n    allowRenegotiation: " + (allowed ? "true" : "false") +
                                   "\n    verification:\n      serverName: api.test\n" + trust);
        MesdOptions options;
        options.conf_dir = (mesd_dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        Mesd mesd(mesd_dir.path / "mesd", options);

        int fd = connect_to("127.242.0.1", 9700);
        REQUIRE(fd >= 0);
        auto count = [&](const std::string& what) {
            std::size_t n = 0;
            for (const auto& file : {out, err}) {  // state lines and data go to two streams
                std::ifstream in(file);
                std::stringstream ss;
                ss << in.rdbuf();
                auto text = ss.str();
                for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
            }
            return n;
        };
        REQUIRE(::send(fd, "hello\n", 6, MSG_NOSIGNAL) == 6);
        REQUIRE(eventually([&] { return count("hello") >= 1; }));
        REQUIRE(::write(control, "r\n", 2) == 2);
        CHECK(eventually([&] { return count("write hello request") == 1; }));
        std::this_thread::sleep_for(500ms);
        if (allowed) {
            CHECK(eventually([&] { return count("read client hello") == 2; }));
        } else {
            CHECK(count("read client hello") == 1);
            CHECK(count("no renegotiation") >= 1);
        }
        ::close(fd);
        ::close(control);
    }
}

TEST_CASE("ALPN offered to the endpoint: h2 for http2 and grpc, http/1.1 for http, none for tcp")
{
    Dir dir;
    auto ca = make_ca("mesd test CA");
    auto leaf = make_leaf(ca, "api.test", {"DNS:api.test"});
    const std::string trust = "      caCert:\n        inlineString: |\n" + indent(ca.cert_pem, 10);
    struct Probe {
        std::string protocol;
        std::string offered;  // "" for none
        std::unique_ptr<TlsServer> server;
    };
    std::vector<Probe> probes;
    for (auto [protocol, offered] : std::vector<std::pair<std::string, std::string>>{
             {"tcp", ""}, {"http", "http/1.1"}, {"http2", "h2"}, {"grpc", "h2"}})
        // -trace writes each ClientHello extension, ALPN's with the protocols offered.
        probes.push_back({protocol, offered, std::make_unique<TlsServer>(dir, "alpn-" + protocol, leaf,
                                                                         std::vector<std::string>{"-trace", "-alpn", "h2,http/1.1"})});
    std::string resources = generator;
    int match_port = 9800;
    for (const auto& p : probes)
        resources += "---\ntype: MeshExternalService\nname: alpn-" + p.protocol + "\nspec:\n  match: {port: " +
                     std::to_string(match_port++) + ", protocol: " + p.protocol + "}\n  endpoints: [{address: 127.0.0.1, port: " +
                     std::to_string(p.server->port) + "}]\n  tls:\n    enabled: true\n    verification:\n      serverName: api.test\n" + trust;
    dir.write("resources/all.yaml", resources);
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);

    match_port = 9800;
    int vip = 1;
    for (const auto& p : probes) {
        INFO("protocol " << p.protocol);
        CHECK(say("127.242.0." + std::to_string(vip++), match_port++, "alpn\n") == "npla\n");
        std::ifstream in(dir.path / ("alpn-" + p.protocol + ".out"));
        std::stringstream ss;
        ss << in.rdbuf();
        auto trace = ss.str();
        auto at = trace.find("application_layer_protocol_negotiation");
        if (p.offered.empty()) {
            CHECK(at == std::string::npos);
        } else {
            REQUIRE(at != std::string::npos);
            auto listed = trace.substr(trace.find('\n', at) + 1);
            listed = listed.substr(0, listed.find('\n'));
            while (!listed.empty() && listed.front() == ' ') listed.erase(0, 1);
            CHECK(listed == p.offered);
        }
    }
}

TEST_CASE("TLS matrix: every mode against right and wrong CA, matching and non-matching names and SANs, version bounds, client certificates")
{
    Dir dir;
    auto ca = make_ca("mesd test CA");
    auto other_ca = make_ca("someone else's CA");
    const std::vector<std::string> sans = {"DNS:api.test", "IP:127.0.0.1", "URI:spiffe://mesh.test/ns/web/sa/api"};
    auto leaf = make_leaf(ca, "api.test", sans);
    auto client = make_leaf(ca, "mesd-client", {}, -1, 365, true);
    TlsServer good(dir, "good", leaf);
    TlsServer tls13(dir, "tls13", leaf, {"-tls1_3"});
    auto ca_file = dir.write("ca.crt", ca.cert_pem);
    TlsServer mtls(dir, "mtls", leaf, {"-Verify", "1", "-CAfile", ca_file, "-tls1_2"});  // 1.2: a missing certificate fails the handshake

    auto pem_block = [&](const std::string& field, const std::string& pem) {
        return "      " + field + ":\n        inlineString: |\n" + indent(pem, 10);
    };
    const std::vector<std::string> modes = {"Secured", "SkipSAN", "SkipCA", "SkipAll"};
    struct Names {
        std::string label, server_name, sans;
        bool match;
    };
    const std::vector<Names> names = {
        {"sni", "api.test", "", true},
        {"exact", "other.test", "      subjectAltNames: [{type: Exact, value: api.test}]\n", true},
        {"prefix", "other.test", "      subjectAltNames: [{type: Prefix, value: \"spiffe://mesh.test/ns/web/\"}]\n", true},
        {"none", "other.test", "      subjectAltNames: [{type: Exact, value: api.tes}, {type: Prefix, value: \"spiffe://x/\"}]\n", false},
    };
    struct Row {
        std::string name, yaml;
        bool works;
    };
    std::vector<Row> rows;
    auto mes = [&](const std::string& name, int backend, const std::string& verification, const std::string& version) {
        return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(10000 + rows.size()) +
               "}\n  endpoints: [{address: 127.0.0.1, port: " + std::to_string(backend) + "}]\n  tls:\n    enabled: true\n" +
               (version.empty() ? "" : "    version:\n" + version) + "    verification:\n" + verification;
    };
    for (std::size_t m = 0; m < modes.size(); ++m) {
        bool checks_chain = modes[m] == "Secured" || modes[m] == "SkipSAN";
        bool checks_names = modes[m] == "Secured" || modes[m] == "SkipCA";
        std::string mode = "      mode: " + modes[m] + "\n";
        for (bool right_ca : {true, false})
            for (const auto& n : names) {
                std::string name = "m" + std::to_string(m) + (right_ca ? "-ca-" : "-wrongca-") + n.label;
                std::string v = mode + "      serverName: " + n.server_name + "\n" + n.sans +
                                pem_block("caCert", right_ca ? ca.cert_pem : other_ca.cert_pem);
                rows.push_back({name, mes(name, good.port, v, ""), (right_ca || !checks_chain) && (n.match || !checks_names)});
            }
        // Version bounds apply in every mode: a TLS 1.3-only server, with max TLS12 and min TLS13.
        std::string v = mode + "      serverName: api.test\n" + pem_block("caCert", ca.cert_pem);
        std::string name = "m" + std::to_string(m) + "-max12";
        rows.push_back({name, mes(name, tls13.port, v, "      max: TLS12\n"), false});
        name = "m" + std::to_string(m) + "-min13";
        rows.push_back({name, mes(name, tls13.port, v, "      min: TLS13\n"), true});
        // A server that requires a client certificate: with one, and without.
        name = "m" + std::to_string(m) + "-client-cert";
        rows.push_back({name, mes(name, mtls.port, v + pem_block("clientCert", client.cert_pem) + pem_block("clientKey", client.key_pem), ""),
                        true});
        name = "m" + std::to_string(m) + "-no-client-cert";
        rows.push_back({name, mes(name, mtls.port, v, ""), false});
    }
    std::string resources = generator;
    for (const auto& r : rows) resources += r.yaml;
    dir.write("resources/all.yaml", resources);
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  ejectAfter: 1000\n";
    Mesd mesd(dir.path / "mesd", options);
    for (std::size_t i = 0; i < rows.size(); ++i) {
        INFO("MES " << rows[i].name << (rows[i].works ? ": should work" : ": should be refused"));
        auto vip = "127.242." + std::to_string((i + 1) / 256) + "." + std::to_string((i + 1) % 256);
        auto got = say(vip, static_cast<int>(10000 + i), "matrix\n");
        CHECK(got == (rows[i].works ? "xirtam\n" : ""));
    }
    CHECK(rows.size() == 48);
}
