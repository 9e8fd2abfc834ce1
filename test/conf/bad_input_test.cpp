// Input that is not YAML at all, or far too much of it: a clear error, never a crash or hang.
#include "test/conf/support.hpp"
#include "test/support/tempdir.hpp"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

using namespace test_support;

TEST_CASE("YAML syntax errors carry the position")
{
    auto r = load("type: MeshExternalService\nname: a\nspec:\n  match: {port: 80\n");
    REQUIRE(r.file_errors.size() == 1);
    CHECK(r.file_errors[0].mark.line >= 4);
    CHECK_THAT(r.file_errors[0].format(), Catch::StartsWith("test.yaml:"));
    CHECK_THAT(r.file_errors[0].message, Catch::StartsWith("invalid YAML: "));
    CHECK_FALSE(r.ok());
}

TEST_CASE("a 100,000-deep nested document is refused quickly")
{
    std::string deep(100000, '[');
    deep += std::string(100000, ']');
    auto start = std::chrono::steady_clock::now();
    auto r = load(deep);
    auto elapsed = std::chrono::steady_clock::now() - start;
    REQUIRE(r.file_errors.size() == 1);
    CHECK_THAT(r.file_errors[0].message, Catch::StartsWith("invalid YAML: "));
    CHECK(elapsed < std::chrono::seconds(10));

    std::string deep_map;
    for (int i = 0; i < 100000; ++i) deep_map += "{a: ";
    auto m = load(deep_map);
    CHECK_FALSE(m.ok());
}

TEST_CASE("a 50 MB file is refused by size before parsing")
{
    TempDir dir;
    std::string big(50u * 1024u * 1024u, '#');
    auto path = dir.write("big.yaml", big);
    auto start = std::chrono::steady_clock::now();
    auto r = conf::load_paths(std::vector<std::string>{path});
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    REQUIRE(r.file_errors.size() == 1);
    CHECK(r.file_errors[0].message == "file is 52428800 bytes, larger than the limit of 33554432 bytes; "
                                      "split it into several files");
    CHECK(r.documents.empty());
}

TEST_CASE("binary garbage is not text")
{
    std::mt19937 rng(42);
    std::string garbage(4096, '\0');
    for (auto& c : garbage) c = static_cast<char>(rng() & 0xff);
    auto r = load(garbage);
    REQUIRE(r.file_errors.size() == 1);
    CHECK_THAT(r.file_errors[0].message, Catch::StartsWith("not a text file (NUL byte at offset ") ||
                                             Catch::StartsWith("not UTF-8 text"));
    auto latin1 = load("type: MeshExternalService\nname: caf\xe9\n");
    REQUIRE(latin1.file_errors.size() == 1);
    CHECK(latin1.file_errors[0].format() == "test.yaml:2:10: not UTF-8 text (invalid byte at offset 35)");
}

TEST_CASE("random bytes without NULs never crash the parser")
{
    std::mt19937 rng(7);
    for (int round = 0; round < 200; ++round) {
        std::string s(static_cast<std::size_t>(rng() % 512), ' ');
        for (auto& c : s) c = "{}[]:,-?!&*#|>'\"%@` \nabc01"[rng() % 27];
        auto r = load(s);
        // Either a clear error or documents; a crash or hang fails the test run itself.
        CHECK((r.ok() || !messages(r).empty()));
    }
}

TEST_CASE("an empty file is an error")
{
    auto r = load("");
    REQUIRE(r.file_errors.size() == 1);
    CHECK(r.file_errors[0].format() == "test.yaml: no YAML documents in the file (it is empty)");
    CHECK_FALSE(load("# only a comment\n---\n").ok());
}

TEST_CASE("directories: yaml and yml files in name order, hidden entries skipped")
{
    TempDir dir;
    dir.write("b.yaml", "type: MeshExternalService\nname: b\nspec: {}\n");
    dir.write("a.yml", "type: MeshExternalService\nname: a\nspec: {}\n");
    dir.write("sub/c.yaml", "type: MeshExternalService\nname: c\nspec: {}\n");
    dir.write("notes.txt", "not yaml at all: [");
    dir.write("..data/old.yaml", "type: MeshExternalService\nname: a\nspec: {}\n");
    auto r = conf::load_paths(std::vector<std::string>{dir.path.string()});
    CHECK_VALID(r);
    REQUIRE(r.documents.size() == 3);
    CHECK(r.documents[0].resource.name == "a");
    CHECK(r.documents[1].resource.name == "b");
    CHECK(r.documents[2].resource.name == "c");
    CHECK_THAT(r.documents[0].resource.mark.file, Catch::EndsWith("a.yml"));
}

TEST_CASE("unreadable paths are reported")
{
    auto r = conf::load_paths(std::vector<std::string>{"/nonexistent/mesd.yaml"});
    REQUIRE(r.unreadable.size() == 1);
    REQUIRE(r.file_errors.size() == 1);
    CHECK(r.file_errors[0].format() == "/nonexistent/mesd.yaml: cannot read: No such file or directory");
}

TEST_CASE("the examples shipped in conf/examples all validate")
{
    auto r = conf::load_paths(std::vector<std::string>{MESD_SOURCE_DIR "/conf/examples"});
    CHECK_VALID(r);
    std::vector<std::string> names;
    for (const auto& d : r.documents) names.push_back(d.resource.name);
    for (auto want : {"example", "mes-tcp", "mes-tcp-tls", "mes-tcp-mtls", "mes-http", "mes-https", "mes-grpc",
                      "mes-grpcs", "mes-unix", "mes-k8s-api"})
        CHECK(std::ranges::find(names, want) != names.end());
}
