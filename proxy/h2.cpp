#include "proxy/detail/h2.hpp"

#include <nghttp2/nghttp2.h>

#include <strings.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <string_view>
#include <vector>

namespace proxy::detail {

namespace {

constexpr std::string_view preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";  // RFC 9113 §3.4

// RFC 9113 §6: frame types and flags.
constexpr std::uint8_t type_headers = 0x1;
constexpr std::uint8_t type_push_promise = 0x5;
constexpr std::uint8_t type_continuation = 0x9;
constexpr std::uint8_t flag_end_stream = 0x1;
constexpr std::uint8_t flag_end_headers = 0x4;
constexpr std::uint8_t flag_padded = 0x8;
constexpr std::uint8_t flag_priority = 0x20;

// The initial SETTINGS_MAX_FRAME_SIZE, which every endpoint must accept whatever it
// advertises (RFC 9113 §4.2): frames made here never need the endpoint's SETTINGS.
constexpr std::size_t max_frame = 16384;

// A HEADERS payload: pad length, priority fields, the fragment, at most 255 bytes of padding.
constexpr std::size_t max_headers_payload = AuthorityRewriter::max_encoded_block + 1 + 5 + 255;

void put_frame_header(std::string& out, std::size_t length, std::uint8_t type, std::uint8_t flags, std::uint32_t stream)
{
    const char h[9] = {static_cast<char>((length >> 16) & 0xff), static_cast<char>((length >> 8) & 0xff),
                       static_cast<char>(length & 0xff),         static_cast<char>(type),
                       static_cast<char>(flags),                 static_cast<char>((stream >> 24) & 0x7f),
                       static_cast<char>((stream >> 16) & 0xff), static_cast<char>((stream >> 8) & 0xff),
                       static_cast<char>(stream & 0xff)};
    out.append(h, sizeof h);
}

struct Field {
    std::string name, value;
    std::uint8_t flags;  // NGHTTP2_NV_FLAG_NO_INDEX where the client sent it never-indexed
};

}  // namespace

void AuthorityRewriter::InflaterFree::operator()(nghttp2_hd_inflater* p) const
{
    nghttp2_hd_inflate_del(p);
}

void AuthorityRewriter::DeflaterFree::operator()(nghttp2_hd_deflater* p) const
{
    nghttp2_hd_deflate_del(p);
}

AuthorityRewriter::AuthorityRewriter(std::string authority) : authority_(std::move(authority))
{
    nghttp2_hd_inflater* in = nullptr;
    nghttp2_hd_deflater* de = nullptr;
    // The inflater must accept what the client's encoder may use, which is bounded by the
    // SETTINGS_HEADER_TABLE_SIZE the endpoint advertised (4096 unless it said otherwise, and
    // few go above). That setting travels the other way, unread here: the inflater allows up
    // to max_dynamic_table, which bounds what it holds; a client beyond it fails to decode.
    //
    // The deflater keeps no dynamic table at all (its first block says so with a size
    // update to 0): its encoding can then never exceed the endpoint's own
    // SETTINGS_HEADER_TABLE_SIZE, whatever that is and whenever it changes, so that
    // direction need not be followed either. It costs the endpoint's side only the indexing
    // of repeated headers, which the client-to-mesd hop (usually loopback) keeps.
    if (nghttp2_hd_inflate_new(&in) != 0) throw std::bad_alloc();
    inflater_.reset(in);
    if (nghttp2_hd_inflate_change_table_size(in, max_dynamic_table) != 0) throw std::bad_alloc();
    if (nghttp2_hd_deflate_new(&de, 0) != 0) throw std::bad_alloc();
    deflater_.reset(de);
}

AuthorityRewriter::~AuthorityRewriter() = default;

bool AuthorityRewriter::feed(const char* data, std::size_t size, std::string& out)
{
    if (failed_) return false;
    std::size_t at = 0;
    while (at < size) {
        std::size_t left = size - at;
        switch (state_) {
        case State::preface: {
            std::size_t n = std::min(left, preface.size() - preface_seen_);
            if (std::memcmp(data + at, preface.data() + preface_seen_, n) != 0) return fail();
            out.append(data + at, n);
            preface_seen_ += n;
            at += n;
            if (preface_seen_ == preface.size()) state_ = State::frame_header;
            break;
        }
        case State::frame_header: {
            std::size_t n = std::min(left, sizeof header_ - header_have_);
            std::memcpy(header_ + header_have_, data + at, n);
            header_have_ += n;
            at += n;
            if (header_have_ < sizeof header_) break;
            header_have_ = 0;
            if (!start_frame(out)) return fail();
            break;
        }
        case State::pass: {
            std::size_t n = std::min(left, remaining_);
            out.append(data + at, n);
            remaining_ -= n;
            at += n;
            if (remaining_ == 0) state_ = State::frame_header;
            break;
        }
        case State::collect: {
            std::size_t n = std::min(left, remaining_);
            payload_.append(data + at, n);
            remaining_ -= n;
            at += n;
            if (remaining_ == 0 && !end_fragment(out)) return fail();
            break;
        }
        }
    }
    return true;
}

// A frame header is complete: decide what its payload is for.
bool AuthorityRewriter::start_frame(std::string& out)
{
    std::size_t length = (std::size_t{header_[0]} << 16) | (std::size_t{header_[1]} << 8) | header_[2];
    type_ = header_[3];
    flags_ = header_[4];
    stream_ = ((std::uint32_t{header_[5]} & 0x7f) << 24) | (std::uint32_t{header_[6]} << 16) |
              (std::uint32_t{header_[7]} << 8) | header_[8];
    // RFC 9113 §6.10: a header block is followed by nothing but its own CONTINUATION frames.
    if (in_block_ && (type_ != type_continuation || stream_ != block_stream_)) return false;
    switch (type_) {
    case type_headers:
        if (stream_ == 0 || length > max_headers_payload) return false;
        break;
    case type_continuation:
        if (!in_block_ || length > max_encoded_block - block_.size()) return false;
        break;
    case type_push_promise:
        // Servers only (RFC 9113 §8.4): from a client it is a connection error, and its
        // header block would be encoded against a table the endpoint no longer follows.
        return false;
    default:
        out.append(reinterpret_cast<const char*>(header_), sizeof header_);
        remaining_ = length;
        state_ = length ? State::pass : State::frame_header;
        return true;
    }
    payload_.clear();
    remaining_ = length;
    state_ = State::collect;
    return length ? true : end_fragment(out);
}

// A HEADERS or CONTINUATION payload is complete.
bool AuthorityRewriter::end_fragment(std::string& out)
{
    state_ = State::frame_header;
    std::string_view p = payload_;
    if (type_ == type_headers) {
        std::size_t pad = 0;
        if (flags_ & flag_padded) {
            if (p.empty()) return false;
            pad = static_cast<unsigned char>(p[0]);
            p.remove_prefix(1);
        }
        priority_.clear();
        if (flags_ & flag_priority) {
            if (p.size() < 5) return false;
            priority_ = p.substr(0, 5);
            p.remove_prefix(5);
        }
        if (pad > p.size()) return false;  // RFC 9113 §6.2: padding as long as the payload
        p.remove_suffix(pad);
        if (p.size() > max_encoded_block) return false;
        block_.assign(p);
        block_stream_ = stream_;
        block_flags_ = flags_ & (flag_end_stream | flag_priority);
        in_block_ = true;
    } else {
        block_.append(p);  // bounded in start_frame
    }
    payload_.clear();
    if (!(flags_ & flag_end_headers)) return true;
    in_block_ = false;
    return rewrite_block(out);
}

bool AuthorityRewriter::rewrite_block(std::string& out)
{
    std::vector<Field> fields;
    std::size_t decoded = 0;
    const auto* in = reinterpret_cast<const std::uint8_t*>(block_.data());
    std::size_t left = block_.size();
    encoded_total_ += block_.size();
    while (true) {
        nghttp2_nv nv{};
        int inflate_flags = 0;
        ssize_t n = nghttp2_hd_inflate_hd2(inflater_.get(), &nv, &inflate_flags, in, left, 1);
        if (n < 0) return false;
        in += n;
        left -= static_cast<std::size_t>(n);
        if (inflate_flags & NGHTTP2_HD_INFLATE_EMIT) {
            decoded += nv.namelen + nv.valuelen + 32;
            if (decoded > max_header_list) return false;
            decoded_total_ += nv.namelen + nv.valuelen;
            if (decoded_total_ > max_expansion * encoded_total_ + expansion_allowance) return false;
            fields.push_back({std::string(reinterpret_cast<const char*>(nv.name), nv.namelen),
                              std::string(reinterpret_cast<const char*>(nv.value), nv.valuelen),
                              static_cast<std::uint8_t>(nv.flags & NGHTTP2_NV_FLAG_NO_INDEX)});
        }
        if (inflate_flags & NGHTTP2_HD_INFLATE_FINAL) {
            nghttp2_hd_inflate_end_headers(inflater_.get());
            break;
        }
        if (!(inflate_flags & NGHTTP2_HD_INFLATE_EMIT) && left == 0) return false;
    }
    block_.clear();

    bool request = false, plain_connect = false, has_protocol = false, has_authority = false;
    std::size_t pseudo_end = 0;  // pseudo-headers come first (RFC 9113 §8.3)
    for (std::size_t i = 0; i < fields.size(); ++i) {
        const auto& f = fields[i];
        if (f.name.starts_with(':')) pseudo_end = i + 1;
        if (f.name == ":method") {
            request = true;
            plain_connect = f.value == "CONNECT";
        }
        if (f.name == ":protocol") has_protocol = true;
    }
    if (plain_connect && !has_protocol) request = false;
    bool has_host = false;
    if (!(plain_connect && !has_protocol)) {
        for (auto& f : fields) {
            if (f.name == ":authority") {
                f.value = authority_;
                has_authority = true;
            } else if (strcasecmp(f.name.c_str(), "host") == 0) {
                f.value = authority_;
                has_host = true;
            }
        }
    }
    // A request with no authority at all gets one, as HostRewriter adds a missing Host.
    if (request && !has_authority && !has_host)
        fields.insert(fields.begin() + static_cast<std::ptrdiff_t>(pseudo_end), Field{":authority", authority_, 0});

    std::vector<nghttp2_nv> nva;
    nva.reserve(fields.size());
    for (auto& f : fields)
        nva.push_back({reinterpret_cast<std::uint8_t*>(f.name.data()), reinterpret_cast<std::uint8_t*>(f.value.data()),
                       f.name.size(), f.value.size(), f.flags});
    std::string encoded(nghttp2_hd_deflate_bound(deflater_.get(), nva.data(), nva.size()), '\0');
    ssize_t n = nghttp2_hd_deflate_hd(deflater_.get(), reinterpret_cast<std::uint8_t*>(encoded.data()), encoded.size(),
                                      nva.data(), nva.size());
    if (n < 0) return false;
    encoded.resize(static_cast<std::size_t>(n));

    // HEADERS (the priority fields first, when the client sent them), then CONTINUATION.
    std::string_view rest = encoded;
    std::size_t room = max_frame - priority_.size();
    std::size_t chunk = std::min(room, rest.size());
    bool last = chunk == rest.size();
    put_frame_header(out, priority_.size() + chunk, type_headers, static_cast<std::uint8_t>(block_flags_ | (last ? flag_end_headers : 0)),
                     block_stream_);
    out += priority_;
    out.append(rest.substr(0, chunk));
    rest.remove_prefix(chunk);
    while (!last) {
        chunk = std::min(max_frame, rest.size());
        last = chunk == rest.size();
        put_frame_header(out, chunk, type_continuation, last ? flag_end_headers : 0, block_stream_);
        out.append(rest.substr(0, chunk));
        rest.remove_prefix(chunk);
    }
    return true;
}

}  // namespace proxy::detail
