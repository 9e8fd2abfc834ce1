#include "vip/vip.hpp"

#include <arpa/inet.h>

#include <charconv>

namespace vip {

namespace {

unsigned width(Family f) { return f == Family::v4 ? 32 : 128; }

u128 host_mask(Family f, unsigned prefix)
{
    unsigned host_bits = width(f) - prefix;
    if (host_bits == 0) return 0;
    if (host_bits == 128) return ~u128{0};
    return (u128{1} << host_bits) - 1;
}

}  // namespace

std::optional<Address> Address::parse(std::string_view text)
{
    if (text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
    std::string s(text);
    unsigned char buf[16];
    if (inet_pton(AF_INET, s.c_str(), buf) == 1) return from_bytes(std::string_view(reinterpret_cast<char*>(buf), 4));
    if (inet_pton(AF_INET6, s.c_str(), buf) == 1) return from_bytes(std::string_view(reinterpret_cast<char*>(buf), 16));
    return std::nullopt;
}

std::optional<Address> Address::from_bytes(std::string_view bytes)
{
    if (bytes.size() != 4 && bytes.size() != 16) return std::nullopt;
    Address a;
    a.family = bytes.size() == 4 ? Family::v4 : Family::v6;
    for (char c : bytes) a.value = (a.value << 8) | static_cast<unsigned char>(c);
    return a;
}

std::string Address::bytes() const
{
    std::size_t n = family == Family::v4 ? 4 : 16;
    std::string out(n, '\0');
    u128 v = value;
    for (std::size_t i = n; i-- > 0;) {
        out[i] = static_cast<char>(static_cast<unsigned char>(v & 0xff));
        v >>= 8;
    }
    return out;
}

std::string Address::to_string() const
{
    auto b = bytes();
    char buf[INET6_ADDRSTRLEN];
    inet_ntop(family == Family::v4 ? AF_INET : AF_INET6, b.data(), buf, sizeof buf);
    return buf;
}

std::string Address::reverse_name() const
{
    static constexpr char hex[] = "0123456789abcdef";
    auto b = bytes();
    std::string out;
    if (family == Family::v4) {
        for (std::size_t i = 4; i-- > 0;) out += std::to_string(static_cast<unsigned char>(b[i])) + ".";
        return out + "in-addr.arpa.";
    }
    for (std::size_t i = 16; i-- > 0;) {
        auto byte = static_cast<unsigned char>(b[i]);
        out += hex[byte & 0xf];
        out += '.';
        out += hex[byte >> 4];
        out += '.';
    }
    return out + "ip6.arpa.";
}

std::optional<Pool> Pool::parse(std::string_view cidr)
{
    auto slash = cidr.find('/');
    if (slash == std::string_view::npos) return std::nullopt;
    auto addr = Address::parse(cidr.substr(0, slash));
    if (!addr) return std::nullopt;
    auto len = cidr.substr(slash + 1);
    unsigned prefix = 0;
    auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), prefix);
    if (len.empty() || ec != std::errc{} || end != len.data() + len.size() || prefix > width(addr->family))
        return std::nullopt;
    Pool p;
    p.prefix_ = prefix;
    p.network_ = Address{addr->family, addr->value & ~host_mask(addr->family, prefix)};
    if (addr->family == Family::v4) p.network_.value &= 0xffffffffu;
    return p;
}

Address Pool::broadcast() const { return Address{family(), network_.value | host_mask(family(), prefix_)}; }

bool Pool::contains(const Address& a) const
{
    return a.family == family() && (a.value & ~host_mask(family(), prefix_)) == network_.value;
}

bool Pool::has_usable() const { return width(family()) - prefix_ >= 2; }

Address Pool::first_usable() const { return Address{family(), network_.value + 1}; }

Address Pool::last_usable() const { return Address{family(), broadcast().value - 1}; }

u128 Pool::usable_count() const { return has_usable() ? host_mask(family(), prefix_) - 1 : 0; }

std::string Pool::to_string() const { return network_.to_string() + "/" + std::to_string(prefix_); }

std::expected<Address, std::string> allocate(const Pool& pool, Ledger& ledger, Clock::time_point now,
                                             Clock::duration quarantine)
{
    if (!pool.has_usable())
        return std::unexpected("no addresses left in pool " + pool.to_string() + " (it has no usable address)");

    // Fresh addresses first, from the cursor. The cursor may rest on the broadcast address,
    // meaning the fresh part is used up; outside the pool (the pool changed) it starts over.
    auto cursor = ledger.cursor(pool.family());
    Address next = cursor && pool.contains(*cursor) && *cursor != pool.network() ? *cursor : pool.first_usable();
    const Address last = pool.last_usable();
    while (next <= last) {
        Address candidate = next;
        ++next.value;
        if (ledger.in_use(candidate) || ledger.quarantined(candidate)) continue;
        ledger.set_cursor(next);
        return candidate;
    }
    ledger.set_cursor(pool.broadcast());

    // Then addresses whose quarantine has run out, the longest released first.
    if (auto oldest = ledger.oldest_released(pool.family())) {
        auto [address, released] = *oldest;
        if (released + quarantine <= now && pool.contains(address) && address != pool.network() &&
            address != pool.broadcast()) {
            ledger.release_from_quarantine(address);
            return address;
        }
    }
    return std::unexpected("no addresses left in pool " + pool.to_string());
}

}  // namespace vip
