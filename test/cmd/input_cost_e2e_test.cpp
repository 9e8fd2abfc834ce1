// Input that costs too much, through the real binaries: a 32 MiB document of one-byte
// scalars against mesctl's memory, control bytes and huge names against its stderr and
// mesd's log, and a MES whose TXT answer would not fit any DNS message.
#include "test/support/dns.hpp"

#include <sys/resource.h>

#include <chrono>
#include <regex>
#include <thread>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

const std::string mesctl_path = MESCTL_PATH;

long children_peak_rss_kib()
{
    rusage usage{};
    getrusage(RUSAGE_CHILDREN, &usage);
    return usage.ru_maxrss;
}

bool has_raw_control(std::string_view text)
{
    return std::ranges::any_of(text, [](char c) {
        auto b = static_cast<unsigned char>(c);
        return (b < 0x20 && b != '\n') || b == 0x7f;
    });
}

}  // namespace

TEST_CASE("mesctl validate refuses a 32 MiB document of one-byte scalars quickly and in bounded memory")
{
    TempDir dir;
    std::string text = "x: [a";
    text.reserve(32u * 1024u * 1024u);
    while (text.size() + 4 < 32u * 1024u * 1024u) text += ",a";
    text += "]\n";
    auto path = dir.write("many.yaml", text);
    text = {};
    auto start = std::chrono::steady_clock::now();
    auto r = run({mesctl_path, "validate", path});
    auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK(r.exit_code == 1);
    CHECK(r.out.empty());
    // The map, its key, the list, then 199,998 scalars two columns apart from column 5.
    CHECK(r.err == path + ":1:399999: document has more than 200000 YAML nodes (the limit per document); "
                          "split it into several documents\nmesctl: 1 error(s) in 0 resource(s) and files\n");
    // Before the bound: 61 s and 7.8 GB. The peak of all this process's children so far,
    // which are all smaller than this.
    CHECK(elapsed < 10s);
    CHECK(children_peak_rss_kib() < 256 * 1024);
}

TEST_CASE("mesctl validate prints control bytes escaped and a 10 MB name as an excerpt")
{
    TempDir dir;
    std::string huge(10'000'000, 'n');
    auto path = dir.write("evil.yaml", "type: MeshExternalService\nname: " + huge +
                                           "\nspec:\n  match: {port: 80}\n  \"k\\e]0;owned\\a\\r\": 1\n");
    auto r = run({mesctl_path, "validate", path});
    CHECK(r.exit_code == 1);
    CHECK(r.err.size() < 1000);
    CHECK_FALSE(has_raw_control(r.err));
    CHECK_THAT(r.err, Catch::Contains("(10000000 bytes)"));
    CHECK_THAT(r.err, Catch::Contains("unknown field \"k\\x1b]0;owned\\x07\\r\""));
}

TEST_CASE("mesctl's own messages print the names they quote escaped")
{
    TempDir dir;
    auto config = dir.write("mesd.yaml", "dataDir: " + (dir.path / "data").string() + "\nvip:\n  ipv4: 127.242.0.0/16\n");
    auto r = run({mesctl_path, "--config", config, "get", "mes", "a\x1b[2J\rb"});
    CHECK(r.exit_code == 1);
    CHECK_FALSE(has_raw_control(r.err));
    CHECK_THAT(r.err, Catch::Contains("a\\x1b[2J\\rb not found"));
}

TEST_CASE("control bytes from the conf dir reach mesd's log escaped")
{
    // Written once mesd is ready: a bad file at start logs an error line, which the start-up
    // wait takes for a failed start if it comes before the ready line.
    Fixture f;
    f.dir.write("resources/evil.yaml", "type: MeshExternalService\nname: evil\nspec:\n  match: {port: 80}\n"
                                       "  \"k\\e[2J\\r\\nlevel=error forged\": 1\n");
    std::string log;
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
        log = f.mesd->log();
        if (log.find("unknown field") != std::string::npos) break;
        std::this_thread::sleep_for(50ms);
    }
    CHECK_THAT(log, Catch::Contains("unknown field \\\"k\\\\x1b[2J\\\\r\\\\nlevel=error forged\\\""));
    CHECK_FALSE(has_raw_control(log));
    CHECK(log.find("\nlevel=error forged") == std::string::npos);
}

TEST_CASE("a TXT answer of 10000 endpoints is cut to fit TCP and says how many were left out")
{
    Fixture f({}, big_mes("mes-huge", 10000));
    auto tcp = f.dig_out({"mes-huge.mesh", "TXT", "+tcp", "+norec"});
    CHECK_THAT(tcp, Catch::Contains("status: NOERROR"));
    CHECK_THAT(tcp, Catch::Contains("ANSWER: 1,"));
    std::smatch size;
    REQUIRE(std::regex_search(tcp, size, std::regex("MSG SIZE  rcvd: (\\d+)")));
    auto bytes = std::stoi(size[1]);
    CHECK(bytes <= 65535);
    CHECK(bytes > 60000);
    std::smatch cut;
    REQUIRE(std::regex_search(tcp, cut, std::regex("\"tls=disabled\" \"truncated=(\\d+) more\"\n")));
    auto left_out = std::stoi(cut[1]);
    std::regex endpoint("\"endpoint=endpoint-\\d+");
    auto given = std::distance(std::sregex_iterator(tcp.begin(), tcp.end(), endpoint), std::sregex_iterator());
    CHECK(given > 1000);
    CHECK(given + left_out == 10000);
    CHECK_THAT(tcp, Catch::Contains("\"endpoint=endpoint-0.backends.example.com:8080\""));

    // UDP: no buffer takes it, so TC and no records, and dig retries over TCP by itself.
    auto udp = f.dig_out({"mes-huge.mesh", "TXT", "+bufsize=65535", "+ignore", "+norec"});
    CHECK_THAT(udp, Catch::Contains("flags: qr aa tc;"));
    CHECK_THAT(udp, Catch::Contains("ANSWER: 0,"));
    auto retried = f.dig_out({"mes-huge.mesh", "TXT", "+norec"});
    CHECK_THAT(retried, Catch::Contains("(TCP)"));
    CHECK_THAT(retried, Catch::Contains("more\"\n"));

    // A MES that fits is given whole, with no such string.
    auto small = f.dig_out({"mes-big.mesh", "TXT", "+tcp"});
    CHECK_THAT(small, Catch::Contains("endpoint-19.backends.example.com:8080"));
    CHECK(small.find("truncated=") == std::string::npos);
}

TEST_CASE("a conf dir file of 80000 keys in one mapping does not hold DNS")
{
    std::string wide = "---\ntype: MeshExternalService\nname: wide\nspec:\n  match: {port: 80}\n";
    for (int i = 0; i < 80000; ++i) wide += "  k" + std::to_string(i) + ": 1\n";
    Dir dir;
    dir.write("resources/good.yaml", resources);
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);
    auto query = [&] {
        return output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), "+tries=1", "+time=5",
                          "+short", "mes-http.mesh", "A"});
    };
    REQUIRE(query() == "127.242.0.1\n");

    // The directory is polled each second and read on the loop: while it is read, DNS waits.
    auto start = std::chrono::steady_clock::now();
    dir.write("resources/wide.yaml", wide);
    std::string log;
    while (std::chrono::steady_clock::now() - start < 60s) {
        log = mesd.log();
        if (log.find("keeping the last good state") != std::string::npos) break;
        std::this_thread::sleep_for(100ms);
    }
    // 46 s with the pairwise duplicate check; now the poll's second and a fraction of one
    // (a few seconds on a loaded machine).
    CHECK(std::chrono::steady_clock::now() - start < 15s);
    CHECK_THAT(log, Catch::Contains("unknown field \\\"k79999\\\""));
    CHECK_THAT(log, Catch::Contains("keeping the last good state"));
    CHECK(query() == "127.242.0.1\n");
}
