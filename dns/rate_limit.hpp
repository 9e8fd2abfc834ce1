// Response rate limiting (RRL) for UDP: a spoofed-source flood must not turn mesd into an
// amplifier. Sources are grouped by prefix (IPv4 /24 and IPv6 /56 by default, as Knot DNS
// groups them); each group draws from a token bucket that refills at `responses_per_second`
// and holds at most `burst` responses. An answer over the limit is dropped, except every
// `slip`th, which goes out as a minimal TC reply so that a real client behind a spoofed
// address retries over TCP (which cannot be spoofed and is never limited).
//
// Memory is one fixed table of `table_size` buckets allocated at construction, as Knot's
// rate-limit-table-size: a prefix is hashed (with a key chosen at random per process, so a
// flood cannot aim at one bucket) to a bucket, prefixes that collide share it, and nothing
// is allocated per source whatever their number. check() allocates nothing, takes no lock
// and reads no clock: the caller passes the time, once per batch in the server and as it
// pleases in tests.
//
// Threads: one limiter serves every worker's server (dns::SharedLimits), so that a prefix
// gets its rate once in all, not once per worker. check() may run on several threads at
// once: a bucket's time and debt are one 64-bit word updated by compare-and-swap (a spent
// response is never lost nor counted twice), and its slip count a relaxed atomic (an answer
// refused on two threads at once may count once: the slip then comes one answer later).
#pragma once

#include "dns/dns.hpp"

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace dns {

class RateLimiter {
public:
    enum class Verdict : std::uint8_t {
        pass,  // answer as usual
        drop,  // send nothing
        slip,  // send the answer cut to header, question and OPT, with TC
    };

    // `settings.exempt` holds CIDRs that config validation accepted; one that does not parse
    // is ignored. `responses_per_second` must not be 0 (the server builds no limiter then).
    explicit RateLimiter(const RateLimitSettings& settings);
    RateLimiter(const RateLimiter&) = delete;
    RateLimiter& operator=(const RateLimiter&) = delete;

    // The verdict for one answer to `source` at `now_ms` (any monotonic millisecond count; a
    // time earlier than a bucket's last one refills nothing). An address of another family
    // than IPv4 or IPv6 passes.
    Verdict check(const sockaddr* source, std::uint64_t now_ms) noexcept;
    // The same for an address as 4 or 16 bytes in network order (IPv4-mapped IPv6 addresses
    // count as the IPv4 address they map).
    Verdict check(std::span<const std::uint8_t> address, std::uint64_t now_ms) noexcept;

    bool exempt(std::span<const std::uint8_t> address) const noexcept;
    std::size_t table_size() const { return table_size_; }
    // What the table takes, fixed at construction.
    std::size_t table_bytes() const { return table_size_ * (sizeof(std::uint64_t) + sizeof(std::uint32_t)); }

private:
    // Tokens are counted in thousandths of a response: a rate of R responses per second
    // refills R thousandths per millisecond, exactly. A bucket is one word, the low 32 bits
    // of the last time seen (ms) above its debt: what it has spent and not yet got back, in
    // thousandths of a response, at most burst * 1000. A bucket of zeroes (never used) is a
    // full one. Each bucket's count of refused answers, for the slip, lies in a table
    // beside it, touched only when an answer is refused.
    struct FreeTable {
        void operator()(void* p) const noexcept;
    };
    struct Network {
        bool v6 = false;
        unsigned __int128 value = 0;  // masked, host order (IPv4 in the low 32 bits)
        unsigned __int128 mask = 0;
    };

    Verdict account(std::size_t slot, std::uint64_t now_ms) noexcept;

    std::uint64_t rate_;        // thousandths of a response per millisecond
    std::uint64_t capacity_;    // thousandths of a response
    std::uint32_t slip_;
    std::uint32_t ipv4_mask_;
    unsigned __int128 ipv6_mask_;
    std::size_t table_size_;
    std::unique_ptr<std::uint64_t[], FreeTable> table_;    // read and written through std::atomic_ref
    std::unique_ptr<std::uint32_t[], FreeTable> limited_;  // likewise
    std::vector<Network> exempt_;
    std::uint64_t key_[2];
};

}  // namespace dns
