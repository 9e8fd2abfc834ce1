#include "store/detail/lmdb.hpp"

#include "store/detail/guard.hpp"

#include <cerrno>

namespace store::detail {

namespace {

MDB_val val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
std::string_view view(const MDB_val& v) { return std::string_view(static_cast<const char*>(v.mv_data), v.mv_size); }

}  // namespace

Failure from_mdb(int rc, std::string_view what)
{
    std::string message(what);
    message += ": ";
    switch (rc) {
    case MDB_MAP_FULL: message += "the store's map is full"; break;
    case MDB_READERS_FULL: message += "too many readers of the store at once"; break;
    case MDB_VERSION_MISMATCH: message += "the store was written by another LMDB version"; break;
    case MDB_INVALID: message += "not an LMDB store (data.mdb is damaged or something else)"; break;
    case MDB_CORRUPTED: message += "the store is corrupted"; break;
    case MDB_PAGE_NOTFOUND: message += "the store is corrupted (a page it refers to is missing)"; break;
    case map_fault: message += "reading data.mdb faulted: the file was truncated or is damaged"; break;
    case lmdb_assertion: message += std::string("the store is corrupted (LMDB: ") + last_assertion() + ")"; break;
    case EACCES: message += "permission denied"; break;
    case ENOSPC: message += "no space left on device"; break;
    case EROFS: message += "read-only file system"; break;
    default: message += mdb_strerror(rc); break;
    }
    return Failure{rc, std::move(message)};
}

Res<std::optional<std::string_view>> Txn::get(MDB_dbi dbi, std::string_view key) const
{
    MDB_val k = val(key), v{};
    int rc = guarded([&] {
        int r = mdb_get(txn_, dbi, &k, &v);
        if (r == 0) touch(v);
        return r;
    });
    if (rc == MDB_NOTFOUND) return std::optional<std::string_view>{};
    if (rc != 0) return std::unexpected(from_mdb(rc, "read"));
    return std::optional<std::string_view>{view(v)};
}

// Writes are not guarded: while writing, LMDB links cursors that live on its own stack into
// the transaction, and a jump past them would leave the abort freeing a dead stack address.
// A fault in a write stays fatal. The file is checked before it is opened, and LMDB's writer
// lock is robust: a writer that died does not block the next one.
Res<void> Txn::put(MDB_dbi dbi, std::string_view key, std::string_view value)
{
    MDB_val k = val(key), v = val(value);
    int rc = mdb_put(txn_, dbi, &k, &v, 0);
    if (rc != 0) return std::unexpected(from_mdb(rc, "write"));
    return {};
}

Res<bool> Txn::del(MDB_dbi dbi, std::string_view key)
{
    MDB_val k = val(key);
    int rc = mdb_del(txn_, dbi, &k, nullptr);
    if (rc == MDB_NOTFOUND) return false;
    if (rc != 0) return std::unexpected(from_mdb(rc, "delete"));
    return true;
}

Res<void> Txn::scan(MDB_dbi dbi, std::string_view prefix,
                    const std::function<bool(std::string_view, std::string_view)>& fn) const
{
    MDB_cursor* cursor = nullptr;
    int rc = guarded([&] { return mdb_cursor_open(txn_, dbi, &cursor); });
    if (rc != 0) return std::unexpected(from_mdb(rc, "scan"));
    MDB_val k = val(prefix), v{};
    auto step = [&](MDB_cursor_op op) {
        return guarded([&] {
            int r = mdb_cursor_get(cursor, &k, &v, op);
            if (r == 0) {
                touch(k);
                touch(v);
            }
            return r;
        });
    };
    rc = step(prefix.empty() ? MDB_FIRST : MDB_SET_RANGE);
    while (rc == 0) {
        auto key = view(k);
        if (!key.starts_with(prefix) || !fn(key, view(v))) break;
        rc = step(MDB_NEXT);
    }
    mdb_cursor_close(cursor);
    if (rc != 0 && rc != MDB_NOTFOUND) return std::unexpected(from_mdb(rc, "scan"));
    return {};
}

Res<void> Txn::commit()
{
    MDB_txn* t = txn_;
    txn_ = nullptr;
    if (dbs_.open_txns) --*dbs_.open_txns;
    int rc = mdb_txn_commit(t);  // not guarded, as put and del are not
    if (rc != 0) return std::unexpected(from_mdb(rc, "commit"));
    return {};
}

void Txn::abort()
{
    if (!txn_) return;
    if (dbs_.open_txns) --*dbs_.open_txns;
    mdb_txn_abort(txn_);
    txn_ = nullptr;
}

std::string u64_be(std::uint64_t v)
{
    std::string out(8, '\0');
    for (int i = 7; i >= 0; --i) {
        out[static_cast<std::size_t>(i)] = static_cast<char>(v & 0xff);
        v >>= 8;
    }
    return out;
}

std::uint64_t from_u64_be(std::string_view b)
{
    std::uint64_t v = 0;
    for (char c : b.substr(0, 8)) v = (v << 8) | static_cast<unsigned char>(c);
    return v;
}

}  // namespace store::detail
