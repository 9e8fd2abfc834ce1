// Response rate limiting: a token bucket per hashed source prefix in one fixed table.
#include "dns/rate_limit.hpp"

#include "vip/vip.hpp"

#include <netinet/in.h>
#include <stdlib.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

namespace dns {

namespace {

using u128 = unsigned __int128;

constexpr std::uint64_t milli = 1000;  // thousandths of a response per response

// The top `bits` of a 128-bit value.
u128 mask128(unsigned bits)
{
    if (bits == 0) return 0;
    if (bits >= 128) return ~u128{0};
    return ~u128{0} << (128 - bits);
}

std::uint32_t mask32(unsigned bits)
{
    if (bits == 0) return 0;
    if (bits >= 32) return ~std::uint32_t{0};
    return ~std::uint32_t{0} << (32 - bits);
}

std::uint32_t load32(const std::uint8_t* p)
{
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

u128 load128(const std::uint8_t* p)
{
    u128 v = 0;
    for (int i = 0; i < 16; ++i) v = (v << 8) | p[i];
    return v;
}

// A 128-bit product folded to 64 bits (wyhash's "mum"): every input bit reaches the output.
std::uint64_t mix(std::uint64_t a, std::uint64_t b)
{
    u128 p = static_cast<u128>(a) * b;
    return static_cast<std::uint64_t>(p) ^ static_cast<std::uint64_t>(p >> 64);
}

// ::ffff:a.b.c.d (RFC 4291 section 2.5.5.2): an IPv4 client of a dual-stack socket.
bool ipv4_mapped(const std::uint8_t* p)
{
    static constexpr std::uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(p, prefix, sizeof prefix) == 0;
}

}  // namespace

void RateLimiter::FreeTable::operator()(void* p) const noexcept { std::free(p); }

RateLimiter::RateLimiter(const RateLimitSettings& settings)
    : rate_(settings.responses_per_second),
      capacity_(std::uint64_t{settings.burst ? settings.burst : settings.responses_per_second} * milli),
      slip_(settings.slip),
      ipv4_mask_(mask32(settings.ipv4_prefix)),
      ipv6_mask_(mask128(settings.ipv6_prefix)),
      table_size_(settings.table_size ? settings.table_size : 1)
{
    // calloc: a large table comes zeroed from mmap and its pages are touched only as sources
    // appear, so an idle or lightly used server pays little of it; a flood touches at most
    // all of it (table_bytes()).
    // calloc's blocks are aligned for any scalar, as std::atomic_ref wants.
    table_.reset(static_cast<std::uint64_t*>(std::calloc(table_size_, sizeof(std::uint64_t))));
    limited_.reset(static_cast<std::uint32_t*>(std::calloc(table_size_, sizeof(std::uint32_t))));
    if (!table_ || !limited_) throw std::bad_alloc();
    for (const auto& cidr : settings.exempt) {
        auto pool = vip::Pool::parse(cidr);
        if (!pool) continue;
        Network n;
        n.v6 = pool->family() == vip::Family::v6;
        n.mask = n.v6 ? mask128(pool->prefix()) : mask32(pool->prefix());
        n.value = pool->network().value & n.mask;
        exempt_.push_back(n);
    }
    arc4random_buf(key_, sizeof key_);
}

bool RateLimiter::exempt(std::span<const std::uint8_t> address) const noexcept
{
    if (address.size() != 4 && address.size() != 16) return false;
    bool v6 = address.size() == 16 && !ipv4_mapped(address.data());
    u128 value = v6 ? load128(address.data()) : load32(address.data() + (address.size() == 16 ? 12 : 0));
    for (const auto& n : exempt_)
        if (n.v6 == v6 && (value & n.mask) == n.value) return true;
    return false;
}

RateLimiter::Verdict RateLimiter::check(const sockaddr* source, std::uint64_t now_ms) noexcept
{
    if (source->sa_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(source);
        return check(std::span(reinterpret_cast<const std::uint8_t*>(&in->sin_addr), 4), now_ms);
    }
    if (source->sa_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(source);
        return check(std::span(reinterpret_cast<const std::uint8_t*>(&in6->sin6_addr), 16), now_ms);
    }
    return Verdict::pass;
}

RateLimiter::Verdict RateLimiter::check(std::span<const std::uint8_t> address, std::uint64_t now_ms) noexcept
{
    if (address.size() != 4 && address.size() != 16) return Verdict::pass;
    if (!exempt_.empty() && exempt(address)) return Verdict::pass;
    // The prefix, and its family in the high word so that an IPv4 /24 and an IPv6 prefix
    // with the same bits are different keys.
    std::uint64_t low = 0, high = 0;
    if (address.size() == 4 || ipv4_mapped(address.data())) {
        low = load32(address.data() + (address.size() == 16 ? 12 : 0)) & ipv4_mask_;
        high = 4;
    } else {
        u128 prefix = load128(address.data()) & ipv6_mask_;
        low = static_cast<std::uint64_t>(prefix);
        high = static_cast<std::uint64_t>(prefix >> 64) ^ (std::uint64_t{6} << 60);
    }
    std::uint64_t hash = mix(mix(low ^ key_[0], high ^ key_[1]), key_[0] ^ 0x9e3779b97f4a7c15ull);
    // The hash scaled onto the table (a multiply, not a division: any table size is cheap).
    auto slot = static_cast<std::size_t>((static_cast<u128>(hash) * table_size_) >> 64);
    return account(slot, now_ms);
}

RateLimiter::Verdict RateLimiter::account(std::size_t slot, std::uint64_t now_ms) noexcept
{
    static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free && std::atomic_ref<std::uint32_t>::is_always_lock_free);
    // Workers read the clock each at its own moment: a check may come with a time a little
    // before the one a bucket last saw. Such a time neither refills nor moves the bucket's
    // time back (moving it back and forth would refill the same milliseconds again at each
    // turn, and the workers together would pass far more than the rate). A time further back
    // than this is a clock that restarted or a bucket unseen for over 24 days (the low 32
    // bits wrapped): it becomes the bucket's time, as a first sight would.
    constexpr std::int32_t skew_ms = 60'000;
    std::atomic_ref<std::uint64_t> word(table_[slot]);
    auto now = static_cast<std::uint32_t>(now_ms);
    std::uint64_t seen = word.load(std::memory_order_relaxed);
    while (true) {
        auto stamp = static_cast<std::uint32_t>(seen >> 32);
        auto debt = static_cast<std::uint32_t>(seen);
        // The difference of the low 32 bits is the time since the bucket was last seen while
        // that is under 24 days.
        auto elapsed = static_cast<std::int32_t>(now - stamp);
        if (elapsed > 0) {
            std::uint64_t refill = static_cast<std::uint64_t>(elapsed) * rate_;
            debt = refill >= debt ? 0 : static_cast<std::uint32_t>(debt - refill);
        }
        bool restamp = elapsed <= -skew_ms;
        if (elapsed > 0 || restamp) stamp = now;
        bool pass = debt + milli <= capacity_;
        // A refused answer writes nothing (a flood's checks stay reads): the refill it saw is
        // had in full by a later check, as the bucket was too near empty for any of it to be
        // cut at zero debt. Only a time taken as new must be kept.
        if (!pass && !restamp) break;
        std::uint64_t next = (std::uint64_t{stamp} << 32) | (pass ? debt + milli : debt);
        // Another thread spent from the bucket since it was read: again, from what it wrote.
        if (word.compare_exchange_weak(seen, next, std::memory_order_relaxed, std::memory_order_relaxed)) {
            if (pass) return Verdict::pass;
            break;
        }
    }
    // A load and a store, not a locked add: a flood's every check comes here, and two
    // workers counting at the same moment lose one count, which only moves the next slip.
    std::atomic_ref<std::uint32_t> count(limited_[slot]);
    std::uint32_t limited = count.load(std::memory_order_relaxed) + 1;
    count.store(limited, std::memory_order_relaxed);
    return slip_ != 0 && limited % slip_ == 0 ? Verdict::slip : Verdict::drop;
}

}  // namespace dns
