// Reads of the LMDB map that fail instead of killing the process.
//
// LMDB hands out pointers into a read-only mapping of data.mdb. When the file is truncated
// under the mapping (another process, a full disk, a bad restore) touching a page past the
// new end raises SIGBUS; a damaged page can send LMDB after a pointer outside the map
// (SIGSEGV) or into one of its assertions (abort). `guarded` runs one LMDB call with a
// thread-local jump target set: the SIGBUS/SIGSEGV handler, and LMDB's assertion callback,
// jump back to it and the call returns `map_fault` or `lmdb_assertion`. A fault while no
// guard is active on the faulting thread goes to the handler that was there before (the
// default: the process dies), so real bugs stay fatal.
//
// The jump skips every frame between the guard and the fault, so what runs under a guard is
// C code only (LMDB calls, reads of the map): nothing with a destructor.
#pragma once

#include <lmdb.h>

#include <cstddef>
#include <type_traits>

namespace store::detail {

// Below LMDB's own error codes (MDB_KEYEXIST is -30799).
constexpr int map_fault = -30900;
constexpr int lmdb_assertion = -30901;

// The text of the LMDB assertion that last failed a guarded call on this thread.
const char* last_assertion() noexcept;

int guarded_call(int (*op)(void*), void* arg) noexcept;

template <class F>
int guarded(F&& f) noexcept
{
    using Fn = std::remove_reference_t<F>;
    return guarded_call([](void* p) { return (*static_cast<Fn*>(p))(); }, &f);
}

// Touches every page of `v` so that a fault on it happens under the guard, not later in a
// decoder.
inline void touch(const MDB_val& v) noexcept
{
    const auto* p = static_cast<const volatile char*>(v.mv_data);
    if (!p || v.mv_size == 0) return;
    for (std::size_t i = 0; i < v.mv_size; i += 4096) (void)p[i];
    (void)p[v.mv_size - 1];
}

// For mdb_env_set_assert: jumps out of a guarded call instead of letting LMDB abort().
void on_lmdb_assert(MDB_env* env, const char* message) noexcept;

}  // namespace store::detail
