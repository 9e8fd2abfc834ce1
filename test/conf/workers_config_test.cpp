// workers and workerAffinity: defaults, bounds, MESD_WORKERS.
#include "test/conf/support.hpp"

#include "test/support/tempdir.hpp"

#include <cstdlib>
#include <optional>
#include <string>

TEST_CASE("workers default to one per CPU and are not pinned")
{
    auto r = conf::load_config_text("", "mesd.yaml");
    REQUIRE(r.ok());
    CHECK(r.config.workers == 0);
    CHECK(r.config.worker_affinity == "none");
}

TEST_CASE("workers and workerAffinity are read")
{
    auto r = conf::load_config_text("workers: 4\nworkerAffinity: auto\n", "mesd.yaml");
    REQUIRE(r.ok());
    CHECK(r.config.workers == 4);
    CHECK(r.config.worker_affinity == "auto");
}

TEST_CASE("workers out of range or of the wrong shape point at the key")
{
    auto many = conf::load_config_text("meshes: [default]\nworkers: 65\n", "mesd.yaml");
    REQUIRE(many.errors.size() == 1);
    CHECK(many.errors[0].format().starts_with("mesd.yaml:2:10: workers: "));
    auto negative = conf::load_config_text("workers: -1\n", "mesd.yaml");
    REQUIRE(negative.errors.size() == 1);
    CHECK(negative.errors[0].format().starts_with("mesd.yaml:1:10: workers: "));
    auto affinity = conf::load_config_text("workerAffinity: sometimes\n", "mesd.yaml");
    REQUIRE(affinity.errors.size() == 1);
    CHECK_THAT(affinity.errors[0].format(), Catch::Contains("mesd.yaml:1:17: workerAffinity: "));
    CHECK_THAT(affinity.errors[0].format(), Catch::Contains("auto"));
}

TEST_CASE("MESD_WORKERS overrides the file and a bad value is an error naming it")
{
    test_support::TempDir dir;
    auto file = dir.write("mesd.yaml", "workers: 2\n");
    // The suite may run with MESD_WORKERS set for every mesd it starts: put it back after.
    std::optional<std::string> before;
    if (const char* v = std::getenv("MESD_WORKERS")) before = v;
    ::setenv("MESD_WORKERS", "3", 1);
    auto r = conf::load_config(file);
    CHECK(r.ok());
    CHECK(r.config.workers == 3);
    ::setenv("MESD_WORKERS", "three", 1);
    auto bad = conf::load_config(file);
    ::unsetenv("MESD_WORKERS");
    auto from_file = conf::load_config(file);
    if (before) ::setenv("MESD_WORKERS", before->c_str(), 1);
    REQUIRE(bad.errors.size() == 1);
    CHECK_THAT(bad.errors[0].format(), Catch::Contains("MESD_WORKERS"));
    CHECK_THAT(bad.errors[0].format(), Catch::Contains("three"));
    CHECK(from_file.config.workers == 2);
}
