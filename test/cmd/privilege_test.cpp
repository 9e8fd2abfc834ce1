// Least privilege through the real mesd: `user:` as root in a network namespace (port 53
// served, then uid, gid, groups and capability sets read from /proc for every thread), the
// capabilities of redirect mode's upstreamMark, the store handed to the user and kept 0700/0600
// under any umask, the errors and the warning of the other ways to start, and `sandbox: true`
// through DNS, forwarding, proxied TCP and TLS to a DNS-named endpoint, a conf dir change,
// SIGHUP and SIGTERM.
#include "cmd/privilege.hpp"
#include "conf/conf.hpp"
#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/netns.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"
#include "test/support/text.hpp"

#include <catch2/catch.hpp>

#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

using namespace test_support;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const std::string dig = "/usr/bin/dig";

// A system user (and its group) made for one test with useradd, deleted at the end.
struct SystemUser {
    std::string name;
    uid_t uid = 0;
    gid_t gid = 0;

    explicit SystemUser(const std::string& prefix) : name(prefix + std::to_string(::getpid()))
    {
        run({"/usr/sbin/userdel", name});  // left over from a run that was killed
        // useradd takes a lock on /etc/passwd: another test making its user at the same time
        // makes it fail for a moment.
        bool made = false;
        for (int attempt = 0; attempt < 50 && !made; ++attempt) {
            made = run({"/usr/sbin/useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name})
                       .exit_code == 0;
            if (!made) std::this_thread::sleep_for(100ms);
        }
        REQUIRE(made);
        const passwd* pw = ::getpwnam(name.c_str());
        REQUIRE(pw);
        uid = pw->pw_uid;
        gid = pw->pw_gid;
    }
    ~SystemUser()
    {
        for (int attempt = 0; attempt < 50; ++attempt) {
            if (run({"/usr/sbin/userdel", name}).exit_code == 0) break;
            std::this_thread::sleep_for(100ms);
        }
        run({"/usr/sbin/groupdel", name});  // when userdel left the group
    }
    SystemUser(const SystemUser&) = delete;
    SystemUser& operator=(const SystemUser&) = delete;
};

// The umask of this process for one scope (mesd inherits it).
struct Umask {
    mode_t old;
    explicit Umask(mode_t m) : old(::umask(m)) {}
    ~Umask() { ::umask(old); }
};

// "Key:\tvalue" lines of /proc/PID/status (or of a task's).
std::map<std::string, std::string> status_of(const std::string& path)
{
    std::map<std::string, std::string> out;
    std::istringstream in(file_text(path));
    std::string line;
    while (std::getline(in, line)) {
        auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        auto value = line.substr(colon + 1);
        auto first = value.find_first_not_of(" \t"), last = value.find_last_not_of(" \t");
        out[line.substr(0, colon)] = first == std::string::npos ? "" : value.substr(first, last - first + 1);
    }
    return out;
}

// Every thread's status.
std::vector<std::map<std::string, std::string>> task_statuses(int pid)
{
    std::vector<std::map<std::string, std::string>> out;
    for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task"))
        out.push_back(status_of((e.path() / "status").string()));
    return out;
}

std::string ids(unsigned id) { return std::to_string(id) + "\t" + std::to_string(id) + "\t" + std::to_string(id) + "\t" + std::to_string(id); }

constexpr const char* bind_service_only = "0000000000000400";  // bit 10
constexpr const char* bind_service_and_net_admin = "0000000000001400";  // bits 10 and 12

// Checks the credentials and capability sets of every thread of `pid`.
void check_dropped(int pid, const SystemUser& user, const std::string& caps)
{
    auto tasks = task_statuses(pid);
    REQUIRE(tasks.size() >= 2);  // the loop and at least one thread started after the drop
    for (auto& st : tasks) {
        INFO("thread " << st["Pid"] << " " << st["Name"]);
        CHECK(st["Uid"] == ids(user.uid));
        CHECK(st["Gid"] == ids(user.gid));
        CHECK(st["Groups"] == std::to_string(user.gid));
        CHECK(st["CapEff"] == caps);
        CHECK(st["CapPrm"] == caps);
        CHECK(st["CapBnd"] == caps);
        CHECK(st["CapAmb"] == caps);
    }
}

// The temporary dir's owner is root and its mode 0700: the user must be able to reach the
// store and the conf dir inside.
void open_to_all(const TempDir& dir) { fs::permissions(dir.path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec); }

// A data dir in `dir` (opened to all, so the user can reach it) owned by `user`.
fs::path data_dir_of(const TempDir& dir, const SystemUser& user)
{
    open_to_all(dir);
    auto data = dir.path / "data";
    fs::create_directories(data);
    REQUIRE(::chown(data.c_str(), user.uid, user.gid) == 0);
    return data;
}

const std::string generator =
    "---\ntype: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

std::string mes(const std::string& name, int match_port, const std::string& address, int port, const std::string& tls = "")
{
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(match_port) +
           "}\n  endpoints: [{address: " + address + ", port: " + std::to_string(port) + "}]\n" + tls;
}

void check_store_modes(const fs::path& data, uid_t owner)
{
    struct stat st {};
    REQUIRE(::stat(data.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0700);
    CHECK(st.st_uid == owner);
    int files = 0;
    for (const auto& e : fs::directory_iterator(data)) {
        INFO(e.path());
        REQUIRE(::stat(e.path().c_str(), &st) == 0);
        CHECK((st.st_mode & 07777) == 0600);
        CHECK(st.st_uid == owner);
        ++files;
    }
    CHECK(files >= 2);  // data.mdb and lock.mdb
}

}  // namespace

TEST_CASE("privilege: the user and sandbox keys")
{
    auto ok = conf::load_config_text("user: mesd:nogroup\nsandbox: true\n", "mesd.yaml");
    REQUIRE(ok.ok());
    CHECK(ok.config.user == "mesd:nogroup");
    CHECK(ok.config.sandbox);
    auto defaults = conf::load_config_text("", "mesd.yaml");
    CHECK(defaults.config.user.empty());
    CHECK_FALSE(defaults.config.sandbox);
    for (const char* bad : {"user: \"-rf\"", "user: \"1000\"", "user: \"a:\"", "user: \"a b\"", "user: \"mesd:x:y\""}) {
        auto r = conf::load_config_text(bad, "mesd.yaml");
        INFO(bad);
        REQUIRE(r.errors.size() == 1);
        CHECK_THAT(r.errors[0].format(), Catch::StartsWith("mesd.yaml:1:7: user: must be a user name, or USER:GROUP"));
    }
    auto not_bool = conf::load_config_text("sandbox: maybe\n", "mesd.yaml");
    REQUIRE(not_bool.errors.size() == 1);
    CHECK_THAT(not_bool.errors[0].format(), Catch::Contains("mesd.yaml:1:10: sandbox"));
}

TEST_CASE("privilege: the capabilities kept follow the configuration")
{
    using cmd::privilege::needed_capabilities;
    conf::Config c;  // bind mode: VIP listeners open later, on any port
    CHECK(needed_capabilities(c) == std::vector<int>{CAP_NET_BIND_SERVICE});
    c.proxy.mode = "redirect";
    CHECK(needed_capabilities(c).empty());
    c.dns.listen = {conf::HostPort{"0.0.0.0", 53}};
    CHECK(needed_capabilities(c) == std::vector<int>{CAP_NET_BIND_SERVICE});
    c.dns.listen = {conf::HostPort{"127.0.0.1", 0}};
    c.proxy.upstream_mark = 0x100;
    CHECK(needed_capabilities(c) == std::vector<int>{CAP_NET_ADMIN});
    c.proxy.redirect_listen.port = 1000;
    CHECK(needed_capabilities(c) == std::vector<int>{CAP_NET_BIND_SERVICE, CAP_NET_ADMIN});
    CHECK(cmd::privilege::capability_names(needed_capabilities(c)) == "CAP_NET_BIND_SERVICE,CAP_NET_ADMIN");
    CHECK(cmd::privilege::capability_names({}) == "none");
}

TEST_CASE("privilege: started as root with user it serves port 53 in a namespace as that user with CAP_NET_BIND_SERVICE only")
{
    Namespace ns("mesd-priv");
    SystemUser user("mesd-p");
    TempDir dir;
    open_to_all(dir);
    dir.write("resources/all.yaml", generator + mes("priv-web", 7461, "127.0.0.1", 9));
    MesdOptions options;
    options.wrapper = ns.exec;
    options.dns_listen = "127.0.0.1:53";
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "user: " + user.name + "\n";
    Umask umask(0);
    Mesd mesd(dir.path / "mesd", options);
    CHECK(mesd.dns_port() == 53);
    auto answer = ns.in({dig, "@127.0.0.1", "-p", "53", "priv-web.mesh", "+short", "+tries=1", "+time=2"});
    CHECK_THAT(trim(answer.out), Catch::Matches(R"(127\.242\.\d+\.\d+)"));
    auto tcp = ns.in({dig, "@127.0.0.1", "-p", "53", "priv-web.mesh", "+short", "+tcp", "+tries=1", "+time=2"});
    CHECK(trim(tcp.out) == trim(answer.out));
    check_dropped(mesd.pid(), user, bind_service_only);
    // Not dumpable (no --allow-core-dumps): /proc/PID stays root's, out of the user's reach.
    struct stat proc {};
    REQUIRE(::stat(("/proc/" + std::to_string(mesd.pid()) + "/status").c_str(), &proc) == 0);
    CHECK(proc.st_uid == 0);
    // Bind mode opens the VIP's listener after the drop.
    auto config = [&] {
        return ns.in({"/usr/bin/curl", "-s", "http://127.0.0.1:" + std::to_string(mesd.admin_port()) + "/config"}).out;
    };
    CHECK(eventually([&] { return config().find(trim(answer.out) + ":7461") != std::string::npos; }));
    CHECK_THAT(config(), !Catch::Contains("listenError"));
    // The store: handed over, 0700 and 0600 though mesd started under umask 0.
    check_store_modes(dir.path / "mesd" / "data", user.uid);
    auto log = mesd.log();
    INFO(log);
    CHECK_THAT(log, Catch::Contains("msg=\"privileges dropped\" user=" + user.name + " uid=" + std::to_string(user.uid)));
    CHECK_THAT(log, Catch::Contains("capabilities=CAP_NET_BIND_SERVICE bounding_set=cut"));
    CHECK_THAT(log, !Catch::Contains("running as root"));
    CHECK(mesd.stop() == 0);
    CHECK_THAT(mesd.log(), !Catch::Contains("level=error"));
}

TEST_CASE("privilege: redirect mode with upstreamMark keeps CAP_NET_ADMIN too")
{
    Namespace ns("mesd-priv-mark");
    SystemUser user("mesd-m");
    TempDir dir;
    open_to_all(dir);
    MesdOptions options;
    options.wrapper = ns.exec;
    options.dns_listen = "127.0.0.1:53";
    options.dns_section = "  forward:\n    enabled: false\n";
    options.extra_config = "user: " + user.name + "\nproxy:\n  mode: redirect\n  redirectListen: 127.0.0.1:0\n  upstreamMark: 7\n";
    options.extra_args = {"--workers", "2"};  // threads made after the drop, whatever MESD_WORKERS says
    Umask umask(022);
    Mesd mesd(dir.path / "mesd", options);
    check_dropped(mesd.pid(), user, bind_service_and_net_admin);
    check_store_modes(dir.path / "mesd" / "data", user.uid);
    CHECK(mesd.stop() == 0);
}

TEST_CASE("privilege: redirect mode on high ports keeps no capability at all")
{
    SystemUser user("mesd-n");
    TempDir dir;
    open_to_all(dir);
    MesdOptions options;
    options.extra_config = "user: " + user.name + "\nproxy:\n  mode: redirect\n  redirectListen: 127.0.0.1:0\n";
    options.extra_args = {"--workers", "2", "--allow-core-dumps"};
    Mesd mesd(dir.path / "mesd", options);
    check_dropped(mesd.pid(), user, "0000000000000000");
    // Still dumpable after the switch, as asked: /proc/PID is the process's own, not root's.
    struct stat st {};
    REQUIRE(::stat(("/proc/" + std::to_string(mesd.pid()) + "/status").c_str(), &st) == 0);
    CHECK(st.st_uid == user.uid);
    CHECK(mesd.stop() == 0);
}

TEST_CASE("privilege: root without user is warned about once")
{
    TempDir dir;
    Mesd mesd(dir.path / "mesd");
    CHECK(mesd.stop() == 0);
    auto log = mesd.log();
    std::size_t n = 0;
    for (auto at = log.find("running as root"); at != std::string::npos; at = log.find("running as root", at + 1)) ++n;
    CHECK(n == 1);
    CHECK_THAT(log, Catch::Contains("level=warn sys=daemon msg=\"running as root"));
}

TEST_CASE("privilege: a store owned by another user is refused and not taken")
{
    SystemUser user("mesd-o");
    TempDir dir;
    open_to_all(dir);
    auto data = dir.path / "data";
    fs::create_directories(data);
    const passwd* nobody = ::getpwnam("nobody");
    REQUIRE(nobody);
    REQUIRE(::chown(data.c_str(), nobody->pw_uid, nobody->pw_gid) == 0);
    auto config = dir.write("mesd.yaml", "dataDir: " + data.string() + "\nuser: " + user.name +
                                             "\nvip:\n  ipv4: 127.242.0.0/16\nadmin:\n  listen: 127.0.0.1:0\n"
                                             "dns:\n  listen: [\"127.0.0.1:0\"]\n");
    auto r = run({MESD_PATH, "--config", config});
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("data dir " + data.string() + " belongs to nobody, not to root or " + user.name));
    struct stat st {};
    REQUIRE(::stat(data.c_str(), &st) == 0);
    CHECK(st.st_uid == nobody->pw_uid);
}

TEST_CASE("privilege: not root it can be the user it is but cannot become another")
{
    SystemUser user("mesd-s");
    TempDir dir;
    auto data = data_dir_of(dir, user);
    auto config_for = [&](const std::string& who) {
        return dir.write("mesd-" + who + ".yaml", "dataDir: " + data.string() + "\nuser: " + who +
                                                      "\nvip:\n  ipv4: 127.242.0.0/16\nadmin:\n  listen: 127.0.0.1:0\n"
                                                      "dns:\n  listen: [\"127.0.0.1:0\"]\n");
    };
    const std::vector<std::string> as_user = {"/usr/bin/setpriv", "--reuid=" + std::to_string(user.uid),
                                              "--regid=" + std::to_string(user.gid), "--init-groups"};
    auto argv = as_user;
    argv.insert(argv.end(), {MESD_PATH, "--config", config_for("nobody")});
    auto r = run(argv);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("mesd runs as " + user.name + ", not as root: it cannot become user nobody"));

    // As itself, with capabilities a service manager gave it (systemd's AmbientCapabilities=):
    // those the configuration does not need go.
    fs::create_directories(dir.path / "self");
    REQUIRE(::chown((dir.path / "self").c_str(), user.uid, user.gid) == 0);
    MesdOptions options;
    options.wrapper = as_user;
    options.wrapper.insert(options.wrapper.end(), {"--inh-caps=+net_bind_service,+net_admin,+net_raw",
                                                   "--ambient-caps=+net_bind_service,+net_admin,+net_raw"});
    options.extra_config = "user: " + user.name + "\n";
    Mesd mesd(dir.path / "self", options);
    auto st = status_of("/proc/" + std::to_string(mesd.pid()) + "/status");
    CHECK(st["Uid"] == ids(user.uid));
    CHECK(st["CapEff"] == bind_service_only);
    CHECK(st["CapPrm"] == bind_service_only);
    CHECK(st["CapAmb"] == bind_service_only);
    CHECK_THAT(mesd.log(), Catch::Contains("capabilities=CAP_NET_BIND_SERVICE bounding_set=\"as inherited\""));
    CHECK(mesd.stop() == 0);
}

TEST_CASE("privilege: sandbox and user through DNS, forwarding, TCP and TLS to a DNS name, a conf dir change, SIGHUP and SIGTERM")
{
    SystemUser user("mesd-x");
    TempDir dir;
    open_to_all(dir);
    // An upstream for forwarding that also names the backends for the proxy's resolver.
    int upstream_port = free_dual_port();
    Child dnsmasq({"/usr/sbin/dnsmasq", "-k", "--user=root", "--listen-address=127.0.0.1", "--bind-interfaces",
                   "--no-resolv", "--no-hosts", "--address=/fwd.sbx.test/192.0.2.71",
                   "--address=/backend.sbx.test/127.0.0.1", "--port=" + std::to_string(upstream_port)},
                  (dir.path / "dnsmasq.out").string(), (dir.path / "dnsmasq.err").string());
    REQUIRE(eventually([&] {
        return trim(output_of({dig, "@127.0.0.1", "-p", std::to_string(upstream_port), "fwd.sbx.test", "+short",
                               "+tries=1", "+time=1"})) == "192.0.2.71";
    }));
    int echo_port = free_tcp_port();
    Child echo({"/usr/bin/socat", "TCP-LISTEN:" + std::to_string(echo_port) + ",bind=127.0.0.1,fork,reuseaddr", "PIPE"});
    REQUIRE(eventually([&] { return accepting("127.0.0.1", echo_port); }));
    auto ca = make_ca("sandbox test CA");
    auto leaf = make_leaf(ca, "backend", {"DNS:backend.sbx.test"});
    int tls_port = free_tcp_port();
    Child tls_server({"/usr/bin/openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(tls_port), "-cert",
                      dir.write("tls/backend.crt", leaf.cert_pem), "-key", dir.write("tls/backend.key", leaf.key_pem),
                      "-rev", "-quiet"},
                     (dir.path / "s_server.out").string(), (dir.path / "s_server.err").string());
    REQUIRE(eventually([&] { return accepting("127.0.0.1", tls_port); }));

    const std::string tls = "  tls:\n    enabled: true\n    verification:\n      caCert:\n        inlineString: |\n" +
                            indent(ca.cert_pem, 10);
    dir.write("resources/all.yaml", generator + mes("sbx-tcp", 7462, "backend.sbx.test", echo_port) +
                                        mes("sbx-tls", 7463, "backend.sbx.test", tls_port, tls));
    fs::permissions(dir.path / "resources", fs::perms::owner_all | fs::perms::others_read | fs::perms::others_exec);
    MesdOptions options;
    options.conf_dir = (dir.path / "resources").string();
    options.dns_section = "  forward:\n    upstreams: [\"127.0.0.1:" + std::to_string(upstream_port) + "\"]\n";
    options.extra_config = "user: " + user.name + "\nsandbox: true\nproxy:\n  hostsFile: \"\"\n  connectTimeout: 3s\n";
    Mesd mesd(dir.path / "mesd", options);
    auto ask = [&](const std::string& name) {
        return trim(output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), name, "+short", "+tries=1", "+time=2"}));
    };
    auto st = status_of("/proc/" + std::to_string(mesd.pid()) + "/status");
    CHECK(st["Seccomp"] == "2");
    CHECK(st["NoNewPrivs"] == "1");
    CHECK(st["Uid"] == ids(user.uid));

    auto tcp_vip = ask("sbx-tcp.mesh");
    auto tls_vip = ask("sbx-tls.mesh");
    CHECK_THAT(tcp_vip, Catch::Matches(R"(127\.242\.\d+\.\d+)"));
    CHECK(ask("fwd.sbx.test") == "192.0.2.71");
    CHECK(eventually([&] { return echoed(tcp_vip, 7462, "through the sandbox\n") == "through the sandbox\n"; }));
    CHECK(eventually([&] { return say(tls_vip, 7463, "hello\n") == "olleh\n"; }));

    // A MES added to the conf dir is applied by the user, in the sandbox.
    dir.write("resources/more.yaml", mes("sbx-late", 7464, "backend.sbx.test", echo_port));
    fs::permissions(dir.path / "resources" / "more.yaml", fs::perms::owner_read | fs::perms::owner_write | fs::perms::others_read);
    CHECK(eventually([&] { return !ask("sbx-late.mesh").empty(); }, 10s));
    auto late_vip = ask("sbx-late.mesh");
    CHECK(eventually([&] { return echoed(late_vip, 7464, "late\n") == "late\n"; }));

    ::kill(mesd.pid(), SIGHUP);
    CHECK(eventually([&] { return mesd.log().find("msg=SIGHUP") != std::string::npos; }));
    CHECK(ask("sbx-tcp.mesh") == tcp_vip);
    CHECK(ask("fwd.sbx.test") == "192.0.2.71");

    for (auto& task : task_statuses(mesd.pid())) {
        INFO("thread " << task["Pid"] << " " << task["Name"]);
        CHECK(task["Seccomp"] == "2");
        CHECK(task["NoNewPrivs"] == "1");
        CHECK(task["Uid"] == ids(user.uid));
    }
    CHECK(mesd.stop() == 0);
    auto log = mesd.log();
    INFO(log);
    CHECK_THAT(log, Catch::Contains("msg=\"sandbox entered\""));
    CHECK_THAT(log, Catch::Contains("msg=stopped"));
    CHECK_THAT(log, !Catch::Contains("level=error"));
    CHECK_THAT(log, !Catch::Contains("not permitted"));
}

TEST_CASE("privilege: links planted in the store or at the access log are not followed as root")
{
    SystemUser user("mesd-l");
    TempDir dir;
    auto data = data_dir_of(dir, user);
    // A root file the user must not reach through the store.
    auto victim = dir.write("victim", "root's own\n");
    REQUIRE(::chmod(victim.c_str(), 0600) == 0);
    auto config_text = "dataDir: " + data.string() + "\nuser: " + user.name +
                       "\nvip:\n  ipv4: 127.242.0.0/16\nadmin:\n  listen: 127.0.0.1:0\ndns:\n  listen: [\"127.0.0.1:0\"]\n";
    fs::create_symlink(victim, data / "lock.mdb");
    auto r = run({MESD_PATH, "--config", dir.write("mesd.yaml", config_text)});
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("holds a symbolic link, lock.mdb"));
    fs::remove(data / "lock.mdb");
    fs::create_hard_link(victim, data / "data.mdb");
    r = run({MESD_PATH, "--config", dir.write("mesd.yaml", config_text)});
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("data.mdb has 2 hard links"));
    fs::remove(data / "data.mdb");

    // The access log: a link in a directory the user may write to.
    auto logs = dir.path / "logs";
    fs::create_directories(logs);
    REQUIRE(::chown(logs.c_str(), user.uid, user.gid) == 0);
    fs::create_symlink(victim, logs / "access.log");
    r = run({MESD_PATH, "--config",
             dir.write("mesd.yaml", config_text + "proxy:\n  accessLog:\n    path: " + (logs / "access.log").string() + "\n")});
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("a symbolic link (not followed as root)"));
    std::ifstream in(victim);
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(content == "root's own\n");
    struct stat st {};
    REQUIRE(::stat(victim.c_str(), &st) == 0);
    CHECK(st.st_uid == 0);
}
