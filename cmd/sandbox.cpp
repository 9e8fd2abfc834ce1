// The seccomp allow-list (sandbox.hpp), built with libseccomp.
#include "cmd/sandbox.hpp"

#include <linux/netlink.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MESD_SANDBOX_SANITIZER 1
#else
#define MESD_SANDBOX_SANITIZER 0
#endif

namespace cmd::sandbox {

namespace {

constexpr const char* always[] = {
    // Files: the store (LMDB), the conf dir, logs, /etc/hosts and resolv.conf, /proc/self.
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "open", "openat", "openat2", "close", "close_range", "lseek", "_llseek",
    "fstat", "stat", "lstat", "newfstatat", "fstatat64", "statx", "statfs", "fstatfs", "statfs64", "fstatfs64",
    "access", "faccessat", "faccessat2", "readlink", "readlinkat", "getdents", "getdents64",
    "fcntl", "fcntl64", "flock", "fsync", "fdatasync", "msync", "ftruncate", "fallocate", "fadvise64",
    "unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat",
    "dup", "dup2", "dup3", "pipe", "pipe2", "umask", "getcwd",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    // Memory.
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise",
    // Sockets (their families are checked below).
    "socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername",
    "setsockopt", "getsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
    // libuv's loop.
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "poll", "ppoll", "select", "pselect6", "eventfd", "eventfd2",
    "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd", "signalfd4",
    // Time.
    "clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep", "clock_nanosleep",
    // Threads (clone below).
    "futex", "futex_waitv", "set_robust_list", "get_robust_list", "rseq", "set_tid_address", "gettid",
    "getpid", "getppid", "sched_yield", "sched_getaffinity", "sched_setaffinity", "exit", "exit_group",
    "arch_prctl", "membarrier",
    // Signals.
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "rt_sigtimedwait", "restart_syscall",
    // Reading who and where it is; randomness for OpenSSL.
    "getrandom", "uname", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid",
    "getrlimit", "ugetrlimit", "sysinfo", "getrusage", "getcpu", "capget", "times",
#if MESD_SANDBOX_SANITIZER
    // LeakSanitizer at exit: a clone that stops every thread with ptrace and is waited for.
    "ptrace", "wait4", "waitid", "kill", "mincore", "personality", "process_vm_readv", "sched_getparam",
    "sched_getscheduler", "setrlimit", "prlimit64", "prctl",
#endif
};

struct CtxFree {
    void operator()(scmp_filter_ctx c) const { seccomp_release(c); }
};
using Ctx = std::unique_ptr<void, CtxFree>;

std::string failed(const char* what, int rc) { return std::string(what) + ": " + std::strerror(-rc); }

}  // namespace

std::span<const char* const> allowed_calls() { return always; }

std::expected<void, std::string> enter()
{
    // Also set by libseccomp at load (SCMP_FLTATR_CTL_NNP); set first so that it holds
    // whether or not the load succeeds.
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return std::unexpected(std::string("PR_SET_NO_NEW_PRIVS: ") + std::strerror(errno));
    Ctx ctx(seccomp_init(SCMP_ACT_ERRNO(EPERM)));
    if (!ctx) return std::unexpected("seccomp_init failed");
    scmp_filter_ctx c = ctx.get();
    if (int rc = seccomp_attr_set(c, SCMP_FLTATR_CTL_TSYNC, 1); rc != 0) return std::unexpected(failed("TSYNC", rc));
    auto allow = [&](const char* name, std::initializer_list<scmp_arg_cmp> args = {}) -> int {
        int nr = seccomp_syscall_resolve_name(name);
        if (nr == __NR_SCMP_ERROR) return 0;  // not a call of this architecture
        return seccomp_rule_add_array(c, SCMP_ACT_ALLOW, nr, static_cast<unsigned>(args.size()), args.begin());
    };
    for (const char* name : always)
        if (int rc = allow(name); rc != 0) return std::unexpected(failed(name, rc));

    constexpr scmp_datum_t namespaces = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
                                        CLONE_NEWPID | CLONE_NEWNET;
    constexpr scmp_datum_t int_mask = 0xffffffffu;  // an int argument, whatever its upper bits hold
    int rc = allow("clone", {SCMP_A0(SCMP_CMP_MASKED_EQ, namespaces, 0)});
    if (rc == 0) rc = seccomp_rule_add(c, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    for (scmp_datum_t family : {AF_UNIX, AF_INET, AF_INET6})
        if (rc == 0) rc = allow("socket", {SCMP_A0(SCMP_CMP_MASKED_EQ, int_mask, family)});
    if (rc == 0)
        rc = allow("socket", {SCMP_A0(SCMP_CMP_MASKED_EQ, int_mask, AF_NETLINK),
                              SCMP_A2(SCMP_CMP_MASKED_EQ, int_mask, NETLINK_ROUTE)});
    for (scmp_datum_t request : {scmp_datum_t{FIONBIO}, scmp_datum_t{FIOCLEX}, scmp_datum_t{FIONCLEX},
                                 scmp_datum_t{FIONREAD}, scmp_datum_t{TCGETS}, scmp_datum_t{TIOCGWINSZ}})
        if (rc == 0) rc = allow("ioctl", {SCMP_A1(SCMP_CMP_MASKED_EQ, int_mask, request)});
    // Signals to this process only (raise, abort).
    for (const char* name : {"tgkill"})
        if (rc == 0)
            rc = allow(name, {SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(::getpid()))});
#if !MESD_SANDBOX_SANITIZER
    // Reading limits (getrlimit goes through prlimit64 with no new limit).
    if (rc == 0) rc = allow("prlimit64", {SCMP_A2(SCMP_CMP_EQ, 0)});
    for (scmp_datum_t option : {scmp_datum_t{PR_SET_NAME}, scmp_datum_t{PR_GET_NAME}, scmp_datum_t{PR_GET_DUMPABLE},
                                scmp_datum_t{PR_GET_NO_NEW_PRIVS}, scmp_datum_t{PR_GET_SECCOMP}, scmp_datum_t{PR_CAPBSET_READ},
                                scmp_datum_t{PR_GET_KEEPCAPS}})
        if (rc == 0) rc = allow("prctl", {SCMP_A0(SCMP_CMP_MASKED_EQ, int_mask, option)});
#endif
    if (rc != 0) return std::unexpected(failed("seccomp_rule_add", rc));
    if (int loaded = seccomp_load(c); loaded != 0) return std::unexpected(failed("cannot load the seccomp filter", loaded));
    return {};
}

}  // namespace cmd::sandbox
