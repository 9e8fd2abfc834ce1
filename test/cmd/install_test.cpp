// Running mesd for real: `make install` and `make uninstall` into a temporary DESTDIR (the
// installed programs run, the unit checked by systemd-analyze, the sysusers and tmpfiles
// snippets applied to a copy of that root), and mesd's notifications to systemd (READY=1,
// STOPPING=1, WATCHDOG=1) received on a socket of the test's own, as systemd would.
#include "cmd/notify.hpp"
#include "test/support/net.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace test_support;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const std::string source_dir = MESD_SOURCE_DIR;
const std::string build_dir = MESD_BUILD_DIR;
const std::string dig = "/usr/bin/dig";

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---- The notification socket -------------------------------------------------------------

// A unix datagram socket of the test's own, standing in for systemd's: at a path in `dir`,
// or at an abstract name when `abstract`.
class NotifySocket {
public:
    NotifySocket(const fs::path& dir, bool abstract)
    {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        socklen_t length = 0;
        if (abstract) {
            name_ = "@mesd-test-notify-" + std::to_string(::getpid()) + "-" + dir.filename().string();
            std::memcpy(addr.sun_path + 1, name_.data() + 1, name_.size() - 1);
            length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name_.size());
        } else {
            name_ = (dir / "notify.sock").string();
            REQUIRE(name_.size() < sizeof addr.sun_path);
            std::memcpy(addr.sun_path, name_.data(), name_.size());
            length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name_.size() + 1);
        }
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), length) == 0);
    }
    ~NotifySocket() { ::close(fd_); }
    NotifySocket(const NotifySocket&) = delete;
    NotifySocket& operator=(const NotifySocket&) = delete;

    // What NOTIFY_SOCKET says to reach it.
    const std::string& name() const { return name_; }

    // The next datagram, or nullopt after `wait` without one.
    std::optional<std::string> next(std::chrono::milliseconds wait)
    {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) return std::nullopt;
        char buf[4096];
        auto n = ::recv(fd_, buf, sizeof buf, 0);
        if (n < 0) return std::nullopt;
        return std::string(buf, static_cast<std::size_t>(n));
    }

    // Datagrams until one holds the line `line`; every one received (that one last), or what
    // came before `within` passed (then without it).
    std::vector<std::string> until(const std::string& line, std::chrono::milliseconds within)
    {
        std::vector<std::string> got;
        auto deadline = std::chrono::steady_clock::now() + within;
        while (true) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left <= 0ms) return got;
            auto d = next(left);
            if (!d) return got;
            got.push_back(*d);
            if (has_line(*d, line)) return got;
        }
    }

    // Datagrams holding `line` received in the next `span`.
    int count(const std::string& line, std::chrono::milliseconds span)
    {
        int n = 0;
        auto deadline = std::chrono::steady_clock::now() + span;
        while (true) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left <= 0ms) return n;
            auto d = next(left);
            if (!d) return n;
            if (has_line(*d, line)) ++n;
        }
    }

    static bool has_line(const std::string& datagram, const std::string& line)
    {
        std::size_t at = 0;
        while (at <= datagram.size()) {
            auto end = datagram.find('\n', at);
            if (end == std::string::npos) end = datagram.size();
            if (datagram.compare(at, end - at, line) == 0) return true;
            at = end + 1;
        }
        return false;
    }

private:
    int fd_ = -1;
    std::string name_;
};

// The line of a datagram that starts with `key` ("STATUS="), or "".
std::string line_of(const std::string& datagram, const std::string& key)
{
    auto at = datagram.find(key);
    if (at == std::string::npos) return "";
    auto end = datagram.find('\n', at);
    return datagram.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

// Port 17319 and the names mes-notify* are this file's alone.
constexpr int notify_mes_port = 17319;

// The real mesd with NOTIFY_SOCKET (and `env`) set, a MES in its conf dir, DNS on a port
// known before it starts (its readiness must not be read from its log).
struct NotifiedMesd {
    TempDir dir;
    std::unique_ptr<NotifySocket> socket;
    std::unique_ptr<Child> child;
    int dns_port = 0;

    NotifiedMesd(int workers, bool abstract, std::vector<std::string> env = {})
    {
        socket = std::make_unique<NotifySocket>(dir.path, abstract);
        dir.write("resources/all.yaml",
                  "type: HostnameGenerator\nname: notify-names\nspec:\n  selector:\n    meshExternalService: {}\n"
                  "  template: \"{{ .Name }}.mesh\"\n"
                  "---\ntype: MeshExternalService\nname: mes-notify\nspec:\n  match: {port: " +
                      std::to_string(notify_mes_port) + "}\n  endpoints: [{address: 127.0.0.1, port: 9}]\n");
        dns_port = free_dual_port();
        auto config = dir.write("mesd.yaml", "dataDir: " + (dir.path / "data").string() +
                                                 "\nvip:\n  ipv4: 127.242.0.0/16\nadmin:\n  listen: 127.0.0.1:0\n"
                                                 "dns:\n  listen: [\"127.0.0.1:" + std::to_string(dns_port) +
                                                 "\"]\n  forward:\n    enabled: false\n");
        env.push_back("NOTIFY_SOCKET=" + socket->name());
        child = std::make_unique<Child>(
            std::vector<std::string>{MESD_PATH, "--config", config, "--conf-dir", (dir.path / "resources").string(),
                                     "--workers", std::to_string(workers)},
            (dir.path / "mesd.out").string(), (dir.path / "mesd.log").string(), env);
    }

    std::string log() const { return file_text((dir.path / "mesd.log").string()); }

    std::string answer(const std::string& name) const
    {
        auto out = run({dig, "@127.0.0.1", "-p", std::to_string(dns_port), "+tries=1", "+time=2", "+short", name}).out;
        while (!out.empty() && out.back() == '\n') out.pop_back();
        return out;
    }
};

// ---- make install ------------------------------------------------------------------------

// `make VARIABLES... TARGET` in the source tree, on this build. The variables a `make test`
// around this test set for its own jobs are not passed on.
RunResult make(const std::vector<std::string>& args)
{
    std::vector<std::string> argv{"/usr/bin/env", "-u", "MAKEFLAGS", "-u", "MFLAGS", "-u", "MAKELEVEL",
                                  "/usr/bin/make", "--no-print-directory", "-C", source_dir,
                                  "BUILD_DIR=" + build_dir, "JOBS=2"};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv);
}

// Every regular file below `root`, relative to it, with its permission bits.
std::map<std::string, unsigned> files_below(const fs::path& root)
{
    std::map<std::string, unsigned> out;
    if (!fs::exists(root)) return out;
    for (const auto& e : fs::recursive_directory_iterator(root)) {
        if (!e.is_regular_file()) continue;
        struct stat st {};
        REQUIRE(::stat(e.path().c_str(), &st) == 0);
        out[fs::relative(e.path(), root).string()] = st.st_mode & 07777;
    }
    return out;
}

// What `make install DESTDIR=... PREFIX=/usr` must put there: path -> mode.
std::map<std::string, unsigned> expected_files()
{
    std::map<std::string, unsigned> out = {
        {"usr/sbin/mesd", 0755},
        {"usr/bin/mesctl", 0755},
        {"usr/share/bash-completion/completions/mesctl", 0644},
        {"usr/share/zsh/site-functions/_mesctl", 0644},
        {"usr/lib/systemd/system/mesd.service", 0644},
        {"usr/lib/sysusers.d/mesd.conf", 0644},
        {"usr/lib/tmpfiles.d/mesd.conf", 0644},
        {"usr/share/doc/mesd/redirect-mode.conf", 0644},
        {"etc/mesd/mesd.yaml", 0644},
    };
    // Every man page of man/, in the directory of its section.
    std::regex page(R"(.+\.([158]))");
    if (fs::exists(fs::path(source_dir) / "man"))
        for (const auto& e : fs::directory_iterator(fs::path(source_dir) / "man")) {
            std::smatch m;
            auto name = e.path().filename().string();
            if (e.is_regular_file() && std::regex_match(name, m, page))
                out["usr/share/man/man" + m[1].str() + "/" + name] = 0644;
        }
    return out;
}

std::string describe(const std::map<std::string, unsigned>& files)
{
    std::string out;
    for (const auto& [path, mode] : files) {
        char m[8];
        std::snprintf(m, sizeof m, "%04o", mode);
        out += std::string(m) + " " + path + "\n";
    }
    return out;
}

// The installed mesd with the installed example configuration, on a port of the test's and
// a store of its own; ready once its log says so.
struct InstalledMesd {
    std::unique_ptr<Child> child;
    fs::path log;
    int dns_port = 0;

    InstalledMesd(const fs::path& root, const fs::path& dir)
    {
        dns_port = free_dual_port();
        log = dir / "installed-mesd.log";
        child = std::make_unique<Child>(
            std::vector<std::string>{(root / "usr/sbin/mesd").string(), "--config", (root / "etc/mesd/mesd.yaml").string(),
                                     "--data-dir", (dir / "data").string(), "--dns-listen",
                                     "127.0.0.1:" + std::to_string(dns_port), "--admin-listen", "127.0.0.1:0"},
            "/dev/null", log.string());
        bool ready = eventually([&] { return contains(file_text(log.string()), "msg=ready"); }, 20s);
        INFO(file_text(log.string()));
        REQUIRE(ready);
    }
    ~InstalledMesd()
    {
        child->signal(SIGTERM);
        child->wait();
    }
};

}  // namespace

// ---- notify: the pure parts ----------------------------------------------------------------

TEST_CASE("notify: NOTIFY_SOCKET is a path or an abstract name")
{
    using cmd::notify::notify_address;
    auto path = notify_address("/run/systemd/notify");
    REQUIRE(path);
    CHECK(std::string(path->addr.sun_path) == "/run/systemd/notify");
    CHECK(path->length == offsetof(sockaddr_un, sun_path) + std::strlen("/run/systemd/notify") + 1);

    auto abstract = notify_address("@systemd-notify-1");
    REQUIRE(abstract);
    CHECK(abstract->addr.sun_path[0] == '\0');
    CHECK(std::string(abstract->addr.sun_path + 1, std::strlen("systemd-notify-1")) == "systemd-notify-1");
    // No terminating NUL: the name is exactly as long as the length says.
    CHECK(abstract->length == offsetof(sockaddr_un, sun_path) + std::strlen("@systemd-notify-1"));

    CHECK_FALSE(notify_address(""));
    CHECK_FALSE(notify_address("/"));
    CHECK_FALSE(notify_address("@"));
    CHECK_FALSE(notify_address("run/systemd/notify"));
    CHECK_FALSE(notify_address("vsock:2:1234"));
    // sun_path holds 108 bytes: a path of 107 and its NUL, or an abstract name of 107 after
    // the leading NUL that stands for '@'.
    CHECK(notify_address("/" + std::string(106, 'p')));
    CHECK_FALSE(notify_address("/" + std::string(107, 'p')));
    CHECK(notify_address("@" + std::string(107, 'a')));
    CHECK_FALSE(notify_address("@" + std::string(108, 'a')));
}

TEST_CASE("notify: the watchdog is pinged at half of WATCHDOG_USEC when it is meant for this process")
{
    using cmd::notify::watchdog_interval;
    using us = std::chrono::microseconds;
    CHECK(watchdog_interval("200000", nullptr, 42) == us(100000));
    CHECK(watchdog_interval("30000000", "42", 42) == us(15000000));
    CHECK(watchdog_interval("3", nullptr, 42) == us(1));
    // Meant for another process (a child that inherited the environment), or none at all.
    CHECK_FALSE(watchdog_interval("200000", "43", 42));
    CHECK_FALSE(watchdog_interval(nullptr, nullptr, 42));
    CHECK_FALSE(watchdog_interval(nullptr, "42", 42));
    // Not numbers, zero, trailing bytes: no watchdog rather than a guessed one.
    CHECK_FALSE(watchdog_interval("0", nullptr, 42));
    CHECK_FALSE(watchdog_interval("", nullptr, 42));
    CHECK_FALSE(watchdog_interval("-5", nullptr, 42));
    CHECK_FALSE(watchdog_interval("20s", nullptr, 42));
    CHECK_FALSE(watchdog_interval("200000", "42x", 42));
    CHECK_FALSE(watchdog_interval("200000", "", 42));
}

// ---- notify: the real mesd ---------------------------------------------------------------

TEST_CASE("notify: READY=1 comes once DNS answers and the proxy listens and STOPPING=1 on SIGTERM")
{
    for (int workers : {1, 4}) {
        INFO("workers " << workers);
        // One loop with a socket at a path, four workers with an abstract one: both forms
        // systemd uses.
        NotifiedMesd mesd(workers, workers == 4);
        auto got = mesd.socket->until("READY=1", 20s);
        INFO(mesd.log());
        REQUIRE(!got.empty());
        REQUIRE(NotifySocket::has_line(got.back(), "READY=1"));
        // Nothing but watchdog pings (none asked for here) may come before it.
        CHECK(got.size() == 1);
        // Right after READY=1, with no retry: the name is answered and its VIP:port accepts.
        auto vip = mesd.answer("mes-notify.mesh");
        CHECK(vip.starts_with("127.242."));
        CHECK(accepting(vip, notify_mes_port));
        // Two hostnames: the test's generator's and that of Kuma's default generator.
        CHECK(line_of(got.back(), "STATUS=") ==
              "STATUS=serving 1 MES (2 hostnames) on " + std::to_string(workers) + (workers == 1 ? " worker" : " workers"));

        mesd.child->signal(SIGTERM);
        auto stopping = mesd.socket->until("STOPPING=1", 10s);
        REQUIRE(!stopping.empty());
        CHECK(NotifySocket::has_line(stopping.back(), "STOPPING=1"));
        CHECK(line_of(stopping.back(), "STATUS=") == "STATUS=stopping (SIGTERM): draining");
        CHECK(mesd.child->wait() == 0);
    }
}

TEST_CASE("notify: a store change updates STATUS")
{
    NotifiedMesd mesd(1, false);
    REQUIRE(!mesd.socket->until("READY=1", 20s).empty());
    mesd.dir.write("resources/more.yaml", "type: MeshExternalService\nname: mes-notify-more\nspec:\n  match: {port: " +
                                              std::to_string(notify_mes_port) +
                                              "}\n  endpoints: [{address: 127.0.0.1, port: 9}]\n");
    // Two hostnames each: the test's generator's and that of Kuma's default generator.
    auto got = mesd.socket->until("STATUS=serving 2 MES (4 hostnames) on 1 worker", 10s);
    INFO(mesd.log());
    REQUIRE(!got.empty());
    CHECK(got.back() == "STATUS=serving 2 MES (4 hostnames) on 1 worker");
}

TEST_CASE("notify: WATCHDOG=1 every half WATCHDOG_USEC from the control loop")
{
    for (int workers : {1, 4}) {
        INFO("workers " << workers);
        NotifiedMesd mesd(workers, false, {"WATCHDOG_USEC=200000"});
        REQUIRE(!mesd.socket->until("READY=1", 20s).empty());
        // Every 100 ms: about 10 in a second; a loaded machine may delay a few, and a ping
        // per loop turn would send far more.
        int pings = mesd.socket->count("WATCHDOG=1", 1000ms);
        CHECK(pings >= 5);
        CHECK(pings <= 12);
        // A stopped loop pings no more.
        ::kill(mesd.child->pid(), SIGSTOP);
        std::this_thread::sleep_for(50ms);
        while (mesd.socket->next(0ms)) {}
        CHECK(mesd.socket->count("WATCHDOG=1", 400ms) == 0);
        ::kill(mesd.child->pid(), SIGCONT);
        CHECK(mesd.socket->count("WATCHDOG=1", 400ms) >= 1);
        mesd.child->signal(SIGTERM);
        CHECK(mesd.child->wait() == 0);
    }
}

TEST_CASE("notify: no WATCHDOG=1 when WATCHDOG_PID names another process")
{
    NotifiedMesd mesd(1, false, {"WATCHDOG_USEC=200000", "WATCHDOG_PID=1"});
    REQUIRE(!mesd.socket->until("READY=1", 20s).empty());
    CHECK(mesd.socket->count("WATCHDOG=1", 600ms) == 0);
}

// ---- make install ------------------------------------------------------------------------

TEST_CASE("install: make install puts every file in place and make uninstall takes it back")
{
    TempDir dir;
    const auto root = dir.path / "root";
    const std::vector<std::string> vars{"DESTDIR=" + root.string(), "PREFIX=/usr"};
    auto with = [&](std::string target) {
        auto args = vars;
        args.push_back(std::move(target));
        return args;
    };

    SECTION("installed")
    {
        auto installed = make(with("install"));
        INFO(installed.out << installed.err);
        REQUIRE(installed.exit_code == 0);
        // Everything, nothing more, each with its mode.
        auto want = expected_files();
        CHECK(describe(files_below(root)) == describe(want));
        for (const auto& [path, mode] : want)
            if (path.starts_with("usr/share/man/"))
                CHECK(file_text((root / path).string()) ==
                      file_text((fs::path(source_dir) / "man" / fs::path(path).filename()).string()));
        CHECK(file_text((root / "etc/mesd/mesd.yaml").string()) == file_text(source_dir + "/dist/mesd.yaml"));
        CHECK(file_text((root / "usr/lib/sysusers.d/mesd.conf").string()) == file_text(source_dir + "/dist/sysusers.conf"));
        CHECK(file_text((root / "usr/lib/tmpfiles.d/mesd.conf").string()) == file_text(source_dir + "/dist/tmpfiles.conf"));

        // The installed programs run, and the completions are what the installed mesctl writes.
        const auto mesd = (root / "usr/sbin/mesd").string(), mesctl = (root / "usr/bin/mesctl").string();
        auto help = run({mesd, "--help"});
        CHECK(help.exit_code == 0);
        CHECK(help.out.starts_with("usage: mesd"));
        help = run({mesctl, "--help"});
        CHECK(help.exit_code == 0);
        CHECK(help.out.starts_with("usage: mesctl"));
        for (auto [shell, path] : {std::pair{"bash", "usr/share/bash-completion/completions/mesctl"},
                                   std::pair{"zsh", "usr/share/zsh/site-functions/_mesctl"}}) {
            auto completion = run({mesctl, "completion", shell});
            CHECK(completion.exit_code == 0);
            CHECK(!completion.out.empty());
            CHECK(file_text((root / path).string()) == completion.out);
        }

        // The unit runs the installed binary with the installed configuration.
        auto unit = file_text((root / "usr/lib/systemd/system/mesd.service").string());
        CHECK(contains(unit, "\nExecStart=/usr/sbin/mesd --config /etc/mesd/mesd.yaml\n"));
        CHECK(!std::regex_search(unit, std::regex("@[A-Z]+@")));  // every placeholder filled in
        for (const auto* line : {"\nType=notify\n", "\nUser=mesd\n", "\nGroup=mesd\n", "\nStateDirectory=mesd\n",
                                 "\nStateDirectoryMode=0750\n", "\nExecReload=/bin/kill -HUP $MAINPID\n",
                                 "\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n",
                                 "\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n", "\nRestart=on-failure\n",
                                 "\nWatchdogSec=30s\n", "\nLimitNOFILE=524288\n"})
            CHECK(contains(unit, line));

        // systemd-analyze verify, offline: the unit as systemd loads it from /usr/lib, with the
        // host's units beside it; ExecStart= must name an executable, so the installed mesd
        // is shown at /usr/sbin in a mount namespace of its own, and Documentation='s man
        // pages are looked up among those installed.
        auto verified = run({"/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                             "mount -t tmpfs mesd-verify /usr/sbin && cp \"$1\" /usr/sbin/mesd && "
                             "exec systemd-analyze verify \"$2\"",
                             "sh", mesd, (root / "usr/lib/systemd/system/mesd.service").string()},
                            {}, {"MANPATH=" + (root / "usr/share/man").string()});
        INFO("verify: " << verified.out << verified.err);
        CHECK(verified.exit_code == 0);
        CHECK(verified.out + verified.err == "");

        // The sandbox scores "OK" or better (systemd 252: under 5.0 is OK, under 1.0 SAFE), and
        // no worse than it does today (1.6): --threshold fails above 2.0.
        auto security = run({"/usr/bin/systemd-analyze", "security", "--offline=yes", "--threshold=20",
                             (root / "usr/lib/systemd/system/mesd.service").string()});
        INFO("security: " << security.out << security.err);
        CHECK(security.exit_code == 0);
        std::smatch m;
        auto all = security.out + security.err;
        REQUIRE(std::regex_search(all, m, std::regex(R"(Overall exposure level for mesd\.service: (\d+\.\d) (\w+))")));
        CHECK(std::stod(m[1]) <= 2.0);
        CHECK((m[2] == "OK" || m[2] == "SAFE" || m[2] == "PERFECT"));

        // The sysusers and tmpfiles snippets, applied to a copy of the root: a system user mesd
        // without a login, and its store 0750.
        const auto copy = dir.path / "applied";
        fs::create_directories(copy / "etc");
        fs::copy(root / "usr", copy / "usr", fs::copy_options::recursive);
        auto users = run({"/usr/bin/systemd-sysusers", "--root=" + copy.string()});
        INFO(users.out << users.err);
        CHECK(users.exit_code == 0);
        std::smatch pw;
        auto passwd = file_text((copy / "etc/passwd").string());
        REQUIRE(std::regex_search(passwd, pw, std::regex(R"(^mesd:x:(\d+):(\d+):[^:]*:/var/lib/mesd:/usr/sbin/nologin$)",
                                                         std::regex::multiline)));
        CHECK(std::stoi(pw[1]) < 1000);  // a system user
        CHECK(contains(file_text((copy / "etc/group").string()), "mesd:x:" + pw[2].str() + ":"));
        auto tmpfiles = run({"/usr/bin/systemd-tmpfiles", "--root=" + copy.string(), "--create"});
        INFO(tmpfiles.out << tmpfiles.err);
        CHECK(tmpfiles.exit_code == 0);
        struct stat st {};
        REQUIRE(::stat((copy / "var/lib/mesd").c_str(), &st) == 0);
        CHECK((st.st_mode & 07777) == 0750);
        CHECK(st.st_uid == static_cast<uid_t>(std::stoi(pw[1])));
        CHECK(st.st_gid == static_cast<gid_t>(std::stoi(pw[2])));

        // The installed mesd, with the example configuration (its pool is Kuma's 242.0.0.0/8),
        // serves what the installed mesctl wrote.
        auto resources = dir.write("resources.yaml",
                                   "type: HostnameGenerator\nname: installed-names\nspec:\n  selector:\n"
                                   "    meshExternalService: {}\n  template: \"{{ .Name }}.mesh\"\n"
                                   "---\ntype: MeshExternalService\nname: mes-installed\nspec:\n  match: {port: 17320}\n"
                                   "  endpoints: [{address: 127.0.0.1, port: 9}]\n");
        auto applied = run({mesctl, "--config", (root / "etc/mesd/mesd.yaml").string(), "--data-dir",
                            (dir.path / "data").string(), "apply", "-f", resources});
        INFO(applied.out << applied.err);
        REQUIRE(applied.exit_code == 0);
        {
            InstalledMesd running(root, dir.path);
            auto out = run({dig, "@127.0.0.1", "-p", std::to_string(running.dns_port), "+tries=1", "+time=2", "+short",
                            "mes-installed.mesh"})
                           .out;
            CHECK(out.starts_with("242."));
        }

        // Uninstalled: all gone but the configuration, as Debian keeps conffiles on remove.
        auto removed = make(with("uninstall"));
        INFO(removed.out << removed.err);
        REQUIRE(removed.exit_code == 0);
        CHECK(describe(files_below(root)) == describe({{"etc/mesd/mesd.yaml", 0644}}));
        CHECK(contains(removed.out, "kept " + (root / "etc/mesd/mesd.yaml").string()));
        CHECK(!fs::exists(root / "usr/share/doc/mesd"));
    }

    SECTION("an existing configuration is kept")
    {
        const std::string mine = "# mine\ndataDir: /srv/mesd\n";
        dir.write("root/etc/mesd/mesd.yaml", mine);
        ::chmod((root / "etc/mesd/mesd.yaml").c_str(), 0640);
        auto installed = make(with("install"));
        INFO(installed.out << installed.err);
        REQUIRE(installed.exit_code == 0);
        CHECK(file_text((root / "etc/mesd/mesd.yaml").string()) == mine);
        auto want = expected_files();
        want["etc/mesd/mesd.yaml"] = 0640;
        CHECK(describe(files_below(root)) == describe(want));
        // A second install over the first changes nothing of it either.
        installed = make(with("install"));
        REQUIRE(installed.exit_code == 0);
        CHECK(file_text((root / "etc/mesd/mesd.yaml").string()) == mine);
        CHECK(make(with("uninstall")).exit_code == 0);
        CHECK(describe(files_below(root)) == describe({{"etc/mesd/mesd.yaml", 0640}}));
        CHECK(file_text((root / "etc/mesd/mesd.yaml").string()) == mine);
    }

    SECTION("a completion mesctl cannot write stops the install")
    {
        auto args = with("install");
        args.push_back("MESCTL=/bin/false");
        auto failed = make(args);
        CHECK(failed.exit_code != 0);
        CHECK(contains(failed.err, "'/bin/false completion bash' failed or printed nothing: no bash completion; install stopped"));
        // Nothing half written, and nothing after the completions was installed.
        CHECK(!fs::exists(root / "usr/share/bash-completion/completions/mesctl"));
        CHECK(!fs::exists(root / "usr/share/bash-completion/completions/mesctl.tmp"));
        CHECK(!fs::exists(root / "usr/lib/systemd/system/mesd.service"));
        // mesctl printing nothing is a failure too.
        args.back() = "MESCTL=/bin/true";
        failed = make(args);
        CHECK(failed.exit_code != 0);
        CHECK(contains(failed.err, "'/bin/true completion bash' failed or printed nothing"));
        CHECK(!fs::exists(root / "usr/share/bash-completion/completions/mesctl"));
    }
}
