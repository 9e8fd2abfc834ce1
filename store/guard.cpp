#include "store/detail/guard.hpp"

#include <csetjmp>
#include <csignal>
#include <cstring>
#include <mutex>

namespace store::detail {

namespace {

thread_local sigjmp_buf* active = nullptr;
thread_local char assertion[256];

struct sigaction previous_bus {};
struct sigaction previous_segv {};

void on_fault(int sig, siginfo_t* info, void* context)
{
    // Only a fault the kernel raised (si_code > 0) is one of the map's: a SIGBUS or SIGSEGV
    // sent with kill(2) may come while LMDB holds a lock of the allocator's, and must not
    // jump.
    if (sigjmp_buf* target = active; target && info && info->si_code > 0) {
        active = nullptr;
        siglongjmp(*target, sig);
    }
    // Not a guarded read: whoever handled this before us (a sanitizer), or the default
    // action, which kills the process (raised again here, so that a signal sent with kill(2),
    // which no instruction would raise again, kills it too).
    const struct sigaction& previous = sig == SIGBUS ? previous_bus : previous_segv;
    if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction) {
        previous.sa_sigaction(sig, info, context);
        return;
    }
    if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    ::signal(sig, SIG_DFL);
    ::raise(sig);
}

void install()
{
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGBUS, &sa, &previous_bus);
        ::sigaction(SIGSEGV, &sa, &previous_segv);
    });
}

}  // namespace

const char* last_assertion() noexcept { return assertion; }

int guarded_call(int (*op)(void*), void* arg) noexcept
{
    install();
    sigjmp_buf target;
    sigjmp_buf* outer = active;
    // No mask saved (that would be a system call per read): the handler runs with
    // SA_NODEFER, so jumping out of it leaves no signal blocked.
    int jumped = sigsetjmp(target, 0);
    if (jumped != 0) {
        active = outer;
        return jumped == SIGBUS || jumped == SIGSEGV ? map_fault : lmdb_assertion;
    }
    active = &target;
    int rc = op(arg);
    active = outer;
    return rc;
}

void on_lmdb_assert(MDB_env*, const char* message) noexcept
{
    std::strncpy(assertion, message ? message : "", sizeof assertion - 1);
    assertion[sizeof assertion - 1] = '\0';
    if (sigjmp_buf* target = active) {
        active = nullptr;
        siglongjmp(*target, 1);
    }
    // Outside a guarded call LMDB aborts, as it would without us.
}

}  // namespace store::detail
