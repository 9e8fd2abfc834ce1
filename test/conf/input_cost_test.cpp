// Input that costs too much to read: many keys, many nodes, bytes that are not UTF-8 or
// that would drive a terminal, values too long to echo. Each is refused or reported quickly
// and in a few bytes.
#include "test/conf/support.hpp"

#include <chrono>
#include <ctime>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

// CPU time, not wall time: what is measured is the work, whatever else shares the machine.
std::chrono::duration<double> cpu_time()
{
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

std::string mes_with_spec(const std::string& spec_lines)
{
    return "type: MeshExternalService\nname: a\nspec:\n  match: {port: 80}\n" + spec_lines;
}

}  // namespace

TEST_CASE("80000 keys in one mapping are read in linear time and duplicates still carry line:col")
{
    std::string spec;
    for (int i = 0; i < 80000; ++i) spec += "  k" + std::to_string(i) + ": 1\n";
    spec += "  k5: 2\n";  // line 4 + 80,001
    auto text = mes_with_spec(spec);
    REQUIRE(text.size() > 780'000);
    auto start = cpu_time();
    auto r = load(text);
    // The pairwise check took 46 s here; the hash table about 0.5 s.
    CHECK(cpu_time() - start < 5s);
    REQUIRE(r.documents.size() == 1);
    CHECK(r.documents[0].diagnostics.size() == 80001);  // 80,000 unknown fields and the duplicate
    CHECK(has_error(r, "spec.k5", "duplicate field \"k5\""));
    auto all = messages(r);
    CHECK(std::ranges::count(all, std::string("test.yaml:80005:3: MeshExternalService default/a: spec.k5: "
                                              "duplicate field \"k5\"")) == 1);
    CHECK(std::ranges::count(all, std::string("test.yaml:5:3: MeshExternalService default/a: spec.k0: "
                                              "unknown field \"k0\"")) == 1);
}

TEST_CASE("a document past the node bound is refused before yaml-cpp builds it")
{
    // 1,000,000 scalars in 2 MB: five times the bound.
    std::string text = "x: [a";
    text.reserve(2'000'010);
    for (int i = 1; i < 1'000'000; ++i) text += ",a";
    text += "]\n";
    auto start = cpu_time();
    auto r = load(text);
    CHECK(cpu_time() - start < 3s);
    REQUIRE(r.file_errors.size() == 1);
    CHECK(r.documents.empty());
    const auto& e = r.file_errors[0];
    CHECK(e.mark.file == "test.yaml");
    CHECK(e.mark.line == 1);
    CHECK(e.message == "document has more than 200000 YAML nodes (the limit per document); "
                       "split it into several documents");
    CHECK_THAT(e.format(), Catch::StartsWith("test.yaml:1:"));

    // Block style counts the same, and the position is where the bound was passed.
    std::string block = "---\nx:\n";
    for (int i = 0; i < 250'000; ++i) block += "- a\n";
    auto b = load(block);
    REQUIRE(b.file_errors.size() == 1);
    CHECK(b.file_errors[0].mark.line == 2 + 199'998);
}

TEST_CASE("the node bound is per document and leaves room for a MES of 10000 endpoints")
{
    std::string spec = "  endpoints:\n";
    for (int i = 0; i < 10000; ++i) spec += "  - {address: e" + std::to_string(i) + ".example.com, port: 8080}\n";
    auto r = load(mes_with_spec(spec));
    CHECK(r.file_errors.empty());
    REQUIRE(r.documents.size() == 1);
    CHECK(r.ok());
    CHECK(r.documents[0].resource.mes()->endpoints.size() == 10000);

    // 300 documents of 1,000 nodes each: 300,000 nodes in the file, each document far under.
    std::string many;
    for (int d = 0; d < 300; ++d) {
        many += "---\ntype: MeshExternalService\nname: m" + std::to_string(d) + "\nspec:\n  match: {port: 80}\n"
                "  endpoints:\n";
        for (int i = 0; i < 200; ++i) many += "  - {address: e" + std::to_string(i) + ".example.com, port: 80}\n";
    }
    auto m = load(many);
    CHECK(m.file_errors.empty());
    CHECK(m.documents.size() == 300);
    CHECK(m.ok());
}

TEST_CASE("UTF-8 is checked as RFC 3629 has it")
{
    using conf::invalid_utf8_at;
    constexpr auto npos = std::string_view::npos;
    CHECK(invalid_utf8_at("plain ascii") == npos);
    CHECK(invalid_utf8_at("\xc2\x80") == npos);              // U+0080
    CHECK(invalid_utf8_at("\xed\x9f\xbf") == npos);          // U+D7FF, the last before the surrogates
    CHECK(invalid_utf8_at("\xee\x80\x80") == npos);          // U+E000, the first after them
    CHECK(invalid_utf8_at("\xf0\x90\x80\x80") == npos);      // U+10000
    CHECK(invalid_utf8_at("\xf4\x8f\xbf\xbf") == npos);      // U+10FFFF
    CHECK(invalid_utf8_at("ab\xc0\xaf") == 2);               // overlong '/'
    CHECK(invalid_utf8_at("ab\xc1\xbf") == 2);               // overlong
    CHECK(invalid_utf8_at("\xe0\x80\xaf") == 0);             // overlong in three bytes
    CHECK(invalid_utf8_at("\xf0\x80\x80\xaf") == 0);         // overlong in four bytes
    CHECK(invalid_utf8_at("x\xed\xa0\x80") == 1);            // U+D800, a surrogate
    CHECK(invalid_utf8_at("\xed\xbf\xbf") == 0);             // U+DFFF
    CHECK(invalid_utf8_at("\xf4\x90\x80\x80") == 0);         // U+110000
    CHECK(invalid_utf8_at("\xf5\x80\x80\x80") == 0);
    CHECK(invalid_utf8_at("\xff") == 0);
    CHECK(invalid_utf8_at("\x80") == 0);                     // a continuation byte alone
    CHECK(invalid_utf8_at("\xe2\x82") == 0);                 // cut short
    CHECK(invalid_utf8_at("\xe2\x28\xa1") == 0);             // bad continuation

    // In a file: refused with the offset of the first bad byte.
    for (std::string bad : {"\xed\xa0\x80", "\xe0\x80\xaf", "\xf4\x90\x80\x80"}) {
        auto r = load("type: MeshExternalService\nname: " + bad + "\n");
        REQUIRE(r.file_errors.size() == 1);
        CHECK(r.file_errors[0].message == "not UTF-8 text (invalid byte at offset 32)");
        CHECK(r.file_errors[0].mark.line == 2);
        CHECK(r.file_errors[0].mark.col == 7);
    }
}

TEST_CASE("escapes in quoted scalars cannot make what RFC 3629 forbids")
{
    // The file is plain ASCII; the escapes name a surrogate and a code point past U+10FFFF.
    // yaml-cpp refuses both with the position, and the reader checks every string it is
    // given again, keys included.
    for (std::string escape : {"\\ud800", "\\udfff", "\\U00110000"}) {
        auto r = load(mes_with_spec("  endpoints:\n  - address: \"a" + escape + "b.example.com\"\n    port: 80\n"));
        REQUIRE(r.file_errors.size() == 1);
        CHECK(r.file_errors[0].mark.line == 6);
        CHECK_THAT(r.file_errors[0].message, Catch::StartsWith("invalid YAML: invalid unicode"));
    }
    // What they may name is kept as it is.
    auto ok = load(mes_with_spec("  endpoints:\n  - address: \"caf\\u00e9\\U0010fffd.example.com\"\n    port: 80\n"));
    REQUIRE(ok.documents.size() == 1);
    CHECK(ok.documents[0].resource.mes()->endpoints.at(0).address == "caf\xc3\xa9\xf4\x8f\xbf\xbd.example.com");
}

TEST_CASE("control bytes are escaped and long values cut to an excerpt in messages")
{
    CHECK(conf::escape_controls("a\rb\x1b[2Jc\n\t\x7f") == "a\\rb\\x1b[2Jc\\n\\t\\x7f");
    CHECK(conf::escape_controls("caf\xc3\xa9") == "caf\xc3\xa9");           // UTF-8 stays as it is
    CHECK(conf::escape_controls("\xc2\x9b" "31m") == "\\xc2\\x9b31m");       // C1 CSI
    CHECK(conf::escape_controls("a\xff" "b\xed\xa0\x80") == "a\\xffb\\xed\\xa0\\x80");
    CHECK(conf::excerpt("short") == "\"short\"");
    std::string long_value(10'000'000, 'x');
    CHECK(conf::excerpt(long_value) == "\"" + std::string(64, 'x') + "...\" (10000000 bytes)");
    // A cut never splits a character.
    std::string accents;
    for (int i = 0; i < 100; ++i) accents += "\xc3\xa9";
    CHECK(conf::invalid_utf8_at(conf::excerpt(accents, 63)) == std::string_view::npos);

    // Through the loader: an unknown field named with ESC and CR, and a 10 MB name.
    auto r = load(mes_with_spec("  \"evil\\e[2J\\rkey\": 1\n"));
    auto all = messages(r);
    REQUIRE(all.size() == 1);
    // A key that is not plain text is quoted in the path too.
    CHECK(all[0] == "test.yaml:5:3: MeshExternalService default/a: spec.\"evil\\x1b[2J\\rkey\": "
                    "unknown field \"evil\\x1b[2J\\rkey\"");

    std::string huge(10'000'000, 'n');
    auto named = load("type: MeshExternalService\nname: " + huge + "\nspec:\n  match: {port: 80}\n  bogus: 1\n");
    auto lines = messages(named);
    REQUIRE(lines.size() == 2);
    for (const auto& line : lines) {
        CHECK(line.size() < 400);
        CHECK_THAT(line, Catch::Contains("(10000000 bytes)"));
    }
    CHECK_THAT(lines[1], Catch::Contains("spec.bogus: unknown field \"bogus\""));
    CHECK(lines[0].find('\r') == std::string::npos);
}
