// The store under faults, through the real mesctl and mesd: readers killed mid-read, a full
// file system, a read-only one, and a reader table that live processes fill.
#include "test/support/mesd.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <fcntl.h>
#include <lmdb.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <regex>
#include <string>
#include <thread>
#include <vector>

using test_support::Child;
using test_support::Mesd;
using test_support::MesdOptions;
using test_support::run;
using test_support::RunResult;
using test_support::TempDir;

namespace {

const std::string mesctl = MESCTL_PATH;
using Clock = std::chrono::steady_clock;

const std::string generator =
    "type: HostnameGenerator\nname: names\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

// `count` MES named svc0..., each with a hostname from `generator`; `port` makes every one
// differ from another set's.
std::string services(int count, int port = 80, int first = 0)
{
    std::string out = generator;
    for (int i = first; i < first + count; ++i)
        out += "---\ntype: MeshExternalService\nname: svc" + std::to_string(i) + "\nspec:\n  match: {port: " +
               std::to_string(port) + ", protocol: tcp}\n  endpoints:\n  - {address: backend-" + std::to_string(i) +
               ".example.com, port: 8080}\n";
    return out;
}

RunResult ctl(const std::string& config, std::vector<std::string> args)
{
    args.insert(args.begin(), {mesctl, "--config", config});
    return run(args);
}

std::string dig_a(int port, const std::string& name)
{
    auto r = run({"/usr/bin/dig", "@127.0.0.1", "-p", std::to_string(port), "+tries=1", "+time=2", "+short", "+notcp",
                  name, "A"});
    while (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
    return r.out;
}

// Waits up to `limit` for `pred`.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::milliseconds(3000),
                std::chrono::milliseconds step = std::chrono::milliseconds(50))
{
    auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
        if (pred()) return true;
        std::this_thread::sleep_for(step);
    }
    return pred();
}

// The value of an unlabelled metric, or -1.
long metric(const Mesd& mesd, const std::string& name)
{
    auto text = mesd.admin_get("/metrics");
    std::smatch m;
    if (!std::regex_search(text, m, std::regex("\n" + name + " (\\d+)"))) return -1;
    return std::stol(m[1]);
}

std::uintmax_t size_of(const std::filesystem::path& p)
{
    std::error_code ec;
    auto n = std::filesystem::file_size(p, ec);
    return ec ? 0 : n;
}

// A tmpfs of `size` mounted on `dir` for one test, unmounted at its end.
struct Tmpfs {
    std::filesystem::path dir;
    Tmpfs(std::filesystem::path where, const std::string& size) : dir(std::move(where))
    {
        std::filesystem::create_directories(dir);
        REQUIRE(::mount("tmpfs", dir.c_str(), "tmpfs", 0, ("size=" + size + ",mode=0700").c_str()) == 0);
    }
    ~Tmpfs() { ::umount2(dir.c_str(), MNT_DETACH); }
    void read_only() { REQUIRE(::mount(nullptr, dir.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr) == 0); }
    // Writes a file of zeros until the file system is full.
    void fill() const
    {
        int fd = ::open((dir / "filler").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        std::vector<char> block(4096, 0);
        while (::write(fd, block.data(), block.size()) > 0) {
        }
        int err = errno;
        ::close(fd);
        REQUIRE(err == ENOSPC);
    }
};

}  // namespace

TEST_CASE("killed readers leave no stale slot that blocks reads or pins pages")
{
    TempDir dir;
    Mesd mesd(dir.path / "mesd");
    const auto& config = mesd.config();
    auto data = dir.path / "mesd" / "data" / "data.mdb";
    // Large enough that `get vips` blocks on a full pipe while it still holds its snapshot.
    auto first = dir.write("first.yaml", services(300, 80));
    auto second = dir.write("second.yaml", services(300, 81));
    REQUIRE(ctl(config, {"apply", "-f", first}).exit_code == 0);
    REQUIRE(eventually([&] { return !dig_a(mesd.dns_port(), "svc299.mesh").empty(); }));

    auto fifo = (dir.path / "out.fifo").string();
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    // Held open for reading and writing, so mesctl's open does not wait for a reader.
    int fd = ::open(fifo.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    REQUIRE(fd >= 0);
    // One page of pipe: `get vips` (16 KB here) fills it soon after it starts printing.
    ::fcntl(fd, F_SETPIPE_SZ, 4096);
    int pipe_bytes = ::fcntl(fd, F_GETPIPE_SZ);
    REQUIRE(pipe_bytes > 0);

    auto kill_readers = [&](int count) {
        for (int i = 0; i < count; ++i) {
            Child get({mesctl, "--config", config, "get", "vips"}, fifo);
            // A full pipe: mesctl is printing, inside its read transaction.
            bool blocked = eventually([&] {
                int queued = 0;
                return ::ioctl(fd, FIONREAD, &queued) == 0 && queued >= pipe_bytes;
            }, std::chrono::milliseconds(3000), std::chrono::milliseconds(1));
            get.signal(SIGKILL);
            get.wait();
            char buf[65536];
            while (::read(fd, buf, sizeof buf) > 0) {
            }
            INFO("mesctl get number " << i + 1);
            REQUIRE(blocked);
        }
    };
    kill_readers(300);

    // Writes, a live change and reads all still work.
    REQUIRE(ctl(config, {"apply", "-f", dir.write("late.yaml", services(1, 80, 1000))}).exit_code == 0);
    CHECK(eventually([&] { return !dig_a(mesd.dns_port(), "svc1000.mesh").empty(); }));
    CHECK(ctl(config, {"check"}).exit_code == 0);
    CHECK(mesd.admin_get("/ready").find(" 200 ") != std::string::npos);
    CHECK(metric(mesd, "mesd_store_readers_max") == 126);
    auto in_use = metric(mesd, "mesd_store_readers");
    CHECK(in_use >= 1);
    CHECK(in_use < 126);

    // With stale slots left behind, 40 writes that each rewrite every record: pages freed by
    // one write are reused by a later one, so the file stays within a few versions of the
    // data (mesd's snapshots, refreshed every 200 ms, pin some: 2.3 to 3.2 times measured on
    // 2 busy cores). A pinned slot adds every write's pages: 17.7 times measured.
    kill_readers(5);
    auto before = size_of(data);
    for (int i = 0; i < 40; ++i) REQUIRE(ctl(config, {"apply", "-f", i % 2 ? first : second}).exit_code == 0);
    auto after = size_of(data);
    INFO("data.mdb " << before << " bytes before, " << after << " after");
    CHECK(after <= before * 6);
    CHECK(eventually([&] { return metric(mesd, "mesd_store_readers") <= 2; }, std::chrono::milliseconds(6000)));
    ::close(fd);
}

TEST_CASE("mesd is not ready while live readers hold every slot of the store")
{
    TempDir dir;
    Mesd mesd(dir.path / "mesd");
    REQUIRE(ctl(mesd.config(), {"apply", "-f", dir.write("svc.yaml", services(1))}).exit_code == 0);
    REQUIRE(eventually([&] { return !dig_a(mesd.dns_port(), "svc0.mesh").empty(); }));
    REQUIRE(mesd.admin_get("/ready").find(" 200 ") != std::string::npos);

    MDB_env* env = nullptr;
    REQUIRE(mdb_env_create(&env) == 0);
    REQUIRE(mdb_env_open(env, (dir.path / "mesd" / "data").c_str(), MDB_NOTLS | MDB_RDONLY, 0600) == 0);
    std::vector<MDB_txn*> held;
    for (int i = 0; i < 200; ++i) {
        MDB_txn* txn = nullptr;
        if (mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn) != 0) break;
        held.push_back(txn);
    }
    REQUIRE(held.size() >= 100);  // the rest are mesd's

    std::string ready;
    CHECK(eventually([&] { return (ready = mesd.admin_get("/ready")).find(" 503 ") != std::string::npos; }));
    CHECK(ready.find("cannot read the store") != std::string::npos);
    CHECK(ready.find("too many readers") != std::string::npos);
    CHECK(metric(mesd, "mesd_store_readers") == 126);
    // Names already indexed are still answered.
    CHECK_FALSE(dig_a(mesd.dns_port(), "svc0.mesh").empty());

    for (auto* txn : held) mdb_txn_abort(txn);
    mdb_env_close(env);
    CHECK(eventually([&] { return mesd.admin_get("/ready").find(" 200 ") != std::string::npos; }));
    auto log = mesd.log();
    std::size_t errors = 0;
    for (auto at = log.find("cannot read the store"); at != std::string::npos; at = log.find("cannot read the store", at + 1))
        ++errors;
    CHECK(errors == 1);  // once per reason, not at every 200 ms poll
    CHECK(log.find("the store can be read again") != std::string::npos);
}

TEST_CASE("a full file system fails a write by name and leaves room for deletes and prunes")
{
    TempDir dir;
    Tmpfs fs(dir.path / "fs", "4m");
    auto config = dir.write("mesd.yaml", "dataDir: " + (fs.dir / "data").string() + "\nvip:\n  ipv4: 127.242.0.0/16\n");
    REQUIRE(ctl(config, {"apply", "-f", dir.write("all.yaml", services(300))}).exit_code == 0);
    auto before = ctl(config, {"get", "mes", "-o", "yaml"});
    REQUIRE(before.exit_code == 0);
    fs.fill();

    auto full = ctl(config, {"apply", "-f", dir.write("changed.yaml", services(300, 81))});
    CHECK(full.exit_code != 0);
    CHECK(full.err.find("no space left on device") != std::string::npos);
    CHECK(full.err.find((fs.dir / "data").string()) != std::string::npos);
    CHECK(full.err.find("Input/output error") == std::string::npos);
    CHECK(ctl(config, {"get", "mes", "-o", "yaml"}).out == before.out);
    CHECK(ctl(config, {"check"}).exit_code == 0);

    auto removed = ctl(config, {"delete", "mes", "svc7"});
    INFO(removed.err);
    CHECK(removed.exit_code == 0);
    CHECK(removed.err.find("space kept in reserve") != std::string::npos);
    CHECK(ctl(config, {"get", "mes", "svc7"}).exit_code != 0);
    // Later deletes reuse the pages earlier ones freed.
    for (int i = 10; i < 20; ++i) CHECK(ctl(config, {"delete", "mes", "svc" + std::to_string(i)}).exit_code == 0);

    auto pruned = ctl(config, {"apply", "--prune", "-f", dir.write("half.yaml", services(100, 80, 200))});
    INFO(pruned.err);
    CHECK(pruned.exit_code == 0);
    auto check = ctl(config, {"check"});
    CHECK(check.exit_code == 0);
    CHECK(check.out.find("101 resources") != std::string::npos);
}

TEST_CASE("a store on a read-only file system is served and refuses writes by saying so")
{
    TempDir dir;
    auto mesd_dir = dir.path / "mesd";
    // The data dir mesd will use, populated first and then made read-only.
    Tmpfs fs(mesd_dir / "data", "16m");
    auto setup = dir.write("setup.yaml", "dataDir: " + fs.dir.string() + "\nvip:\n  ipv4: 127.242.0.0/16\n");
    REQUIRE(ctl(setup, {"apply", "-f", dir.write("svc.yaml", services(3))}).exit_code == 0);
    fs.read_only();

    Mesd mesd(mesd_dir);
    CHECK(mesd.log().find("opened read-only") != std::string::npos);
    CHECK(dig_a(mesd.dns_port(), "svc2.mesh") == "127.242.0.3");
    CHECK(mesd.admin_get("/ready").find(" 200 ") != std::string::npos);
    CHECK(metric(mesd, "mesd_store_read_only") == 1);

    auto got = ctl(mesd.config(), {"get", "mes", "svc1"});
    CHECK(got.exit_code == 0);
    CHECK(got.out.find("svc1") != std::string::npos);
    CHECK(got.err.find("read-only") != std::string::npos);

    auto applied = ctl(mesd.config(), {"apply", "-f", dir.write("more.yaml", services(1, 80, 10))});
    CHECK(applied.exit_code != 0);
    CHECK(applied.err.find("is read-only (read-only file system)") != std::string::npos);
    mesd.stop();
}

TEST_CASE("a store whose files the user may not write is read without its lock file")
{
    TempDir dir;
    // Another user runs mesctl: this one's temp dir must be open to it.
    std::filesystem::permissions(dir.path, std::filesystem::perms::owner_all | std::filesystem::perms::group_exec |
                                               std::filesystem::perms::others_exec);
    auto data = dir.path / "data";
    auto config = dir.write("mesd.yaml", "dataDir: " + data.string() + "\nvip:\n  ipv4: 127.242.0.0/16\n");
    ::chmod(config.c_str(), 0644);
    REQUIRE(ctl(config, {"apply", "-f", dir.write("svc.yaml", services(2))}).exit_code == 0);
    // Owned by nobody, who may read but not write them.
    for (const auto& entry : std::filesystem::directory_iterator(data)) {
        REQUIRE(::chown(entry.path().c_str(), 65534, 65534) == 0);
        REQUIRE(::chmod(entry.path().c_str(), 0400) == 0);
    }
    REQUIRE(::chown(data.c_str(), 65534, 65534) == 0);
    REQUIRE(::chmod(data.c_str(), 0500) == 0);
    auto as_nobody = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {"/usr/bin/setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", mesctl,
                                   "--config", config});
        return run(args);
    };

    auto got = as_nobody({"get", "mes", "svc1"});
    INFO(got.err);
    CHECK(got.exit_code == 0);
    CHECK(got.out.find("127.242.0.2") != std::string::npos);
    CHECK(got.err.find("read-only (permission denied") != std::string::npos);
    auto removed = as_nobody({"delete", "mes", "svc1"});
    CHECK(removed.exit_code != 0);
    CHECK(removed.err.find("is read-only (permission denied") != std::string::npos);
    CHECK(as_nobody({"check"}).exit_code == 0);
    ::chmod(data.c_str(), 0700);  // for the temp dir's removal
}
