#include "dns/dns.hpp"

#include <ldns/ldns.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>

namespace dns {

namespace {

constexpr std::uint16_t rcode_noerror = 0;
constexpr std::uint16_t rcode_formerr = 1;
constexpr std::uint16_t rcode_servfail = 2;
constexpr std::uint16_t rcode_nxdomain = 3;
constexpr std::uint16_t rcode_notimp = 4;
constexpr std::uint16_t rcode_refused = 5;
constexpr std::uint16_t rcode_notauth = 9;
constexpr std::uint16_t tsig_badkey = 17;
constexpr std::uint16_t rcode_badvers = 16;
constexpr std::size_t header_size = 12;

struct PktFree {
    void operator()(ldns_pkt* p) const { ldns_pkt_free(p); }
};
using PktPtr = std::unique_ptr<ldns_pkt, PktFree>;

std::uint16_t read_u16(std::span<const std::uint8_t> b, std::size_t at)
{
    return static_cast<std::uint16_t>((b[at] << 8) | b[at + 1]);
}

// A header-only reply: what is possible when the question cannot be read (RFC 1035 4.1.1).
std::vector<std::uint8_t> header_reply(std::span<const std::uint8_t> query, std::uint16_t rcode)
{
    std::vector<std::uint8_t> out(query.begin(), query.begin() + header_size);
    std::uint8_t opcode_bits = query[2] & 0x78;
    // RD is defined for QUERY alone (RFC 1035 4.1.1); ISC's genreport flags it on NOTIMP.
    std::uint8_t rd = opcode_bits == 0 ? query[2] & 0x01 : 0;
    out[2] = static_cast<std::uint8_t>(0x80 | opcode_bits | rd);  // QR
    out[3] = static_cast<std::uint8_t>(rcode & 0x0f);
    std::fill(out.begin() + 4, out.end(), 0);
    return out;
}

// The name in lowercase presentation form without the final dot, read straight from the
// wire labels (this runs for every query: no printf-based conversion). A label holding a
// dot or a byte outside printable ASCII cannot be a generated hostname or zone name; it is
// written as '?' so that it matches nothing.
std::string lowercase_name(const ldns_rdf* dname)
{
    const auto* data = ldns_rdf_data(dname);
    std::size_t size = ldns_rdf_size(dname);
    std::string name;
    name.reserve(size);
    std::size_t pos = 0;
    while (pos < size) {
        std::size_t len = data[pos++];
        if (len == 0 || len > size - pos) break;
        if (!name.empty()) name.push_back('.');
        for (std::size_t i = 0; i < len; ++i) {
            auto c = static_cast<char>(data[pos + i]);
            if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
            else if (c == '.' || c <= ' ' || c > '~') c = '?';
            name.push_back(c);
        }
        pos += len;
    }
    return name;
}

ldns_rr* new_rr(const ldns_rdf* owner, ldns_rr_type type, std::uint32_t ttl)
{
    ldns_rr* rr = ldns_rr_new();
    ldns_rr_set_owner(rr, ldns_rdf_clone(owner));
    ldns_rr_set_type(rr, type);
    ldns_rr_set_class(rr, LDNS_RR_CLASS_IN);
    ldns_rr_set_ttl(rr, ttl);
    return rr;
}

ldns_rdf* dname(const std::string& text) { return ldns_dname_new_frm_str(text.c_str()); }

// An OPT record with our size, version 0 and the query's DO bit (RFC 3225 3), appended to a
// reply written by hand: an EDNS query gets one in every reply (RFC 6891 7).
void append_opt(std::vector<std::uint8_t>& reply, std::uint16_t udp_size, bool do_bit)
{
    reply.insert(reply.end(), {0, 0, static_cast<std::uint8_t>(LDNS_RR_TYPE_OPT), static_cast<std::uint8_t>(udp_size >> 8),
                               static_cast<std::uint8_t>(udp_size & 0xff), 0, 0, static_cast<std::uint8_t>(do_bit ? 0x80 : 0), 0,
                               0, 0});
    auto arcount = static_cast<std::uint16_t>(read_u16(reply, 10) + 1);
    reply[10] = static_cast<std::uint8_t>(arcount >> 8);
    reply[11] = static_cast<std::uint8_t>(arcount & 0xff);
}

// The reverse zone of a pool: its network's leading octets under in-addr.arpa, or nibbles
// under ip6.arpa, as many as the prefix covers whole ("10.1.0.0/20" -> "1.10.in-addr.arpa").
std::string reverse_apex(const vip::Pool& pool)
{
    bool v4 = pool.family() == vip::Family::v4;
    unsigned unit = v4 ? 8 : 4, width = v4 ? 32 : 128;
    unsigned labels = pool.prefix() / unit;
    vip::u128 network = pool.network().value;
    std::string apex;
    for (unsigned i = labels; i-- > 0;) {
        auto value = static_cast<unsigned>((network >> (width - (i + 1) * unit)) & ((vip::u128{1} << unit) - 1));
        if (v4) apex += std::to_string(value);
        else apex.push_back("0123456789abcdef"[value]);
        apex.push_back('.');
    }
    return apex + (v4 ? "in-addr.arpa" : "ip6.arpa");
}

// Where a name lies in the reverse zone it falls under.
enum class ReversePlace {
    apex,
    between,  // above addresses of the pool: an empty non-terminal (RFC 8020)
    address,  // a whole address of the pool
    none,     // no name of the zone: NXDOMAIN
};

// `name` below `apex`, the reverse zone of `pool`; `address` is set for a whole address.
ReversePlace reverse_place(std::string_view name, std::string_view apex, const vip::Pool& pool, vip::Address& address)
{
    if (name == apex) return ReversePlace::apex;
    name.remove_suffix(apex.size() + 1);
    bool v4 = pool.family() == vip::Family::v4;
    unsigned unit = v4 ? 8 : 4, width = v4 ? 32 : 128;
    unsigned bits = pool.prefix() / unit * unit;
    vip::u128 value = bits == 0 ? 0 : pool.network().value >> (width - bits) << (width - bits);
    // Labels from the apex down: each is the next octet or nibble, in the usual spelling.
    while (true) {
        auto dot = name.rfind('.');
        std::string_view label = dot == std::string_view::npos ? name : name.substr(dot + 1);
        if (bits == width || label.empty()) return ReversePlace::none;
        unsigned v = 0;
        if (v4) {
            if (label.size() > 3 || (label.size() > 1 && label[0] == '0')) return ReversePlace::none;
            for (char c : label) {
                if (c < '0' || c > '9') return ReversePlace::none;
                v = v * 10 + static_cast<unsigned>(c - '0');
            }
            if (v > 255) return ReversePlace::none;
        } else {
            char c = label[0];
            if (label.size() != 1 || !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return ReversePlace::none;
            v = static_cast<unsigned>(c <= '9' ? c - '0' : c - 'a' + 10);
        }
        bits += unit;
        value |= vip::u128{v} << (width - bits);
        if (dot == std::string_view::npos) break;
        name = name.substr(0, dot);
    }
    // The name's prefix and the pool's agree on the bits both have.
    unsigned common = std::min(bits, pool.prefix());
    vip::u128 all = v4 ? vip::u128{0xffffffff} : ~vip::u128{0};
    vip::u128 mask = common == 0 ? 0 : all >> (width - common) << (width - common);
    if ((value & mask) != (pool.network().value & mask)) return ReversePlace::none;
    if (bits < width) return ReversePlace::between;
    address = vip::Address{pool.family(), value};
    return ReversePlace::address;
}

}  // namespace

std::string qtype_name(std::uint16_t qtype)
{
    const ldns_rr_descriptor* d = ldns_rr_descript(qtype);
    if (d && d->_name) return d->_name;
    return "TYPE" + std::to_string(qtype);
}

std::string rcode_name(std::uint16_t rcode)
{
    switch (rcode) {
    case rcode_noerror: return "NOERROR";
    case rcode_formerr: return "FORMERR";
    case rcode_servfail: return "SERVFAIL";
    case rcode_nxdomain: return "NXDOMAIN";
    case rcode_notimp: return "NOTIMP";
    case rcode_refused: return "REFUSED";
    case rcode_notauth: return "NOTAUTH";
    case rcode_badvers: return "BADVERS";
    default: return "RCODE" + std::to_string(rcode);
    }
}

Responder::Responder(Settings settings)
    : settings_(std::move(settings)), ttl_(settings_.ttl), negative_ttl_(settings_.negative_ttl)
{
    for (auto& z : settings_.zones) {
        for (auto& c : z)
            if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (!z.empty() && z.back() == '.') z.pop_back();
    }
    // The root is no zone of ours (the configuration refuses it too).
    std::erase_if(settings_.zones, [](const std::string& z) { return z.empty(); });
}

namespace {

struct Reply {
    PktPtr pkt{ldns_pkt_new()};
    std::uint16_t rcode = rcode_noerror;
};

// Serialises `reply`; when it does not fit `limit`, drops every record and sets TC
// (RFC 1035 4.2.1, RFC 7766 section 5: the client retries over TCP).
std::vector<std::uint8_t> to_wire(ldns_pkt* pkt, std::size_t limit, bool& truncated)
{
    std::uint8_t* buf = nullptr;
    std::size_t size = 0;
    if (ldns_pkt2wire(&buf, pkt, &size) != LDNS_STATUS_OK) return {};
    if (size > limit) {
        LDNS_FREE(buf);
        for (auto section : {LDNS_SECTION_ANSWER, LDNS_SECTION_AUTHORITY, LDNS_SECTION_ADDITIONAL}) {
            ldns_rr_list* list = nullptr;
            switch (section) {
            case LDNS_SECTION_ANSWER: list = ldns_pkt_answer(pkt); break;
            case LDNS_SECTION_AUTHORITY: list = ldns_pkt_authority(pkt); break;
            default: list = ldns_pkt_additional(pkt); break;
            }
            ldns_rr_list_deep_free(list);
            ldns_rr_list* empty = ldns_rr_list_new();
            if (section == LDNS_SECTION_ANSWER) ldns_pkt_set_answer(pkt, empty);
            else if (section == LDNS_SECTION_AUTHORITY) ldns_pkt_set_authority(pkt, empty);
            else ldns_pkt_set_additional(pkt, empty);
        }
        ldns_pkt_set_ancount(pkt, 0);
        ldns_pkt_set_nscount(pkt, 0);
        ldns_pkt_set_arcount(pkt, 0);
        ldns_pkt_set_tc(pkt, true);
        truncated = true;
        if (ldns_pkt2wire(&buf, pkt, &size) != LDNS_STATUS_OK) return {};
    }
    std::vector<std::uint8_t> out(buf, buf + size);
    LDNS_FREE(buf);
    return out;
}

}  // namespace

namespace {

// Bounds-checked reading of untrusted bytes: every check is `n > remaining()`.
class WireReader {
public:
    explicit WireReader(std::span<const std::uint8_t> data) : data_(data) {}
    std::size_t pos() const { return pos_; }
    std::size_t remaining() const { return data_.size() - pos_; }
    bool u8(std::uint8_t& v)
    {
        if (1 > remaining()) return false;
        v = data_[pos_++];
        return true;
    }
    bool u16(std::uint16_t& v)
    {
        if (2 > remaining()) return false;
        v = static_cast<std::uint16_t>((data_[pos_] << 8) | data_[pos_ + 1]);
        pos_ += 2;
        return true;
    }
    bool skip(std::size_t n)
    {
        if (n > remaining()) return false;
        pos_ += n;
        return true;
    }
    std::uint8_t at(std::size_t i) const { return data_[i]; }

private:
    std::span<const std::uint8_t> data_;
    std::size_t pos_ = 0;
};

// Whether the options of an OPT record's RDATA each end within it (RFC 6891 6.1.2).
bool options_fit(std::span<const std::uint8_t> rdata)
{
    WireReader in(rdata);
    while (in.remaining() > 0) {
        std::uint16_t code = 0, length = 0;
        if (!in.u16(code) || !in.u16(length) || !in.skip(length)) return false;
    }
    return true;
}

// Skips a name, compressed or not; `root` tells whether it was the root itself.
bool skip_name(WireReader& in, bool& root)
{
    root = false;
    for (bool first = true;; first = false) {
        std::uint8_t len = 0;
        if (!in.u8(len)) return false;
        if ((len & 0xc0) == 0xc0) return in.skip(1);
        if (len & 0xc0) return false;
        if (len == 0) {
            root = first;
            return true;
        }
        if (!in.skip(len)) return false;
    }
}

// What the query's sections hold, read off the wire: ldns takes a second OPT record, or
// one in the wrong section, without complaint, and lifts a TSIG record out of any position.
struct QueryShape {
    bool complete = false;  // every counted record lies within the message
    bool bad_opt = false;   // RFC 6891 6.1.1: FORMERR
    bool bad_tsig = false;  // RFC 8945 5.2: a TSIG record anywhere but last: FORMERR
    bool has_opt = false;
    bool do_bit = false;  // the first OPT's
    bool has_tsig = false;
};

QueryShape shape_of(std::span<const std::uint8_t> query)
{
    QueryShape shape;
    WireReader in(query);
    std::array<std::uint16_t, 4> counts{};
    if (!in.skip(4)) return shape;
    for (auto& c : counts)
        if (!in.u16(c)) return shape;
    bool root = false;
    for (std::uint16_t i = 0; i < counts[0]; ++i)
        if (!skip_name(in, root) || !in.skip(4)) return shape;
    for (std::size_t section = 1; section < counts.size(); ++section) {
        for (std::uint16_t i = 0; i < counts[section]; ++i) {
            std::uint16_t type = 0, klass = 0, flags = 0, rdlen = 0;
            std::uint8_t ext_rcode = 0, version = 0;
            if (!skip_name(in, root) || !in.u16(type) || !in.u16(klass) || !in.u8(ext_rcode) || !in.u8(version) ||
                !in.u16(flags) || !in.u16(rdlen) || rdlen > in.remaining())
                return shape;
            auto rdata = query.subspan(in.pos(), rdlen);
            in.skip(rdlen);
            if (type == LDNS_RR_TYPE_OPT) {
                if (section != 3 || shape.has_opt || !root || !options_fit(rdata)) shape.bad_opt = true;
                if (!shape.has_opt) shape.do_bit = (flags & 0x8000) != 0;
                shape.has_opt = true;
            } else if (type == LDNS_RR_TYPE_TSIG) {
                if (section != 3 || i + 1 != counts[section]) shape.bad_tsig = true;
                shape.has_tsig = true;
            }
        }
    }
    shape.complete = true;
    return shape;
}

// Writes into a fixed buffer that the caller has sized for the largest fast reply.
class WireWriter {
public:
    explicit WireWriter(std::uint8_t* out) : out_(out) {}
    std::size_t size() const { return pos_; }
    // Past `n` bytes written at the current position by someone else.
    void skip(std::size_t n) { pos_ += n; }
    void u8(std::uint8_t v) { out_[pos_++] = v; }
    void u16(std::uint16_t v)
    {
        out_[pos_] = static_cast<std::uint8_t>(v >> 8);
        out_[pos_ + 1] = static_cast<std::uint8_t>(v & 0xff);
        pos_ += 2;
    }
    void u32(std::uint32_t v)
    {
        u16(static_cast<std::uint16_t>(v >> 16));
        u16(static_cast<std::uint16_t>(v & 0xffff));
    }
    void bytes(const std::uint8_t* b, std::size_t n)
    {
        std::memcpy(out_ + pos_, b, n);
        pos_ += n;
    }

private:
    std::uint8_t* out_;
    std::size_t pos_ = 0;
};

// The question name as the fast path takes it: plain labels only, at most 255 bytes with the
// root's, printable ASCII; lowercased (without the final dot) with no allocation.
struct QuestionName {
    std::array<char, 256> text;
    std::size_t size = 0;
    std::array<std::uint16_t, 128> label_starts;  // offsets in the packet, for the SOA's pointer
    std::size_t labels = 0;
    std::string_view view() const { return {text.data(), size}; }
};

bool read_question_name(WireReader& in, QuestionName& name)
{
    std::size_t wire_length = 0;
    while (true) {
        std::uint8_t len = 0;
        if (!in.u8(len)) return false;
        ++wire_length;
        if (wire_length > 255) return false;  // the root's byte counts too (RFC 1035 3.1)
        if (len == 0) return true;
        if (len > 63 || len > in.remaining()) return false;
        wire_length += len;
        if (wire_length > 255) return false;
        name.label_starts[name.labels++] = static_cast<std::uint16_t>(in.pos() - 1);
        if (name.size) name.text[name.size++] = '.';
        for (std::size_t i = 0; i < len; ++i) {
            auto c = static_cast<char>(in.at(in.pos() + i));
            if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
            else if (c == '.' || c <= ' ' || c > '~') return false;
            name.text[name.size++] = c;
        }
        in.skip(len);
    }
}

}  // namespace

namespace {

// "4.3.2.1.in-addr.arpa" or 32 nibbles under "ip6.arpa" back to the address, as
// reverse_address() reads them but with no allocation.
std::optional<vip::Address> fast_reverse_address(std::string_view name)
{
    constexpr std::string_view v4 = ".in-addr.arpa", v6 = ".ip6.arpa";
    if (name.ends_with(v4)) {
        name.remove_suffix(v4.size());
        std::uint32_t value = 0;
        for (int shift = 0; shift < 32; shift += 8) {  // the first label is the lowest octet
            auto dot = name.find('.');
            if ((dot == std::string_view::npos) != (shift == 24)) return std::nullopt;  // not four labels
            auto label = name.substr(0, dot);
            if (label.empty() || label.size() > 3 || (label.size() > 1 && label[0] == '0')) return std::nullopt;
            unsigned octet = 0;
            for (char c : label) {
                if (c < '0' || c > '9') return std::nullopt;
                octet = octet * 10 + static_cast<unsigned>(c - '0');
            }
            if (octet > 255) return std::nullopt;
            value |= octet << shift;
            if (dot != std::string_view::npos) name.remove_prefix(dot + 1);
        }
        return vip::Address{vip::Family::v4, value};
    }
    if (name.ends_with(v6)) {
        name.remove_suffix(v6.size());
        if (name.size() != 63) return std::nullopt;
        vip::u128 value = 0;
        for (std::size_t i = 0; i < 32; ++i) {  // the first label is the lowest nibble
            char c = name[i * 2];
            if (i < 31 && name[i * 2 + 1] != '.') return std::nullopt;
            int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (v < 0) return std::nullopt;
            value |= static_cast<vip::u128>(v) << (4 * i);
        }
        return vip::Address{vip::Family::v6, value};
    }
    return std::nullopt;
}

// The names written so far that a later name may point at, as ldns compresses (every name and
// each of its suffixes, where it starts before offset 16384; a name found whole or by a
// suffix is written up to there and then pointed at). The fast path must write the bytes the
// general path writes, pointers included.
class Compressor {
public:
    explicit Compressor(const std::uint8_t* packet) : packet_(packet) {}
    // Where `name` (uncompressed wire form) was written, if it was.
    std::optional<std::uint16_t> find(const std::uint8_t* name) const
    {
        for (std::size_t i = 0; i < size_; ++i)
            if (same(at_[i], name)) return at_[i];
        return std::nullopt;
    }
    // False when the table is full: the general path answers then.
    bool add(std::size_t at)
    {
        if (at >= 16384) return true;  // beyond what a pointer reaches: ldns keeps nothing either
        if (size_ == at_.size()) return false;
        at_[size_++] = static_cast<std::uint16_t>(at);
        return true;
    }

private:
    // Case-insensitive, as ldns compares names (RFC 4343).
    bool same(std::size_t at, const std::uint8_t* name) const
    {
        while (true) {
            while ((packet_[at] & 0xc0) == 0xc0) at = static_cast<std::size_t>(((packet_[at] & 0x3f) << 8) | packet_[at + 1]);
            std::uint8_t len = packet_[at];
            if (len != *name) return false;
            if (len == 0) return true;
            for (std::size_t i = 1; i <= len; ++i)
                if (std::tolower(packet_[at + i]) != std::tolower(name[i])) return false;
            at += 1u + len;
            name += 1u + len;
        }
    }
    const std::uint8_t* packet_;
    std::array<std::uint16_t, 256> at_;
    std::size_t size_ = 0;
};

// A hostname ("a.b", no final dot) in uncompressed wire form; false for what is not a name.
bool to_wire_name(std::string_view text, std::array<std::uint8_t, 256>& out, std::size_t& size)
{
    size = 0;
    while (true) {
        auto dot = text.find('.');
        auto label = text.substr(0, dot);
        if (label.empty() || label.size() > 63 || size + 1 + label.size() + 1 > 255) return false;
        out[size++] = static_cast<std::uint8_t>(label.size());
        std::memcpy(out.data() + size, label.data(), label.size());
        size += label.size();
        if (dot == std::string_view::npos) break;
        text.remove_prefix(dot + 1);
    }
    out[size++] = 0;
    return true;
}

}  // namespace

// The header and question of a fast reply, shared by the TXT and PTR answers.
struct Responder::FastQuestion {
    std::span<const std::uint8_t> query;
    std::size_t question_end = 0;
    const QuestionName& name;
    bool edns = false;
    std::uint16_t client_size = 512;
    bool tcp = false;
    bool do_bit = false;  // copied into our OPT record (RFC 3225 3)
};

bool Responder::finish_fast(const FastQuestion& q, std::size_t size, std::uint16_t rcode, std::uint16_t qtype,
                            FastReply& reply) const
{
    if (q.edns) {  // our OPT record, as the A answer's
        WireWriter out(reply.wire.data() + size);
        out.u8(0);
        out.u16(LDNS_RR_TYPE_OPT);
        out.u16(settings_.edns_udp_size);
        out.u16(0);  // extended rcode, version
        out.u16(q.do_bit ? 0x8000 : 0);
        out.u16(0);
        size += out.size();
    }
    std::size_t limit = q.tcp ? 65535 : (q.edns ? std::min(q.client_size, settings_.edns_udp_size) : 512);
    if (size > limit) return false;  // the general path truncates
    reply.size = static_cast<std::uint16_t>(size);
    reply.qtype = qtype;
    reply.rcode = rcode;
    return true;
}

std::size_t Responder::write_fast_header(const FastQuestion& q, std::uint16_t rcode, std::uint16_t answers,
                                         FastReply& reply, std::uint16_t authority) const
{
    WireWriter out(reply.wire.data());
    out.u16(read_u16(q.query, 0));
    out.u8(static_cast<std::uint8_t>(0x84 | (q.query[2] & 0x01)));  // QR, AA, RD as asked
    out.u8(static_cast<std::uint8_t>(rcode));
    out.u16(1);
    out.u16(answers);
    out.u16(authority);
    out.u16(q.edns ? 1 : 0);
    out.bytes(q.query.data() + header_size, q.question_end - header_size);
    return out.size();
}

std::size_t Responder::write_fast_soa(std::uint8_t* at, std::uint16_t apex, std::uint32_t serial) const
{
    WireWriter out(at);
    out.u16(apex);
    out.u16(LDNS_RR_TYPE_SOA);
    out.u16(LDNS_RR_CLASS_IN);
    out.u32(std::min(ttl(), negative_ttl()));
    static constexpr std::uint8_t mname[] = {9, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't', 0};
    static constexpr std::uint8_t rname[] = {10, 'h', 'o', 's', 't', 'm', 'a', 's', 't', 'e', 'r'};
    out.u16(static_cast<std::uint16_t>(sizeof mname + sizeof rname + 2 + 20));
    out.bytes(mname, sizeof mname);
    out.bytes(rname, sizeof rname);
    out.u16(apex);
    out.u32(serial);
    out.u32(3600);
    out.u32(600);
    out.u32(86400);
    out.u32(negative_ttl());
    return out.size();
}

// One TXT record of the prebuilt RDATA (RFC 1035 3.3.14), owned by the question's name.
bool Responder::answer_fast_txt(const FastQuestion& q, std::span<const std::uint8_t> rdata, FastReply& reply) const
{
    constexpr std::size_t opt_size = 11, rr_fixed = 12;
    if (q.question_end + rr_fixed + rdata.size() + opt_size > reply.wire.size()) return false;
    std::size_t at = write_fast_header(q, rcode_noerror, 1, reply);
    WireWriter out(reply.wire.data() + at);
    out.u16(0xc00c);
    out.u16(LDNS_RR_TYPE_TXT);
    out.u16(LDNS_RR_CLASS_IN);
    out.u32(ttl());
    out.u16(static_cast<std::uint16_t>(rdata.size()));
    out.bytes(rdata.data(), rdata.size());
    return finish_fast(q, at + out.size(), rcode_noerror, LDNS_RR_TYPE_TXT, reply);
}

// PTR of a pool address: one record per hostname of the MES holding it (RFC 1035 3.5).
// Anything else is the general path's.
bool Responder::answer_fast_ptr(const FastQuestion& q, Source& source, FastReply& reply) const
{
    std::string_view qname = q.name.view();
    auto address = fast_reverse_address(qname);
    if (!address) return false;
    // A generated hostname that looks like a reverse name is answered as a name, by the
    // general path; so is an address outside the pools (forwarded or refused).
    if (source.find_addresses(qname) || !source.in_pool(*address)) return false;
    std::array<std::string_view, 32> hostnames;
    auto found = source.vip_hostnames(*address, hostnames);
    if (found.found == Source::Found::unknown) return false;
    // An address no MES holds: NXDOMAIN with its reverse zone's SOA (RFC 2308 3), whose apex
    // is a suffix of the question's name.
    if (found.found == Source::Found::no) {
        std::size_t apex_labels = source.reverse_apex_labels(*address);
        if (apex_labels == 0 || apex_labels > q.name.labels) return false;
        std::uint16_t apex = static_cast<std::uint16_t>(0xc000 | q.name.label_starts[q.name.labels - apex_labels]);
        std::size_t at = write_fast_header(q, rcode_nxdomain, 0, reply, 1);
        at += write_fast_soa(reply.wire.data() + at, apex, source.serial());
        return finish_fast(q, at, rcode_nxdomain, LDNS_RR_TYPE_PTR, reply);
    }

    constexpr std::size_t opt_size = 11, rr_fixed = 12;
    std::uint8_t* wire = reply.wire.data();
    std::size_t at = write_fast_header(q, rcode_noerror, static_cast<std::uint16_t>(found.count), reply);
    Compressor names(wire);
    for (std::size_t i = 0; i < q.name.labels; ++i)
        if (!names.add(q.name.label_starts[i])) return false;
    for (std::size_t i = 0; i < found.count; ++i) {
        std::array<std::uint8_t, 256> target;
        std::size_t target_size = 0;
        if (!to_wire_name(hostnames[i], target, target_size)) return false;
        if (at + rr_fixed + target_size + opt_size > reply.wire.size()) return false;
        WireWriter out(wire + at);
        out.u16(0xc00c);
        out.u16(LDNS_RR_TYPE_PTR);
        out.u16(LDNS_RR_CLASS_IN);
        out.u32(ttl());
        std::size_t rdlength_at = at + out.size();
        out.u16(0);
        at += out.size();
        std::size_t rdata_start = at;
        // RFC 1035 4.1.4: the name as far as it is new, then a pointer to the rest.
        for (const std::uint8_t* label = target.data();; label += 1u + *label) {
            if (*label == 0) {
                wire[at++] = 0;
                break;
            }
            if (auto seen = names.find(label)) {
                wire[at++] = static_cast<std::uint8_t>(0xc0 | (*seen >> 8));
                wire[at++] = static_cast<std::uint8_t>(*seen & 0xff);
                break;
            }
            if (!names.add(at)) return false;
            std::memcpy(wire + at, label, 1u + *label);
            at += 1u + *label;
        }
        std::size_t rdlength = at - rdata_start;
        wire[rdlength_at] = static_cast<std::uint8_t>(rdlength >> 8);
        wire[rdlength_at + 1] = static_cast<std::uint8_t>(rdlength & 0xff);
    }
    return finish_fast(q, at, rcode_noerror, LDNS_RR_TYPE_PTR, reply);
}

bool Responder::answer_fast(std::span<const std::uint8_t> query, const Client& client, Source& source,
                            FastReply& reply) const
{
    WireReader in(query);
    std::uint16_t id = 0, flags = 0, qd = 0, an = 0, ns = 0, ar = 0;
    if (!in.u16(id) || !in.u16(flags) || !in.u16(qd) || !in.u16(an) || !in.u16(ns) || !in.u16(ar)) return false;
    if ((flags & 0x8000) || ((flags >> 11) & 0x0f) != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1) return false;

    QuestionName name;
    if (!read_question_name(in, name)) return false;
    std::uint16_t qtype = 0, qclass = 0;
    if (!in.u16(qtype) || !in.u16(qclass)) return false;
    if (qclass != LDNS_RR_CLASS_IN || (qtype != LDNS_RR_TYPE_A && qtype != LDNS_RR_TYPE_AAAA &&
                                       qtype != LDNS_RR_TYPE_TXT && qtype != LDNS_RR_TYPE_PTR))
        return false;
    std::size_t question_end = in.pos();

    bool edns = false, do_bit = false;
    std::uint16_t client_size = 512;
    if (ar == 1) {  // must be exactly one OPT record, version 0 (RFC 6891 6.1)
        std::uint8_t root = 0, ext_rcode = 0, version = 0;
        std::uint16_t type = 0, size = 0, edns_flags = 0, rdlen = 0;
        if (!in.u8(root) || root != 0 || !in.u16(type) || type != LDNS_RR_TYPE_OPT || !in.u16(size) ||
            !in.u8(ext_rcode) || !in.u8(version) || !in.u16(edns_flags) || !in.u16(rdlen) || rdlen > in.remaining())
            return false;
        if (!options_fit(query.subspan(in.pos(), rdlen))) return false;  // FORMERR: the general path
        in.skip(rdlen);
        if (version != 0) return false;  // BADVERS: the general path
        edns = true;
        do_bit = (edns_flags & 0x8000) != 0;
        client_size = std::max<std::uint16_t>(512, size);
    }
    if (in.remaining() != 0) return false;

    std::string_view qname = name.view();
    FastQuestion question{query, question_end, name, edns, client_size, client.tcp, do_bit};
    if (qtype == LDNS_RR_TYPE_PTR) return answer_fast_ptr(question, source, reply);
    const std::string* zone = nullptr;
    for (const auto& z : settings_.zones)
        if ((qname == z || (qname.size() > z.size() && qname.ends_with(z) && qname[qname.size() - z.size() - 1] == '.')) &&
            (!zone || z.size() > zone->size()))
            zone = &z;
    // Outside the zones (forwarded names, generated names under no zone) and at an apex the
    // general path answers; deciding that before the lookup keeps it from being done twice.
    if (!zone || qname == *zone) return false;
    if (qtype == LDNS_RR_TYPE_TXT) {
        auto txt = source.txt_rdata(qname);
        if (txt.found == Source::Found::unknown) return false;
        if (txt.found == Source::Found::yes) return answer_fast_txt(question, txt.rdata, reply);
        // No such name: NXDOMAIN, as for A below.
    }
    auto owner = source.find_addresses(qname);

    const std::optional<vip::Address>* address = nullptr;
    if (owner) address = qtype == LDNS_RR_TYPE_A ? &owner->ipv4 : &owner->ipv6;
    bool has_answer = address && address->has_value();
    bool with_soa = !has_answer;
    // A name with hostnames below it exists (RFC 8020): NODATA, not NXDOMAIN.
    std::uint16_t rcode = owner || source.has_names_below(qname) ? rcode_noerror : rcode_nxdomain;

    // At most 12 + 259 (question) + 28 (AAAA) + 58 (SOA) + 11 (OPT) bytes: within the buffer.
    static_assert(sizeof reply.wire >= 12 + 259 + 28 + 58 + 11);
    WireWriter out(reply.wire.data());
    out.u16(id);
    out.u8(static_cast<std::uint8_t>(0x84 | (flags >> 8 & 0x01)));  // QR, AA, RD as asked
    out.u8(static_cast<std::uint8_t>(rcode));
    out.u16(1);
    out.u16(has_answer ? 1 : 0);
    out.u16(with_soa ? 1 : 0);
    out.u16(edns ? 1 : 0);
    out.bytes(query.data() + 12, question_end - 12);
    if (has_answer) {
        const vip::Address& a = **address;
        out.u16(0xc00c);
        out.u16(qtype);
        out.u16(LDNS_RR_CLASS_IN);
        out.u32(ttl());
        if (a.family == vip::Family::v4) {
            out.u16(4);
            out.u32(static_cast<std::uint32_t>(a.value));
        } else {
            auto bytes = a.bytes();
            out.u16(static_cast<std::uint16_t>(bytes.size()));
            out.bytes(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
        }
    }
    if (with_soa) {
        // The zone's name is a suffix of the question's: point at it.
        std::size_t zone_labels = static_cast<std::size_t>(std::ranges::count(*zone, '.')) + 1;
        std::uint16_t apex = static_cast<std::uint16_t>(0xc000 | name.label_starts[name.labels - zone_labels]);
        out.skip(write_fast_soa(reply.wire.data() + out.size(), apex, source.serial()));
    }
    if (edns) {
        out.u8(0);
        out.u16(LDNS_RR_TYPE_OPT);
        out.u16(settings_.edns_udp_size);
        out.u16(0);  // extended rcode, version
        out.u16(do_bit ? 0x8000 : 0);  // DO as asked (RFC 3225 3), nothing else
        out.u16(0);
    }
    std::size_t limit = client.tcp ? 65535 : (edns ? std::min(client_size, settings_.edns_udp_size) : 512);
    if (out.size() > limit) return false;  // the general path truncates

    reply.size = static_cast<std::uint16_t>(out.size());
    reply.qtype = qtype;
    reply.rcode = rcode;
    return true;
}

void Responder::prefetch(std::span<const std::span<const std::uint8_t>> queries, Source& source) const
{
    // The names the fast path will look up, read as it reads them; a query it will not take
    // gives no hint.
    constexpr std::size_t at_most = 64;
    std::array<QuestionName, at_most> read;
    std::array<std::string_view, at_most> names;
    std::size_t n = 0;
    for (auto query : queries) {
        if (n == at_most) break;
        WireReader in(query);
        read[n].size = read[n].labels = 0;  // a query given up on may have left some behind
        if (!in.skip(header_size) || !read_question_name(in, read[n]) || read[n].size == 0) continue;
        names[n] = read[n].view();
        ++n;
    }
    source.prefetch(std::span<const std::string_view>(names.data(), n));
}

Response Responder::respond(std::span<const std::uint8_t> query, const Client& client, Source& source) const
{
    if (settings_.fast_path) {
        FastReply fast;
        if (answer_fast(query, client, source, fast)) {
            Response r;
            r.action = Action::reply;
            r.wire.assign(fast.wire.begin(), fast.wire.begin() + fast.size);
            r.qtype = fast.qtype;
            r.rcode = fast.rcode;
            r.fast = true;
            return r;
        }
    }
    return answer_general(query, client, source);
}

Response Responder::answer_general(std::span<const std::uint8_t> query, const Client& client, Source& source) const
{
    Response out;
    if (query.size() < header_size) return out;  // not even a header: drop
    if (query[2] & 0x80) return out;             // a response (QR=1): drop, never answer it
    out.action = Action::reply;
    QueryShape shape = shape_of(query);
    // A reply without the question; an EDNS query's carries an OPT all the same (RFC 6891 7).
    auto header_only = [&](std::uint16_t rcode) {
        out.rcode = rcode;
        out.wire = header_reply(query, rcode);
        if (shape.has_opt) append_opt(out.wire, settings_.edns_udp_size, shape.do_bit);
        return out;
    };
    unsigned opcode = (query[2] >> 3) & 0x0f;
    out.opcode = static_cast<std::uint8_t>(opcode);
    if (opcode != LDNS_PACKET_QUERY) return header_only(rcode_notimp);
    // Checked before ldns sees the query: it keeps only the last of several TSIG records
    // (leaking the others) and takes a second OPT record without complaint.
    if (shape.bad_opt || shape.bad_tsig) return header_only(rcode_formerr);
    ldns_pkt* raw = nullptr;
    if (ldns_wire2pkt(&raw, query.data(), query.size()) != LDNS_STATUS_OK || !raw) return header_only(rcode_formerr);
    PktPtr q(raw);
    if (read_u16(query, 4) != 1 || ldns_rr_list_rr_count(ldns_pkt_question(q.get())) != 1) return header_only(rcode_formerr);
    const ldns_rr* question = ldns_rr_list_rr(ldns_pkt_question(q.get()), 0);
    const ldns_rdf* qname = ldns_rr_owner(question);
    auto qtype = static_cast<std::uint16_t>(ldns_rr_get_type(question));
    auto qclass = static_cast<std::uint16_t>(ldns_rr_get_class(question));
    out.qtype = qtype;
    out.qclass = qclass;

    bool edns = ldns_pkt_edns(q.get());
    out.client_udp_size = edns ? std::max<std::uint16_t>(512, ldns_pkt_edns_udp_size(q.get())) : 512;
    std::size_t limit = client.tcp ? 65535 : (edns ? std::min(out.client_udp_size, settings_.edns_udp_size) : 512);

    Reply reply;
    ldns_pkt* r = reply.pkt.get();
    ldns_pkt_set_id(r, ldns_pkt_id(q.get()));
    ldns_pkt_set_qr(r, true);
    ldns_pkt_set_rd(r, ldns_pkt_rd(q.get()));
    ldns_pkt_set_opcode(r, LDNS_PACKET_QUERY);
    ldns_pkt_push_rr(r, LDNS_SECTION_QUESTION, ldns_rr_clone(question));
    if (edns) {
        ldns_pkt_set_edns_udp_size(r, settings_.edns_udp_size);
        ldns_pkt_set_edns_do(r, ldns_pkt_edns_do(q.get()));  // RFC 3225 3: in every reply
    }

    auto finish = [&](std::uint16_t rcode) {
        ldns_pkt_set_rcode(r, static_cast<std::uint8_t>(rcode & 0x0f));
        out.rcode = rcode;
        out.wire = to_wire(r, limit, out.truncated);
        return out;
    };

    // RFC 6891 6.1.3: only version 0 is known here.
    if (edns && ldns_pkt_edns_version(q.get()) != 0) {
        ldns_pkt_set_edns_extended_rcode(r, static_cast<std::uint8_t>(rcode_badvers >> 4));
        return finish(rcode_badvers);
    }
    // RFC 8945 5.2.2: mesd holds no key, so every signed query names a key it does not know:
    // NOTAUTH, and an unsigned TSIG record carrying BADKEY with an empty MAC (5.3.2).
    if (const ldns_rr* tsig = ldns_pkt_tsig(q.get()); tsig && shape.has_tsig) {
        if (ldns_rr_rd_count(tsig) != 7) return header_only(rcode_formerr);
        ldns_rr* badkey = ldns_rr_clone(tsig);
        static constexpr std::uint8_t empty_mac[2] = {0, 0};
        ldns_rdf_deep_free(ldns_rr_set_rdf(badkey, ldns_rdf_new_frm_data(ldns_rdf_get_type(ldns_rr_rdf(tsig, 3)), 2, empty_mac), 3));
        ldns_rdf_deep_free(ldns_rr_set_rdf(badkey, ldns_native2rdf_int16(ldns_rdf_get_type(ldns_rr_rdf(tsig, 5)), tsig_badkey), 5));
        ldns_rdf_deep_free(ldns_rr_set_rdf(badkey, ldns_rdf_new_frm_data(ldns_rdf_get_type(ldns_rr_rdf(tsig, 6)), 2, empty_mac), 6));
        ldns_pkt_set_tsig(r, badkey);
        return finish(rcode_notauth);
    }
    // Zone transfers are not offered: NOTIMP over UDP, where RFC 5936 4.2 allows no AXFR,
    // and REFUSED over TCP (policy, as RFC 5936 4.2 lets a server say).
    if (qtype == LDNS_RR_TYPE_AXFR || qtype == LDNS_RR_TYPE_IXFR) return finish(client.tcp ? rcode_refused : rcode_notimp);
    if (qclass != LDNS_RR_CLASS_IN && qclass != LDNS_RR_CLASS_ANY) {
        if (client.may_forward) {
            out.action = Action::forward;
            return out;
        }
        return finish(rcode_refused);
    }

    std::string name = lowercase_name(qname);
    const std::string* zone = nullptr;
    for (const auto& z : settings_.zones)
        if ((name == z || (name.size() > z.size() && name.ends_with(z) && name[name.size() - z.size() - 1] == '.')) &&
            (!zone || z.size() > zone->size()))
            zone = &z;

    auto add_soa = [&](ldns_pkt_section section, const std::string& apex) {
        ldns_rdf* apex_rdf = dname(apex + ".");
        ldns_rr* soa = new_rr(apex_rdf, LDNS_RR_TYPE_SOA,
                              section == LDNS_SECTION_AUTHORITY ? std::min(ttl(), negative_ttl()) : ttl());
        ldns_rdf_deep_free(apex_rdf);
        ldns_rr_push_rdf(soa, dname("localhost."));
        ldns_rr_push_rdf(soa, dname("hostmaster." + apex + "."));
        ldns_rr_push_rdf(soa, ldns_native2rdf_int32(LDNS_RDF_TYPE_INT32, source.serial()));
        ldns_rr_push_rdf(soa, ldns_native2rdf_int32(LDNS_RDF_TYPE_PERIOD, 3600));
        ldns_rr_push_rdf(soa, ldns_native2rdf_int32(LDNS_RDF_TYPE_PERIOD, 600));
        ldns_rr_push_rdf(soa, ldns_native2rdf_int32(LDNS_RDF_TYPE_PERIOD, 86400));
        ldns_rr_push_rdf(soa, ldns_native2rdf_int32(LDNS_RDF_TYPE_PERIOD, negative_ttl()));
        ldns_pkt_push_rr(r, section, soa);
    };
    auto add_address = [&](const vip::Address& a) {
        bool v4 = a.family == vip::Family::v4;
        ldns_rr* rr = new_rr(qname, v4 ? LDNS_RR_TYPE_A : LDNS_RR_TYPE_AAAA, ttl());
        auto bytes = a.bytes();
        ldns_rr_push_rdf(rr, ldns_rdf_new_frm_data(v4 ? LDNS_RDF_TYPE_A : LDNS_RDF_TYPE_AAAA, bytes.size(), bytes.data()));
        ldns_pkt_push_rr(r, LDNS_SECTION_ANSWER, rr);
    };
    auto nodata = [&]() {
        if (zone) add_soa(LDNS_SECTION_AUTHORITY, *zone);
        return finish(rcode_noerror);
    };

    if (auto owner = source.find_name(name)) {
        ldns_pkt_set_aa(r, true);
        switch (qtype) {
        case LDNS_RR_TYPE_A:
            if (!owner->ipv4) return nodata();
            add_address(*owner->ipv4);
            return finish(rcode_noerror);
        case LDNS_RR_TYPE_AAAA:
            if (!owner->ipv6) return nodata();
            add_address(*owner->ipv6);
            return finish(rcode_noerror);
        case LDNS_RR_TYPE_ANY:  // RFC 8482: one RRset is enough
            if (owner->ipv4) add_address(*owner->ipv4);
            else if (owner->ipv6) add_address(*owner->ipv6);
            else return nodata();
            return finish(rcode_noerror);
        case LDNS_RR_TYPE_TXT: {
            ldns_rr* rr = new_rr(qname, LDNS_RR_TYPE_TXT, ttl());
            for (const auto& fact : source.describe(*owner)) {
                // A character-string holds at most 255 bytes.
                std::string s = fact.substr(0, 255);
                std::vector<std::uint8_t> data;
                data.push_back(static_cast<std::uint8_t>(s.size()));
                data.insert(data.end(), s.begin(), s.end());
                ldns_rr_push_rdf(rr, ldns_rdf_new_frm_data(LDNS_RDF_TYPE_STR, data.size(), data.data()));
            }
            ldns_pkt_push_rr(r, LDNS_SECTION_ANSWER, rr);
            return finish(rcode_noerror);
        }
        default: return nodata();
        }
    }

    // SOA and NS at an apex (ANY gets the SOA), NODATA with the SOA for the other types.
    auto at_apex = [&](const std::string& apex) {
        if (qtype == LDNS_RR_TYPE_SOA || qtype == LDNS_RR_TYPE_ANY) {
            add_soa(LDNS_SECTION_ANSWER, apex);
            return finish(rcode_noerror);
        }
        if (qtype == LDNS_RR_TYPE_NS) {
            ldns_rr* rr = new_rr(qname, LDNS_RR_TYPE_NS, ttl());
            ldns_rr_push_rdf(rr, dname("localhost."));
            ldns_pkt_push_rr(r, LDNS_SECTION_ANSWER, rr);
            return finish(rcode_noerror);
        }
        add_soa(LDNS_SECTION_AUTHORITY, apex);
        return finish(rcode_noerror);
    };

    // The reverse zones of the pools, with their SOA in every negative answer (RFC 2308 3).
    if (name.ends_with(".arpa")) {
        for (const auto& pool : source.pools()) {
            std::string apex = reverse_apex(pool);
            if (name != apex && !(name.ends_with(apex) && name.size() > apex.size() && name[name.size() - apex.size() - 1] == '.'))
                continue;
            ldns_pkt_set_aa(r, true);
            vip::Address address;
            auto place = reverse_place(name, apex, pool, address);
            if (place == ReversePlace::apex) return at_apex(apex);
            auto owner = place == ReversePlace::address ? source.find_vip(address) : std::nullopt;
            if (place == ReversePlace::none || (place == ReversePlace::address && !owner)) {
                add_soa(LDNS_SECTION_AUTHORITY, apex);
                return finish(rcode_nxdomain);
            }
            if (!owner || (qtype != LDNS_RR_TYPE_PTR && qtype != LDNS_RR_TYPE_ANY)) {
                add_soa(LDNS_SECTION_AUTHORITY, apex);
                return finish(rcode_noerror);
            }
            // ANY gets the whole PTR RRset: an RRset is never split (RFC 2181 5).
            for (const auto& host : source.hostnames_of(*owner)) {
                ldns_rr* rr = new_rr(qname, LDNS_RR_TYPE_PTR, ttl());
                ldns_rr_push_rdf(rr, dname(host + "."));
                ldns_pkt_push_rr(r, LDNS_SECTION_ANSWER, rr);
            }
            return finish(rcode_noerror);
        }
    }

    if (zone) {
        ldns_pkt_set_aa(r, true);
        if (name == *zone) return at_apex(*zone);
        // A name with hostnames below it exists (RFC 8020, RFC 4592 2.2.2): NODATA.
        if (source.has_names_below(name)) return nodata();
        add_soa(LDNS_SECTION_AUTHORITY, *zone);
        return finish(rcode_nxdomain);
    }

    if (client.may_forward) {
        out.action = Action::forward;
        return out;
    }
    return finish(rcode_refused);
}

void Responder::set_ttls(std::uint32_t ttl, std::uint32_t negative_ttl)
{
    ttl_.store(ttl, std::memory_order_relaxed);
    negative_ttl_.store(negative_ttl, std::memory_order_relaxed);
}

std::vector<std::uint8_t> Responder::error_reply(std::span<const std::uint8_t> query, std::uint16_t rcode,
                                                 std::uint16_t udp_size) const
{
    if (query.size() < header_size) return {};
    QueryShape shape = shape_of(query);
    ldns_pkt* raw = nullptr;
    // ldns keeps only the last of several TSIG records and leaks the others: such a query
    // never reaches it.
    if (shape.bad_tsig || ldns_wire2pkt(&raw, query.data(), query.size()) != LDNS_STATUS_OK || !raw) {
        auto out = header_reply(query, rcode);
        if (shape.has_opt) append_opt(out, settings_.edns_udp_size, shape.do_bit);
        return out;
    }
    PktPtr q(raw);
    PktPtr r(ldns_pkt_new());
    ldns_pkt_set_id(r.get(), ldns_pkt_id(q.get()));
    ldns_pkt_set_qr(r.get(), true);
    ldns_pkt_set_rd(r.get(), ldns_pkt_rd(q.get()));
    ldns_pkt_set_ra(r.get(), true);
    ldns_pkt_set_rcode(r.get(), static_cast<std::uint8_t>(rcode));
    if (ldns_rr_list_rr_count(ldns_pkt_question(q.get())) > 0)
        ldns_pkt_push_rr(r.get(), LDNS_SECTION_QUESTION, ldns_rr_clone(ldns_rr_list_rr(ldns_pkt_question(q.get()), 0)));
    if (ldns_pkt_edns(q.get())) {
        ldns_pkt_set_edns_udp_size(r.get(), settings_.edns_udp_size);
        ldns_pkt_set_edns_do(r.get(), ldns_pkt_edns_do(q.get()));  // RFC 3225 3
    }
    bool truncated = false;
    return to_wire(r.get(), udp_size, truncated);
}

}  // namespace dns
