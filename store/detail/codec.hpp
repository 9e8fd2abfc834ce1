// The binary form of resources and statuses in LMDB: compact (a typical MES is well under
// 200 bytes), cheap to decode, and compared byte for byte to tell an unchanged re-apply.
// Untrusted in the sense that a damaged file must not crash us: every read is bounds-checked.
#pragma once

#include "store/store.hpp"

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace store::detail {

class Writer {
public:
    void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
    void varint(std::uint64_t v);
    void str(std::string_view s);
    void bytes(std::string_view s) { out_.append(s); }
    std::string& data() { return out_; }

private:
    std::string out_;
};

class Reader {
public:
    explicit Reader(std::string_view in) : in_(in) {}
    std::optional<std::uint8_t> u8();
    std::optional<std::uint64_t> varint();
    std::optional<std::string> str();
    std::optional<std::string_view> take(std::size_t n);
    std::size_t remaining() const { return in_.size(); }
    std::string_view rest() const { return in_; }

private:
    std::string_view in_;
};

void encode_resource(Writer& w, const conf::Resource& r);
std::optional<conf::Resource> decode_resource(Reader& r);

void encode_status(Writer& w, const MesStatus& s);
std::optional<MesStatus> decode_status(Reader& r);

// A record of the `resources` database: bookkeeping, the resource, its status.
struct Record {
    std::uint64_t created = 0;     // creation sequence; smaller is older
    std::int64_t created_at = 0;   // unix seconds
    std::int64_t modified_at = 0;  // unix seconds
    std::string resource_bytes;    // encode_resource output, compared on re-apply
    MesStatus status;              // meaningful for MeshExternalService only
};

std::string encode_record(const Record& rec);
std::optional<Record> decode_record(std::string_view bytes);

}  // namespace store::detail
