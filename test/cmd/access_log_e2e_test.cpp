// The access log of the real mesd with workers: lines of many connections at once stay whole
// (to a file and to a pipe), connections open at a shutdown are logged as such, and the
// settings are checked like any other key.
#include "test/support/access_log.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string generator =
    "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

std::string echo_mes(int port, int backend)
{
    return "---\ntype: MeshExternalService\nname: echo\nspec:\n  match: {port: " + std::to_string(port) +
           "}\n  endpoints: [{address: 127.0.0.1, port: " + std::to_string(backend) + "}]\n";
}

// Connections from `threads` threads at once, `each` per thread, for at most 20 s; each sends
// a payload of its own length and checks the echo. Returns the bytes sent by the connections
// that came back whole, and counts them in `done`.
std::uint64_t parallel_connections(int port, int threads, int each, std::atomic<int>& done)
{
    std::atomic<std::uint64_t> bytes{0};
    auto deadline = std::chrono::steady_clock::now() + 20s;
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            for (int i = 0; i < each && std::chrono::steady_clock::now() < deadline; ++i) {
                std::string payload(static_cast<std::size_t>(1 + (t * each + i) % 300), 'a' + static_cast<char>(t % 26));
                payload += "\n";
                if (echoed("127.242.0.1", port, payload) == payload) {
                    bytes += payload.size();
                    ++done;
                }
            }
        });
    for (auto& th : pool) th.join();
    return bytes;
}

void check_whole(const std::vector<std::string>& lines, bool json, int expected, std::uint64_t expected_bytes)
{
    CHECK(lines.size() == static_cast<std::size_t>(expected));
    std::uint64_t up = 0, down = 0;
    int unparsed = 0;
    for (const auto& line : lines) {
        auto f = json ? parse_json_line(line) : parse_logfmt(line);
        if (!f || !f->count("bytes_up") || !f->count("reason")) {
            if (++unparsed <= 3) UNSCOPED_INFO("not a whole line: " << line);
            continue;
        }
        CHECK(f->at("name") == "echo");
        CHECK(f->at("reason") == "client_closed");
        up += std::stoull(f->at("bytes_up"));
        down += std::stoull(f->at("bytes_down"));
    }
    CHECK(unparsed == 0);
    CHECK(up == expected_bytes);
    CHECK(down == expected_bytes);
}

}  // namespace

TEST_CASE("access log with 4 workers: lines of many parallel connections are whole, to a file")
{
    Dir dir;
    EchoBackend echo;
    dir.write("resources/all.yaml", generator + echo_mes(9790, echo.port));
    auto path = (dir.path / "access.log").string();
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  accessLog: {path: " + path + ", format: json}\n";
    options.extra_args = {"--workers", "4"};
    Mesd mesd(dir.path / "mesd", options);

    std::atomic<int> done{0};
    auto bytes = parallel_connections(9790, 8, 40, done);
    CHECK(done == 320);
    REQUIRE(eventually([&] { return whole_lines(file_text(path)).size() >= static_cast<std::size_t>(done.load()); }));
    check_whole(whole_lines(file_text(path)), true, done, bytes);
    CHECK(file_text(path).back() == '\n');
}

TEST_CASE("access log with 4 workers: lines of many parallel connections are whole, through a pipe")
{
    Dir dir;
    EchoBackend echo;
    dir.write("resources/all.yaml", generator + echo_mes(9791, echo.port));
    auto fifo = (dir.path / "access.pipe").string();
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    // The reader holds the pipe open throughout (opened before mesd, which then does not block
    // opening it) and keeps everything.
    int rd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
    REQUIRE(rd >= 0);
    std::string got;
    std::atomic<bool> stop{false};
    std::thread reader([&] {
        char buf[8192];
        while (!stop) {
            pollfd p{rd, POLLIN, 0};
            if (::poll(&p, 1, 50) != 1) continue;
            auto n = ::read(rd, buf, sizeof buf);
            if (n > 0) got.append(buf, static_cast<std::size_t>(n));
        }
    });
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  accessLog: {path: " + fifo + "}\n";
    options.extra_args = {"--workers", "4"};
    std::atomic<int> done{0};
    std::uint64_t bytes = 0;
    {
        Mesd mesd(dir.path / "mesd", options);
        bytes = parallel_connections(9791, 8, 40, done);
        CHECK(done == 320);
        CHECK(mesd.stop() == 0);  // every line written before it exits
    }
    stop = true;
    reader.join();
    ::close(rd);
    check_whole(whole_lines(got), false, done, bytes);
}

TEST_CASE("access log: connections open when mesd stops end with reason stopping")
{
    Dir dir;
    EchoBackend echo;
    dir.write("resources/all.yaml", generator + echo_mes(9782, echo.port));
    auto path = (dir.path / "access.log").string();
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  accessLog: {path: " + path + "}\n";
    Mesd mesd(dir.path / "mesd", options);
    int fd = connect_to("127.242.0.1", 9782);
    REQUIRE(fd >= 0);
    (void)!::send(fd, "hi\n", 3, MSG_NOSIGNAL);
    char buf[8];
    pollfd p{fd, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 3000) == 1);
    REQUIRE(::recv(fd, buf, sizeof buf, 0) == 3);
    CHECK(mesd.stop() == 0);
    ::close(fd);
    auto lines = whole_lines(file_text(path));
    REQUIRE(lines.size() == 1);
    auto f = parse_logfmt(lines[0]);
    REQUIRE(f);
    CHECK(f->at("reason") == "stopping");
    CHECK(f->at("bytes_up") == "3");
    CHECK(f->at("bytes_down") == "3");
}

TEST_CASE("proxy.accessLog: errors at their line and column, and a file that cannot be opened stops the start")
{
    Dir dir;
    auto bad = dir.write("bad.yaml", "dataDir: " + (dir.path / "data").string() +
                                          "\nproxy:\n  accessLog:\n    format: xml\n    when: always\n");
    auto r = run({MESD_PATH, "--config", bad});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains(bad + ":4:5: proxy.accessLog.path: must be given: stdout, stderr or a file"));
    CHECK_THAT(r.err, Catch::Contains(bad + ":4:13: proxy.accessLog.format: \"format\" must be one of [\"logfmt\", \"json\"]"));
    CHECK_THAT(r.err, Catch::Contains(bad + ":5:5: proxy.accessLog.when: unknown field \"when\""));

    auto empty = dir.write("empty.yaml", "proxy:\n  accessLog: {path: \"\"}\n");
    auto e = run({MESD_PATH, "--config", empty});
    CHECK(e.exit_code != 0);
    CHECK_THAT(e.err, Catch::Contains(empty + ":2:21: proxy.accessLog.path: must be stdout, stderr or a file"));

    MesdOptions options;
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  accessLog: {path: " + (dir.path / "no" / "such" / "dir.log").string() + "}\n";
    CHECK_THROWS_WITH(Mesd(dir.path / "mesd", options), Catch::Contains("msg=\"cannot open the access log\"") &&
                                                           Catch::Contains("No such file or directory"));
}

TEST_CASE("access log with workers: a connection refused before any worker takes it gets a line too")
{
    Dir dir;
    EchoBackend echo;
    dir.write("resources/all.yaml", generator + echo_mes(9783, echo.port));
    auto path = (dir.path / "access.log").string();
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "proxy:\n  maxConnections: 2\n  accessLog: {path: " + path + "}\n";
    options.extra_args = {"--workers", "2"};
    Mesd mesd(dir.path / "mesd", options);
    std::vector<int> held;
    for (int i = 0; i < 2; ++i) {
        int fd = connect_to("127.242.0.1", 9783);
        REQUIRE(fd >= 0);
        (void)!::send(fd, "x", 1, MSG_NOSIGNAL);
        char c = 0;
        pollfd p{fd, POLLIN, 0};
        REQUIRE(::poll(&p, 1, 3000) == 1);
        REQUIRE(::recv(fd, &c, 1, 0) == 1);
        held.push_back(fd);
    }
    CHECK(echoed("127.242.0.1", 9783, "refused?\n", 3s).empty());
    for (int fd : held) ::close(fd);
    REQUIRE(eventually([&] { return whole_lines(file_text(path)).size() == 3; }));
    int refused = 0;
    for (const auto& line : whole_lines(file_text(path))) {
        auto f = parse_logfmt(line);
        REQUIRE(f);
        if (f->at("reason") != "refused_limit") continue;
        ++refused;
        CHECK(f->at("name") == "echo");
        CHECK(f->at("vip") == "127.242.0.1:9783");
        CHECK_THAT(f->at("client"), Catch::StartsWith("127.0.0.1:"));
    }
    CHECK(refused == 1);
}
