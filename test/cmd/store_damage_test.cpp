// A damaged data.mdb (cut short, or bytes flipped in its meta or data pages) through the real
// mesctl and mesd: every command and every start ends with an exit status and a message
// naming the store, never with a signal.
#include "test/support/dns.hpp"
#include "test/support/resources.hpp"
#include "test/support/mesd.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include "store/detail/guard.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <thread>

using test_support::Mesd;
using test_support::MesdOptions;
using test_support::raw_query;
using test_support::run;
using test_support::RunResult;
using test_support::TempDir;
using test_support::udp_exchange;
using test_support::generator_doc;
using test_support::mes_doc;

namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p)
{
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void spit(const fs::path& p, const std::string& bytes)
{
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << bytes;
}

// What a command or a start did with a damaged store.
struct Outcome {
    bool by_signal = false;
    int exit_code = 0;
    std::string err;
};

// A mesd started on `config`, its log going to `log_path`.
struct Started {
    pid_t pid = -1;
    fs::path log_path;
};

Started launch_mesd(const std::string& config, const fs::path& log_path)
{
    // Emptied before the fork: the last start's "ready" must not be taken for this one's.
    spit(log_path, "");
    pid_t pid = ::fork();
    if (pid == 0) {
        int fd = ::open(log_path.c_str(), O_WRONLY | O_APPEND);
        ::dup2(fd, 2);
        int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::execl(MESD_PATH, MESD_PATH, "--config", config.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    return Started{pid, log_path};
}

// Waits (at most `limit`) for the mesd to become ready or to exit; a ready one is stopped
// with SIGTERM.
Outcome finish_mesd(const Started& started, std::chrono::milliseconds limit)
{
    Outcome o;
    int status = 0;
    auto deadline = std::chrono::steady_clock::now() + limit;
    bool reaped = false;
    while (std::chrono::steady_clock::now() < deadline) {
        if (::waitpid(started.pid, &status, WNOHANG) == started.pid) {
            reaped = true;
            break;
        }
        if (slurp(started.log_path).find("msg=ready") != std::string::npos) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!reaped) {
        ::kill(started.pid, SIGTERM);
        ::waitpid(started.pid, &status, 0);
    }
    o.by_signal = WIFSIGNALED(status);
    o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    o.err = slurp(started.log_path);
    return o;
}

Outcome from(const RunResult& r) { return Outcome{r.exit_code == -1, r.exit_code, r.err}; }

}  // namespace

TEST_CASE("a damaged store is an error never a crash in mesctl and mesd")
{
    TempDir dir;
    fs::path data = dir.path / "data";
    std::string config = dir.write("mesctl.yaml", "dataDir: " + data.string() + "\nvip:\n  ipv4: 127.242.0.0/16\n");
    fs::path mesd_data = dir.path / "mesd-data";
    std::string mesd_config = dir.write("mesd.yaml", "dataDir: " + mesd_data.string() +
                                                         "\nvip:\n  ipv4: 127.242.0.0/16\nadmin:\n  listen: 127.0.0.1:0\n"
                                                         "dns:\n  listen: [\"127.0.0.1:0\"]\n");
    fs::create_directories(mesd_data);
    auto ctl = [&](std::vector<std::string> args) { return test_support::mesctl_with(config, std::move(args)); };
    // A few dozen MES: a store of a handful of pages, each kind of page present.
    std::string docs = generator_doc;
    for (int i = 0; i < 40; ++i) docs += mes_doc("mes-" + std::to_string(i), 1000 + i);
    spit(dir.path / "all.yaml", docs);
    spit(dir.path / "one.yaml", mes_doc("mes-new", 80));
    auto applied = ctl({"apply", "-f", (dir.path / "all.yaml").string()});
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);
    REQUIRE(ctl({"check"}).exit_code == 0);
    const std::string good = slurp(data / "data.mdb");
    const std::size_t page = 4096;
    REQUIRE(good.size() >= 4 * page);

    std::mt19937_64 rng(20261127);
    auto pick = [&](std::size_t lo, std::size_t hi) { return std::uniform_int_distribution<std::size_t>(lo, hi - 1)(rng); };
    int failures = 0, refused_starts = 0;
    auto started = std::chrono::steady_clock::now();
    for (int i = 0; i < 100; ++i) {
        std::string bytes = good;
        std::string what;
        switch (i % 3) {
        case 0: {
            bytes.resize(pick(0, good.size()));
            what = "truncated to " + std::to_string(bytes.size());
            break;
        }
        case 1: {
            // The meta pages' header and MDB_meta: where every byte matters.
            std::size_t at = pick(0, 2) * page + pick(0, 16 + 136);
            bytes[at] = static_cast<char>(bytes[at] ^ (1 << pick(0, 8)));
            what = "meta bit flipped at " + std::to_string(at);
            break;
        }
        default: {
            for (int n = 0; n < 3; ++n) {
                std::size_t at = pick(2 * page, good.size());
                bytes[at] = static_cast<char>(bytes[at] ^ static_cast<int>(pick(1, 256)));
                what += "data byte flipped at " + std::to_string(at) + " ";
            }
        }
        }
        INFO("corruption " << i << ": " << what);
        // mesd starts on a copy of its own while the mesctl commands run one after the other,
        // each on the damaged file afresh (a successful apply rewrites it).
        fs::remove(mesd_data / "lock.mdb");
        spit(mesd_data / "data.mdb", bytes);
        Started mesd = launch_mesd(mesd_config, dir.path / "mesd.log");
        std::vector<std::pair<std::string, std::function<Outcome()>>> runs = {
            {"check", [&] { return from(ctl({"check"})); }},
            {"get", [&] { return from(ctl({"get", "mes"})); }},
            {"apply", [&] { return from(ctl({"apply", "-f", (dir.path / "one.yaml").string()})); }},
            {"mesd", [&] { return finish_mesd(mesd, std::chrono::seconds(5)); }},
        };
        for (auto& [name, fn] : runs) {
            if (name != "mesd") {
                fs::remove(data / "lock.mdb");
                spit(data / "data.mdb", bytes);
            }
            Outcome o = fn();
            INFO(name << " said: " << o.err);
            CHECK_FALSE(o.by_signal);
            CHECK(o.err.find("Sanitizer") == std::string::npos);
            CHECK(o.err.find("runtime error") == std::string::npos);
            if (o.exit_code != 0) {
                ++failures;
                CHECK(o.exit_code == 1);
                // Names the store and says what is wrong.
                CHECK(o.err.find((name == "mesd" ? mesd_data : data).string()) != std::string::npos);
                bool says_damage = o.err.find("damaged") != std::string::npos ||
                                   o.err.find("problem(s)") != std::string::npos ||
                                   o.err.find("LMDB format version") != std::string::npos;
                CHECK(says_damage);
                if (name == "mesd") {
                    ++refused_starts;
                    CHECK(o.err.find("level=error") != std::string::npos);
                }
            }
        }
    }
    auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
    WARN("100 corruptions: " << failures << " of 400 runs failed cleanly, mesd refused " << refused_starts
                             << " starts, in " << took.count() << " ms");
    // Truncations alone are a third of the cases, and every one below the used pages fails.
    CHECK(refused_starts >= 20);
}

// The VIP in the first A record of a reply, or "" (the answer is the reply's last 4 bytes
// for a one-question, one-answer reply without additional records).
static std::string answered_vip(const std::vector<std::uint8_t>& reply)
{
    if (reply.size() < 16 || (reply[3] & 0x0f) != 0 || reply[7] != 1) return "";
    auto n = reply.size();
    return std::to_string(reply[n - 4]) + "." + std::to_string(reply[n - 3]) + "." + std::to_string(reply[n - 2]) + "." +
           std::to_string(reply[n - 1]);
}

TEST_CASE("a store cut short under a running mesd keeps the last good answers and makes it not ready")
{
    TempDir dir;
    fs::path data = dir.path / "mesd" / "data";
    // The same store and pool as the mesd below.
    std::string config = dir.write("ctl.yaml", "dataDir: " + data.string() + "\nvip:\n  ipv4: 127.242.0.0/16\n");
    auto input = dir.write("all.yaml", generator_doc + mes_doc("mes-a", 80) + mes_doc("mes-b", 81));
    auto applied = run({MESCTL_PATH, "--config", config, "apply", "-f", input});
    INFO(applied.err);
    REQUIRE(applied.exit_code == 0);

    MesdOptions options;
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(dir.path / "mesd", options);
    CHECK(answered_vip(udp_exchange(mesd.dns_port(), raw_query("mes-a.mesh"))) == "127.242.0.1");
    CHECK_THAT(mesd.admin_get("/ready"), Catch::StartsWith("HTTP/1.1 200"));

    // Cut the file to its two meta pages: every other page of the map now raises SIGBUS.
    const std::string good = slurp(data / "data.mdb");
    fs::resize_file(data / "data.mdb", 2 * 4096);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    std::string ready;
    while (std::chrono::steady_clock::now() < deadline) {
        ready = mesd.admin_get("/ready");
        if (ready.starts_with("HTTP/1.1 503")) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CHECK_THAT(ready, Catch::StartsWith("HTTP/1.1 503"));
    // Several polls later: still up, still answering from the index built before, logged once.
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    CHECK(::kill(mesd.pid(), 0) == 0);
    CHECK(answered_vip(udp_exchange(mesd.dns_port(), raw_query("mes-b.mesh"))) == "127.242.0.2");
    CHECK_THAT(mesd.admin_get("/metrics"), Catch::Contains("mesd_store_unreadable 1"));
    auto log = mesd.log();
    INFO(log);
    auto first = log.find("cannot read the store");
    REQUIRE(first != std::string::npos);
    CHECK(log.find("cannot read the store", first + 1) == std::string::npos);
    CHECK_THAT(log, Catch::Contains("data.mdb is damaged"));
    CHECK_THAT(log, Catch::Contains(data.string()));
    CHECK_THAT(log, Catch::Contains("serving=\"the last good index\""));

    // Cut to nothing, meta pages included: another reason, logged once more.
    fs::resize_file(data / "data.mdb", 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    CHECK(::kill(mesd.pid(), 0) == 0);
    CHECK(answered_vip(udp_exchange(mesd.dns_port(), raw_query("mes-a.mesh"))) == "127.242.0.1");
    log = mesd.log();
    auto second = log.find("cannot read the store", first + 1);
    CHECK(second != std::string::npos);
    CHECK(log.find("cannot read the store", second + 1) == std::string::npos);
    CHECK_THAT(log, Catch::Contains("shorter than its two meta pages"));

    // The file restored: ready again.
    spit(data / "data.mdb", good);
    deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
        ready = mesd.admin_get("/ready");
        if (ready.starts_with("HTTP/1.1 200")) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CHECK_THAT(ready, Catch::StartsWith("HTTP/1.1 200"));
    CHECK_THAT(mesd.log(), Catch::Contains("the store can be read again"));
    CHECK(mesd.stop() == 0);
}

// The guard's handler fails only reads made under a guard: any other fault still kills the
// process, as it would without it.
TEST_CASE("a fault outside a guarded store read stays fatal")
{
    long page = ::sysconf(_SC_PAGESIZE);
    void* hole = ::mmap(nullptr, static_cast<std::size_t>(page), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(hole != MAP_FAILED);
    int progress[2];
    REQUIRE(::pipe(progress) == 0);
    pid_t pid = ::fork();
    if (pid == 0) {
        ::close(progress[0]);
        // Without the test framework's own handlers: the default action is what is wanted.
        ::signal(SIGSEGV, SIG_DFL);
        ::signal(SIGBUS, SIG_DFL);
        const volatile char* p = static_cast<const volatile char*>(hole);
        for (int i = 0; i < 3; ++i)
            if (store::detail::guarded([&] { return static_cast<int>(p[0]); }) != store::detail::map_fault) ::_exit(3);
        if (store::detail::guarded([] { return 7; }) != 7) ::_exit(4);
        (void)!::write(progress[1], "g", 1);  // the guarded faults were survived
        (void)p[0];                           // unguarded
        ::_exit(5);
    }
    ::close(progress[1]);
    char got = 0;
    auto n = ::read(progress[0], &got, 1);
    ::close(progress[0]);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    ::munmap(hole, static_cast<std::size_t>(page));
    CHECK(n == 1);
    CHECK(got == 'g');
    INFO("status " << status);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGSEGV);
}
