// Confinement without systemd (`sandbox: true`): PR_SET_NO_NEW_PRIVS and a seccomp
// allow-list of the system calls mesd makes once start-up is done.
//
// What is allowed: file I/O on descriptors and paths (the store's LMDB: mmap, msync, fcntl
// locks, pread/pwrite, fdatasync; the conf dir; the hosts file and resolv.conf), memory and
// threads (clone without namespace flags, futex, rseq), libuv's loop (epoll, eventfd,
// timerfd, signalfd, pipes), sockets of the families mesd speaks (AF_INET, AF_INET6,
// AF_UNIX, and AF_NETLINK's route protocol, which getaddrinfo asks for the host's
// addresses) and everything done on them (bind, listen and setsockopt too: bind mode opens
// listeners as MES appear), signals to itself, time, getrandom (OpenSSL), and a few ioctls
// (FIONBIO, FIOCLEX, FIONCLEX, FIONREAD, TCGETS, TIOCGWINSZ). prctl is limited to thread
// names and reading state; prlimit64 to reading limits.
//
// Everything else fails with EPERM: execve, ptrace, mount, unshare and namespaces, module
// loading, keyrings, bpf, perf, io_uring, reboot, set*id, chown, chroot... EPERM rather than
// killing the process: a call on a rare path that the list misses (an NSS module a site
// configures) fails that one operation, which mesd reports where it happens, instead of
// taking DNS down for the host; the calls a compromised process wants fail all the same.
// clone3 fails with ENOSYS, so that glibc falls back to clone, whose flags can be checked
// (clone3 passes them in memory, out of a filter's reach), as systemd's
// RestrictNamespaces= does. System calls of another ABI (i386, x32) kill the process.
//
// Sanitizer builds (ASan, TSan: __SANITIZE_ADDRESS__, __SANITIZE_THREAD__) also allow what
// their runtimes do at exit and on a report: LeakSanitizer stops the threads with ptrace
// from a clone it waits for.
#pragma once

#include <expected>
#include <span>
#include <string>

namespace cmd::sandbox {

// Sets PR_SET_NO_NEW_PRIVS and loads the allow-list into every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC), and into every thread started later. For good: there is no
// way out. An error says which step failed; nothing is half applied to the threads.
std::expected<void, std::string> enter();

// The system calls allowed without conditions, by name (those unknown on this
// architecture are skipped).
std::span<const char* const> allowed_calls();

}  // namespace cmd::sandbox
