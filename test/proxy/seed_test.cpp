// Every example of the MeshExternalService docs (conf/examples/), exactly as written, end to
// end through mesd. Each runs in its own network namespace, where a dnsmasq points the
// public names (tcpbin.com, httpbin.org, grpcbin.test.k6.io) at local stand-ins listening
// on the examples' ports, holding certificates for those names from a CA made here, which
// mesd trusts as its system store (SSL_CERT_FILE).
#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/netns.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string ip = "/usr/sbin/ip";
const std::string python = "/usr/bin/python3";

std::string slurp(const std::filesystem::path& p)
{
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// One seed example with its stand-in: what listens for the public host, and how a client
// checks the result.
struct Example {
    std::string file;         // in conf/examples/
    std::string host;         // the public name the example points at
    std::function<std::vector<std::string>(const Dir&, const std::string& cert, const std::string& key)> stand_in;
    int port;                 // the stand-in's port (the example's endpoint port)
    std::function<void(const Namespace&, const std::string& vip, const Dir&)> check;
};

std::string nginx_conf(const Dir& dir, const std::string& listen, const std::string& cert, const std::string& key)
{
    return nginx_config(dir.path, "    listen " + listen + ";\n" +
                                      (cert.empty() ? "" : "    ssl_certificate " + cert + ";\n    ssl_certificate_key " + key + ";\n") +
                                      "    location / { return 200 \"host=$http_host scheme=$scheme\\n\"; }\n");
}

}  // namespace

TEST_CASE("every seed example works end to end against a local stand-in for its public host")
{
    const std::string examples = std::string(MESD_SOURCE_DIR) + "/conf/examples/";
    const std::string peer = std::string(MESD_SOURCE_DIR) + "/test/proxy/peers/grpc_echo.py";
    std::vector<Example> all = {
        {"mes-tcp.yaml", "tcpbin.com",
         [](const Dir&, const std::string&, const std::string&) {
             return std::vector<std::string>{"/usr/bin/socat", "TCP-LISTEN:4242,bind=127.0.0.1,fork,reuseaddr", "EXEC:cat"};
         },
         4242,
         [](const Namespace& ns, const std::string& vip, const Dir&) {
             CHECK(ns.in({"/usr/bin/nc", "-N", "-w", "5", vip, "4242"}, "echo this\n").out == "echo this\n");
         }},
        {"mes-tcp-tls.yaml", "tcpbin.com",
         [](const Dir&, const std::string& cert, const std::string& key) {
             return std::vector<std::string>{"/usr/bin/socat",
                                             "OPENSSL-LISTEN:4243,bind=127.0.0.1,fork,reuseaddr,verify=0,cert=" + cert + ",key=" + key,
                                             "EXEC:cat"};
         },
         4243,
         [](const Namespace& ns, const std::string& vip, const Dir&) {
             CHECK(ns.in({"/usr/bin/nc", "-N", "-w", "5", vip, "4243"}, "echo this\n").out == "echo this\n");
         }},
        {"mes-tcp-mtls.yaml", "tcpbin.com",
         // Asks for a client certificate and reports it (the example's is signed by tcpbin's
         // own CA, which is not at hand, so it is shown rather than verified).
         [](const Dir&, const std::string& cert, const std::string& key) {
             return std::vector<std::string>{"/usr/bin/openssl", "s_server", "-accept", "127.0.0.1:4244", "-cert", cert, "-key", key,
                                             "-verify", "1", "-rev"};
         },
         4244,
         [](const Namespace& ns, const std::string& vip, const Dir& dir) {
             CHECK(ns.in({"/usr/bin/nc", "-N", "-w", "5", vip, "4244"}, "echo this\n").out.find("siht ohce") != std::string::npos);
             CHECK((slurp(dir.path / "stand-in.out") + slurp(dir.path / "stand-in.err")).find("CN = tcpbin.com-client") != std::string::npos);
         }},
        {"mes-http.yaml", "httpbin.org",
         [](const Dir& dir, const std::string&, const std::string&) {
             dir.write("nginx.conf", nginx_conf(dir, "127.0.0.1:80", "", ""));
             return std::vector<std::string>{"/usr/sbin/nginx", "-c", (dir.path / "nginx.conf").string(), "-e",
                                             (dir.path / "nginx.err").string()};
         },
         80,
         [](const Namespace& ns, const std::string& vip, const Dir&) {
             CHECK(ns.in({"/usr/bin/curl", "-sS", "--max-time", "5", "http://" + vip + "/headers"}).out ==
                   "host=httpbin.org scheme=http\n");
         }},
        {"mes-https.yaml", "httpbin.org",
         [](const Dir& dir, const std::string& cert, const std::string& key) {
             dir.write("nginx.conf", nginx_conf(dir, "127.0.0.1:80 ssl", cert, key));
             return std::vector<std::string>{"/usr/sbin/nginx", "-c", (dir.path / "nginx.conf").string(), "-e",
                                             (dir.path / "nginx.err").string()};
         },
         80,
         [](const Namespace& ns, const std::string& vip, const Dir&) {
             CHECK(ns.in({"/usr/bin/curl", "-sS", "--max-time", "5", "http://" + vip + "/headers"}).out ==
                   "host=httpbin.org scheme=https\n");
         }},
        {"mes-grpc.yaml", "grpcbin.test.k6.io",
         [peer](const Dir&, const std::string&, const std::string&) {
             return std::vector<std::string>{python, peer, "serve", "127.0.0.1:9000"};
         },
         9000,
         [peer](const Namespace& ns, const std::string& vip, const Dir&) {
             CHECK(ns.in({python, peer, "call", vip + ":9000", "plain"}).out == "echo:plain\n");
             CHECK(ns.in({python, peer, "list", vip + ":9000"}).out == "mesd.test.Echo\ngrpc.reflection.v1alpha.ServerReflection\n");
         }},
        {"mes-grpcs.yaml", "grpcbin.test.k6.io",
         [peer](const Dir&, const std::string& cert, const std::string& key) {
             return std::vector<std::string>{python, peer, "serve", "127.0.0.1:9000", cert, key};
         },
         9000,
         [peer](const Namespace& ns, const std::string& vip, const Dir&) {
             CHECK(ns.in({python, peer, "call", vip + ":9000", "secure"}).out == "echo:secure\n");
             CHECK(ns.in({python, peer, "list", vip + ":9000"}).out == "mesd.test.Echo\ngrpc.reflection.v1alpha.ServerReflection\n");
         }},
    };

    for (const auto& ex : all) {
        SECTION(ex.file)
        {
            Dir dir;
            Namespace ns("mesd-seed");
            auto ca = make_ca("stand-in CA");
            auto leaf = make_leaf(ca, ex.host, {"DNS:" + ex.host});
            auto ca_file = dir.write("ca.crt", ca.cert_pem);
            auto cert = dir.write("leaf.crt", leaf.cert_pem);
            auto key = dir.write("leaf.key", leaf.key_pem);

            Child dnsmasq(ns.wrap({"/usr/sbin/dnsmasq", "-k", "--user=root", "--listen-address=127.0.0.1", "--bind-interfaces",
                                   "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=",
                                   "--address=/" + ex.host + "/127.0.0.1", "--port=53"}),
                          (dir.path / "dnsmasq.out").string(), (dir.path / "dnsmasq.err").string());
            Child stand_in(ns.wrap(ex.stand_in(dir, cert, key)), (dir.path / "stand-in.out").string(),
                           (dir.path / "stand-in.err").string());
            REQUIRE(eventually([&] {
                return ns.in({"/usr/bin/nc", "-z", "-w", "1", "127.0.0.1", std::to_string(ex.port)}).exit_code == 0;
            }, 10s));

            // The example and the generator, exactly as in conf/examples/.
            std::filesystem::create_directories(dir.path / "resources");
            std::filesystem::copy_file(examples + ex.file, dir.path / "resources" / ex.file);
            std::filesystem::copy_file(examples + "hostnamegenerator.yaml", dir.path / "resources/hostnamegenerator.yaml");
            MesdOptions options;
            options.wrapper = ns.wrap({"/usr/bin/env", "SSL_CERT_FILE=" + ca_file});
            options.conf_dir = (dir.path / "resources").string();
            options.dns_section = "  forward:\n    upstreams: [\"127.0.0.1:53\"]\n";
            Mesd mesd(dir.path / "mesd", options);
            std::string name = ex.file.substr(0, ex.file.size() - 5);
            auto vip = ns.in({"/usr/bin/dig", "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), name + ".mesh", "+short"}).out;
            while (!vip.empty() && vip.back() == '\n') vip.pop_back();
            REQUIRE(vip == "127.242.0.1");
            ex.check(ns, vip, dir);
            INFO(mesd.log());
        }
    }
}
