// Checks of data.mdb made before LMDB maps it: LMDB trusts its file, and a truncated or
// damaged one makes it read past the end of the map (SIGBUS), follow page numbers into
// nowhere (SIGSEGV) or trip its assertions (abort). This reads the file with pread(2) only.
#pragma once

#include "store/detail/lmdb.hpp"

#include <string>

namespace store::detail {

// The meta pages (magic, version, page size, last page number against the file's size and
// the map size they record), then every page reachable from the newest one: page headers,
// node bounds, child and overflow page numbers, each page reached once, and the page and
// entry counts each database records. An absent or empty file passes (LMDB creates it).
// A damaged file fails with MDB_CORRUPTED, MDB_INVALID or MDB_VERSION_MISMATCH and a
// message saying what is wrong where.
Res<void> verify_data_file(const std::string& path);

}  // namespace store::detail
