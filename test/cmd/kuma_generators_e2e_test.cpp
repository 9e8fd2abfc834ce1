// Kuma's HostnameGenerator API through mesctl and mesd: spec.extension stored and shown, a
// MES with one still served from its endpoints, generators of no mesh serving every mesh
// (collisions decided per mesh), and Kuma's default generators with their zone.
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <thread>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string dig = "/usr/bin/dig";

std::string mes(const std::string& name, int match_port, int port, const std::string& extra = "",
                const std::string& mesh = "")
{
    return "---\ntype: MeshExternalService\nname: " + name + "\n" + (mesh.empty() ? "" : "mesh: " + mesh + "\n") +
           "spec:\n  match: {port: " + std::to_string(match_port) + ", protocol: tcp}\n"
           "  endpoints: [{address: 127.0.0.1, port: " + std::to_string(port) + "}]\n" + extra;
}

std::string ask(int dns_port, const std::string& name)
{
    auto out = output_of({dig, "@127.0.0.1", "-p", std::to_string(dns_port), name, "+short", "+tries=1", "+time=2"});
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

}  // namespace

TEST_CASE("kuma generators: spec.extension is stored and shown as written")
{
    Dir dir;
    std::string config = dir.write("mesd.yaml", "dataDir: " + (dir.path / "data").string() +
                                                    "\nvip:\n  ipv4: 127.242.0.0/16\n");
    auto ctl = [&](std::vector<std::string> args) { return mesctl_with(config, std::move(args)); };
    std::string input =
        mes("ext", 80, 8080, "  extension:\n    type: my-plugin\n    config:\n      retries: 3\n      hosts: [a, \"b\"]\n") +
        "---\ntype: HostnameGenerator\nname: gen\nspec:\n  selector: {meshExternalService: {}}\n"
        "  template: \"{{ .DisplayName }}.mesh\"\n  extension:\n    type: dns-plugin\n";
    auto applied = ctl({"apply", "-f", dir.write("in.yaml", input)});
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    CHECK_THAT(applied.out, Catch::Contains("created HostnameGenerator gen\n"));

    auto m = ctl({"get", "mes", "ext", "-o", "yaml"});
    REQUIRE(m.exit_code == 0);
    INFO(m.out);
    CHECK_THAT(m.out, Catch::Contains("  extension:\n    type: my-plugin\n    config:\n      retries: 3\n"
                                      "      hosts:\n        - a\n        - b\n"));
    // Kuma's computed labels, and the name generated for it.
    CHECK_THAT(m.out, Catch::Contains("  kuma.io/display-name: ext\n"));
    CHECK_THAT(m.out, Catch::Contains("  kuma.io/origin: zone\n"));
    CHECK_THAT(m.out, Catch::Contains("hostname: ext.mesh"));
    auto g = ctl({"get", "hostnamegenerator", "gen", "-o", "yaml"});
    REQUIRE(g.exit_code == 0);
    CHECK_THAT(g.out, Catch::Contains("  extension:\n    type: dns-plugin\n"));

    // The same input again is unchanged: the extension round-trips through the store.
    CHECK_THAT(ctl({"apply", "-f", (dir.path / "in.yaml").string()}).out,
               Catch::Contains("unchanged MeshExternalService default/ext"));
}

TEST_CASE("kuma generators: a generator of no mesh serves every mesh and collisions are per mesh")
{
    Dir dir;
    std::string config = dir.write("mesd.yaml", "dataDir: " + (dir.path / "data").string() +
                                                    "\nmeshes: [default, payments]\nvip:\n  ipv4: 127.242.0.0/16\n");
    auto ctl = [&](std::vector<std::string> args) { return mesctl_with(config, std::move(args)); };
    std::string input = "---\ntype: HostnameGenerator\nname: every\nspec:\n  selector: {meshExternalService: {}}\n"
                        "  template: \"{{ .DisplayName }}.mesh\"\n"
                        "---\ntype: HostnameGenerator\nname: only-payments\nmesh: payments\nspec:\n"
                        "  selector: {meshExternalService: {}}\n  template: \"{{ .DisplayName }}.pay.mesh\"\n" +
                        mes("api", 80, 8080) + mes("api", 80, 8080, "", "payments");
    auto applied = ctl({"apply", "-f", dir.write("in.yaml", input)});
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    auto in_default = ctl({"get", "mes", "api", "-o", "yaml"}).out;
    auto in_payments = ctl({"get", "mes", "api", "--mesh", "payments", "-o", "yaml"}).out;
    INFO(in_default);
    INFO(in_payments);
    // The same name in two meshes is no collision.
    CHECK_THAT(in_default, Catch::Contains("hostname: api.mesh"));
    CHECK_THAT(in_payments, Catch::Contains("hostname: api.mesh"));
    CHECK_THAT(in_default, !Catch::Contains("Collision"));
    // A generator written with a mesh serves that mesh alone.
    CHECK_THAT(in_payments, Catch::Contains("hostname: api.pay.mesh"));
    CHECK_THAT(in_default, !Catch::Contains("api.pay.mesh"));

    // A generator of no mesh added later reaches the MES of every mesh; deleted, it leaves them.
    auto later = ctl({"apply", "-f", dir.write("later.yaml", "type: HostnameGenerator\nname: later\nspec:\n"
                                                             "  selector: {meshExternalService: {}}\n"
                                                             "  template: \"{{ .Mesh }}-{{ .DisplayName }}.mesh\"\n")});
    REQUIRE(later.exit_code == 0);
    CHECK_THAT(ctl({"get", "mes", "api", "--mesh", "payments", "-o", "yaml"}).out,
               Catch::Contains("hostname: payments-api.mesh"));
    CHECK_THAT(ctl({"get", "mes", "api", "-o", "yaml"}).out, Catch::Contains("hostname: default-api.mesh"));
    REQUIRE(ctl({"delete", "hostnamegenerator", "later"}).exit_code == 0);
    CHECK_THAT(ctl({"get", "mes", "api", "--mesh", "payments", "-o", "yaml"}).out,
               !Catch::Contains("payments-api.mesh"));
}

TEST_CASE("kuma generators: mesd creates Kuma's default generators and answers for their zone")
{
    int backend_port = free_tcp_port();
    Child backend({"/usr/bin/socat", "TCP-LISTEN:" + std::to_string(backend_port) + ",bind=127.0.0.1,fork,reuseaddr",
                   "EXEC:cat"});
    REQUIRE(eventually([&] { return accepting("127.0.0.1", backend_port); }));
    Dir dir;
    MesdOptions options;
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "zone: east\n";
    Mesd mesd(dir.path / "mesd", options);
    auto ctl = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {MESCTL_PATH, "--config", mesd.config()});
        return run(args);
    };
    auto gens = ctl({"get", "hostnamegenerators"});
    INFO(gens.out);
    CHECK_THAT(gens.out, Catch::Contains("local-mesh-external-service"));
    CHECK_THAT(gens.out, Catch::Contains("synced-mesh-external-service"));
    auto local = ctl({"get", "hostnamegenerator", "local-mesh-external-service", "-o", "yaml"}).out;
    CHECK_THAT(local, Catch::Contains("template: \"{{ .DisplayName }}.extsvc.mesh.local\""));
    CHECK_THAT(local, Catch::Contains("kuma.io/origin: zone"));

    // A MES with an extension is served from its own endpoints, under the default's name.
    auto applied = ctl({"apply", "-f", dir.write("in.yaml", mes("echo", 4242, backend_port,
                                                                "  extension:\n    type: my-plugin\n"))});
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    std::string vip;
    REQUIRE(eventually([&] { return (vip = ask(mesd.dns_port(), "echo.extsvc.mesh.local")).starts_with("127.242."); },
                       10s));
    CHECK(eventually([&] { return echoed(vip, 4242, "hello\n") == "hello\n"; }, 10s));
    CHECK_THAT(ctl({"get", "mes", "echo", "-o", "yaml"}).out, Catch::Contains("kuma.io/zone: east"));
    CHECK(mesd.stop() == 0);
}

TEST_CASE("kuma generators: defaultHostnameGenerators false creates none")
{
    Dir dir;
    MesdOptions options;
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "defaultHostnameGenerators: false\n";
    Mesd mesd(dir.path / "mesd", options);
    auto ctl = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {MESCTL_PATH, "--config", mesd.config()});
        return run(args);
    };
    REQUIRE(ctl({"apply", "-f", dir.write("in.yaml", mes("echo", 4242, 9))}).exit_code == 0);
    CHECK_THAT(ctl({"get", "hostnamegenerators"}).out, !Catch::Contains("local-mesh-external-service"));
    std::this_thread::sleep_for(500ms);
    CHECK(ask(mesd.dns_port(), "echo.extsvc.mesh.local").empty());
    CHECK_THAT(mesd.admin_get("/config"), !Catch::Contains("extsvc.mesh.local"));
}
