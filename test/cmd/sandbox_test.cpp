// The sandbox module: the allow-list entered in a forked child (it cannot be left), where
// what mesd does after start-up works and what it never does fails with EPERM.
#include "cmd/sandbox.hpp"
#include "store/store.hpp"
#include "test/support/resources.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <set>
#include <map>
#include <sstream>
#include <string>
#include <thread>

using namespace test_support;

namespace {

// Runs `body` in a child after sandbox::enter(); what it wrote to the pipe, as name=value lines.
std::map<std::string, std::string> in_sandbox(const std::function<void(const std::function<void(const std::string&, const std::string&)>&)>& before,
                                              const std::function<void(const std::function<void(const std::string&, const std::string&)>&)>& body)
{
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(fds[0]);
        auto say = [&](const std::string& name, const std::string& value) {
            std::string line = name + "=" + value + "\n";
            (void)!::write(fds[1], line.data(), line.size());
        };
        before(say);
        auto entered = cmd::sandbox::enter();
        say("entered", entered ? "yes" : entered.error());
        if (entered) body(say);
        ::_exit(0);
    }
    ::close(fds[1]);
    std::string all;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0) all.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    INFO(all);
    CHECK(WIFEXITED(status));
    std::map<std::string, std::string> out;
    std::istringstream in(all);
    std::string line;
    while (std::getline(in, line))
        if (auto eq = line.find('='); eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
    return out;
}

std::string result(long rc) { return rc >= 0 ? "ok" : std::string(std::strerror(errno)); }

const std::string eperm = std::strerror(EPERM);

}  // namespace

TEST_CASE("sandbox: forbidden calls fail with EPERM while the store, sockets and threads work")
{
    TempDir dir;
    std::unique_ptr<store::Store> db;
    auto report = in_sandbox(
        [&](auto say) {
            auto opened = store::Store::open(store::Options{(dir.path / "data").string()});
            say("store_open", opened ? "ok" : opened.error().message);
            if (opened) db = std::move(*opened);
        },
        [&](auto say) {
            // Allowed: what mesd does once it serves.
            if (db) {
                store::WriteOptions options;
                options.pools.ipv4 = "127.242.0.0/16";
                std::vector<conf::Resource> resources = {make_mes("sandboxed", 7465)};
                auto written = db->apply(resources, options);
                say("store_write", written ? "ok" : written.error().message);
                bool found = false;
                if (auto snap = db->snapshot())
                    if (auto got = snap->get(conf::Kind::mesh_external_service, "default", "sandboxed"); got && *got) found = true;
                say("store_read", found ? "ok" : "missing");
            }
            int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            sockaddr_in addr{};
            addr.sin_family = AF_INET;
            addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            socklen_t len = sizeof addr;
            bool listening = listener >= 0 && ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                             ::listen(listener, 8) == 0 &&
                             ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
            int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            bool connected = listening && client >= 0 && ::connect(client, reinterpret_cast<sockaddr*>(&addr), len) == 0;
            int accepted = connected ? ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC) : -1;
            say("tcp", accepted >= 0 ? "ok" : std::strerror(errno));
            say("udp6", result(::socket(AF_INET6, SOCK_DGRAM, 0)));
            std::string thread_ran = "no";
            std::thread([&] { thread_ran = "ok"; }).join();
            say("thread", thread_ran);
            char random[16];
            say("getrandom", result(::getrandom(random, sizeof random, 0)));

            // Forbidden: what an attacker wants and mesd never does.
            say("mount", result(::mount("none", "/mnt", "tmpfs", 0, nullptr)));
            say("unshare", result(::unshare(CLONE_NEWUSER | CLONE_NEWNET)));
            say("execve", result(::execl("/bin/true", "true", static_cast<char*>(nullptr))));
            say("init_module", result(::syscall(SYS_init_module, nullptr, 0, "")));
            say("chmod", result(::chmod(dir.path.c_str(), 0777)));
            say("packet_socket", result(::socket(AF_PACKET, SOCK_RAW, 0)));
            say("setuid", result(::syscall(SYS_setuid, 0)));
            say("clone_newnet", result(::syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, nullptr, nullptr, nullptr, 0)));
            say("clone3", result(::syscall(SYS_clone3, nullptr, 0)) == std::strerror(ENOSYS) ? "ENOSYS" : "other");
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
            say("ptrace", result(::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr)));
#else
            say("ptrace", eperm);  // LeakSanitizer's exit needs it in sanitizer builds
#endif
            say("no_new_privs", std::to_string(::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)));
            db.reset();
        });
    INFO("report of the sandboxed child");
    CHECK(report["store_open"] == "ok");
    CHECK(report["entered"] == "yes");
    CHECK(report["store_write"] == "ok");
    CHECK(report["store_read"] == "ok");
    CHECK(report["tcp"] == "ok");
    CHECK(report["udp6"] == "ok");
    CHECK(report["thread"] == "ok");
    CHECK(report["getrandom"] == "ok");
    CHECK(report["no_new_privs"] == "1");
    for (const char* call : {"mount", "unshare", "execve", "init_module", "chmod", "packet_socket", "setuid", "clone_newnet", "ptrace"}) {
        INFO(call);
        CHECK(report[call] == eperm);
    }
    CHECK(report["clone3"] == "ENOSYS");
}

TEST_CASE("sandbox: the allow-list holds what LMDB and libuv need and nothing that changes the system")
{
    std::set<std::string> allowed(cmd::sandbox::allowed_calls().begin(), cmd::sandbox::allowed_calls().end());
    for (const char* call : {"mmap", "msync", "fcntl", "pread64", "pwrite64", "fdatasync", "epoll_pwait", "eventfd2",
                             "accept4", "sendmmsg", "recvmmsg", "futex", "rseq", "getrandom", "exit_group"})
        CHECK(allowed.count(call) == 1);
    for (const char* call : {"execve", "execveat", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "init_module",
                             "finit_module", "kexec_load", "bpf", "perf_event_open", "io_uring_setup", "keyctl", "add_key",
                             "setuid", "setresuid", "chown", "fchown", "chmod", "reboot", "swapon", "clone3"})
        CHECK(allowed.count(call) == 0);
}
