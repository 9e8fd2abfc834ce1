// vip: virtual IP addresses for MeshExternalServices — pools, address arithmetic, and the
// allocation policy. Storage is not here: the allocator asks a `Ledger` (implemented by the
// store inside its write transaction) what is taken, so allocation commits with the resource.
//
// Policy: addresses are handed out in order from a cursor that only moves forward and is
// kept across restarts; a released address waits in quarantine (longer than any DNS TTL)
// and is reused only once the fresh part of the pool is used up and its quarantine has
// expired, oldest first. The network and broadcast addresses are never handed out. Each
// allocation costs O(log n) ledger lookups, amortised.
#pragma once

#include <chrono>
#include <compare>
#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace vip {

enum class Family : std::uint8_t { v4 = 4, v6 = 6 };

using Clock = std::chrono::system_clock;
using u128 = unsigned __int128;

struct Address {
    Family family = Family::v4;
    u128 value = 0;  // host order; IPv4 in the low 32 bits

    static std::optional<Address> parse(std::string_view text);
    // 4 or 16 bytes in network order: sorts like the numbers they hold.
    static std::optional<Address> from_bytes(std::string_view bytes);
    std::string bytes() const;
    std::string to_string() const;
    // The reverse-lookup name: "4.3.2.1.in-addr.arpa." or the nibbles under "ip6.arpa.".
    std::string reverse_name() const;

    auto operator<=>(const Address&) const = default;
};

class Pool {
public:
    // "242.0.0.0/8", "fd00:fd02::/64"; host bits are ignored as ip(8) does.
    static std::optional<Pool> parse(std::string_view cidr);

    Family family() const { return network_.family; }
    unsigned prefix() const { return prefix_; }
    Address network() const { return network_; }
    Address broadcast() const;
    bool contains(const Address& a) const;
    // False for /31, /32, /127 and /128, which have nothing between network and broadcast.
    bool has_usable() const;
    Address first_usable() const;
    Address last_usable() const;
    u128 usable_count() const;
    std::string to_string() const;

    bool operator==(const Pool&) const = default;

private:
    Address network_;
    unsigned prefix_ = 0;
};

// What the allocator needs to know and change, answered from storage.
class Ledger {
public:
    virtual ~Ledger() = default;
    virtual bool in_use(const Address& a) = 0;
    virtual bool quarantined(const Address& a) = 0;
    virtual std::optional<Address> cursor(Family f) = 0;
    virtual void set_cursor(const Address& a) = 0;
    // The quarantined address of `f` released first, and when it was released.
    virtual std::optional<std::pair<Address, Clock::time_point>> oldest_released(Family f) = 0;
    virtual void release_from_quarantine(const Address& a) = 0;
};

// A free address of `pool`, or the reason there is none ("no addresses left in pool ...").
// Marks nothing as used: the caller records the owner in the same transaction.
std::expected<Address, std::string> allocate(const Pool& pool, Ledger& ledger, Clock::time_point now,
                                             Clock::duration quarantine);

}  // namespace vip
