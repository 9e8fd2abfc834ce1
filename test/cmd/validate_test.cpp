// `mesctl validate` run as a real process: output streams and exit codes.
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

using test_support::run;
using test_support::TempDir;

namespace {


const std::string mesctl = MESCTL_PATH;

}  // namespace

TEST_CASE("validate prints ok per document and exits 0")
{
    auto r = run({mesctl, "validate", MESD_SOURCE_DIR "/conf/examples"});
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.out, Catch::Contains("ok HostnameGenerator default/example\n"));
    CHECK_THAT(r.out, Catch::Contains("ok MeshExternalService default/mes-tcp\n"));
    CHECK_THAT(r.out, Catch::Contains("ok MeshExternalService default/mes-k8s-api\n"));
    // The seed's mTLS certificate has expired: a warning on stderr, still valid.
    CHECK_THAT(r.err, Catch::Contains("mes-tcp-mtls.yaml:18:17: warning: MeshExternalService default/mes-tcp-mtls: "
                                      "spec.tls.verification.clientCert.inline: certificate expired on 2024-06-15"));
}

TEST_CASE("validate reports errors on stderr and exits 1")
{
    TempDir dir;
    auto good = dir.write("good.yaml", "type: MeshExternalService\nname: good\nspec: {}\n");
    auto bad = dir.write("bad.yaml", "type: MeshExternalService\nname: bad\nspec:\n  match:\n    port: 0\n");
    auto r = run({mesctl, "validate", good, bad});
    CHECK(r.exit_code == 1);
    CHECK(r.out == "ok MeshExternalService default/good\n");
    CHECK_THAT(r.err, Catch::Contains(bad + ":5:11: MeshExternalService default/bad: spec.match.port: "
                                            "port must be a valid (1-65535)\n"));
    CHECK_THAT(r.err, Catch::Contains("1 error(s) in 1 resource(s)"));

    auto quiet = run({mesctl, "validate", "--quiet", good, bad});
    CHECK(quiet.exit_code == 1);
    CHECK(quiet.out.empty());
    CHECK_THAT(quiet.err, Catch::Contains("spec.match.port"));

    auto quiet_ok = run({mesctl, "validate", "-q", good});
    CHECK(quiet_ok.exit_code == 0);
    CHECK(quiet_ok.out.empty());
    CHECK(quiet_ok.err.empty());
}

TEST_CASE("validate: YAML syntax errors and empty files exit 1")
{
    TempDir dir;
    auto broken = dir.write("broken.yaml", "a: [1, 2\n");
    auto r = run({mesctl, "validate", broken});
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::StartsWith(broken + ":"));
    CHECK_THAT(r.err, Catch::Contains("invalid YAML"));
    auto empty = dir.write("empty.yaml", "");
    CHECK(run({mesctl, "validate", empty}).exit_code == 1);
}

TEST_CASE("validate reads standard input as -")
{
    auto r = run({mesctl, "validate", "-"}, "type: Secret\nname: s\ndata: dGVzdA==\n");
    CHECK(r.exit_code == 0);
    CHECK(r.out == "ok Secret default/s\n");
}

TEST_CASE("usage errors and unreadable paths exit 2")
{
    auto none = run({mesctl, "validate"});
    CHECK(none.exit_code == 2);
    CHECK_THAT(none.err, Catch::Contains("no PATH given"));
    CHECK(run({mesctl}).exit_code == 2);
    CHECK(run({mesctl, "frobnicate"}).exit_code == 2);
    CHECK(run({mesctl, "validate", "--bogus", "x"}).exit_code == 2);
    auto missing = run({mesctl, "validate", "/nonexistent/file.yaml"});
    CHECK(missing.exit_code == 2);
    CHECK_THAT(missing.err, Catch::Contains("/nonexistent/file.yaml: cannot read: No such file or directory"));
    auto help = run({mesctl, "help"});
    CHECK(help.exit_code == 0);
    CHECK_THAT(help.out, Catch::Contains("validate"));
}
