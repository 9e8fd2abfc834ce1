// A thin layer over LMDB for the store: errors as values (translated in one place), a
// transaction that aborts unless committed, and prefix scans.
#pragma once

#include <lmdb.h>

#include <atomic>

#include <cstdint>
#include <expected>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace store::detail {

struct Failure {
    int code = 0;  // LMDB's or errno's; MDB_MAP_FULL makes the writer grow the map and retry
    std::string message;
};
template <class T>
using Res = std::expected<T, Failure>;

// The one place LMDB's error codes become messages.
Failure from_mdb(int rc, std::string_view what);

struct Dbs {
    MDB_dbi resources = 0;          // kind byte + mesh + NUL + name -> record
    MDB_dbi vip_by_owner = 0;       // mesh + NUL + name + NUL + '4'|'6' -> address bytes
    MDB_dbi owner_by_vip = 0;       // family byte + address bytes -> mesh + NUL + name
    MDB_dbi released = 0;           // family byte + release time (u64 BE seconds) + address -> ""
    MDB_dbi quarantine_by_vip = 0;  // family byte + address bytes -> release time (u64 BE)
    MDB_dbi hostnames = 0;          // lowercase hostname + NUL + mesh -> MES name
    MDB_dbi meta = 0;               // schema, generation, sequence, cursor4/6, pool4/6
    const std::string* data_dir = nullptr;  // the Store's, named in messages about damage
    // Transactions open in this process, counted up by Store's begin and down when their Txn
    // ends: the map may be resized only while there are none.
    std::atomic<int>* open_txns = nullptr;
};

class Txn {
public:
    Txn(MDB_txn* txn, const Dbs& dbs) : txn_(txn), dbs_(dbs) {}
    Txn(const Txn&) = delete;
    Txn& operator=(const Txn&) = delete;
    ~Txn() { abort(); }

    const Dbs& dbs() const { return dbs_; }
    MDB_txn* raw() const { return txn_; }

    // The value is valid until the next write in this transaction or its end.
    Res<std::optional<std::string_view>> get(MDB_dbi dbi, std::string_view key) const;
    Res<void> put(MDB_dbi dbi, std::string_view key, std::string_view value);
    // True when the key existed.
    Res<bool> del(MDB_dbi dbi, std::string_view key);
    // Calls `fn(key, value)` for every key starting with `prefix`, in order, until it returns false.
    Res<void> scan(MDB_dbi dbi, std::string_view prefix,
                   const std::function<bool(std::string_view, std::string_view)>& fn) const;
    Res<void> commit();
    void abort();

private:
    MDB_txn* txn_;
    Dbs dbs_;
};

std::string u64_be(std::uint64_t v);
std::uint64_t from_u64_be(std::string_view b);  // b.size() == 8

}  // namespace store::detail
