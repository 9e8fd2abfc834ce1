// The resource fuzzer's seeds and finds, replayed in every build: each file of
// test/conf/fuzz-corpus/ (where an input the fuzzer finds is added), conf/examples/,
// conf/kuma-examples/ and test/conf/kuma/ goes through the properties the fuzzer checks.
#include "test/conf/fuzz_conf_checks.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

TEST_CASE("every input of the resource fuzzer's corpus holds the fuzzer's properties")
{
    std::size_t inputs = 0, valid = 0;
    for (const char* dir : {"/test/conf/fuzz-corpus", "/conf/examples", "/conf/kuma-examples", "/test/conf/kuma"}) {
        for (const auto& entry : std::filesystem::recursive_directory_iterator(std::string(MESD_SOURCE_DIR) + dir)) {
            if (!entry.is_regular_file()) continue;
            std::ifstream in(entry.path(), std::ios::binary);
            std::stringstream text;
            text << in.rdbuf();
            INFO(entry.path().string());
            valid += test_support::check_conf_input(text.str(), [](bool ok, const char* what) {
                INFO(what);
                CHECK(ok);
            });
            ++inputs;
        }
    }
    CHECK(inputs >= 60);
    CHECK(valid >= 20);  // the examples and Kuma's valid cases reach generation
}
