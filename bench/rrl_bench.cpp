// bench-rrl: the cost of one rate-limit check, as the UDP batch path pays it, in a bounded
// loop on one thread.
//
//   build/bench/bench_rrl [CHECKS]      (default 20,000,000 per case)
//
// Cases: one source within its rate (every check passes; the bucket stays in cache), one
// source flooding (every check limited), and spoofed sources spread over every /24 with the
// default table of 393,241 buckets (each check a cache miss: a flood's worst case), then an
// exempt (loopback) source, which never reaches the table.
#include "dns/rate_limit.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace {

using Clock = std::chrono::steady_clock;

template <class Next>
void run(const char* name, dns::RateLimiter& limiter, std::uint64_t checks, Next next)
{
    std::array<std::uint8_t, 4> address{};
    std::uint64_t passed = 0, now_ms = 1'000'000;
    auto start = Clock::now();
    for (std::uint64_t i = 0; i < checks; ++i) {
        next(i, address);
        // The server reads the clock once per batch of up to 32 queries.
        if ((i & 31) == 0) ++now_ms;
        passed += limiter.check(address, now_ms) == dns::RateLimiter::Verdict::pass;
    }
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("%-34s %7.1f ns/check  (%llu of %llu passed)\n", name, seconds * 1e9 / static_cast<double>(checks),
                static_cast<unsigned long long>(passed), static_cast<unsigned long long>(checks));
}

}  // namespace

int main(int argc, char** argv)
{
    std::uint64_t checks = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20'000'000;
    dns::RateLimitSettings settings;
    settings.responses_per_second = 200;
    settings.exempt = {"127.0.0.0/8", "::1/128"};
    {
        auto fast = settings;
        fast.responses_per_second = 1'000'000;
        dns::RateLimiter limiter(fast);
        run("one source, within its rate", limiter, checks, [](std::uint64_t, auto& a) { a = {192, 0, 2, 1}; });
    }
    {
        dns::RateLimiter limiter(settings);
        run("one source, flooding", limiter, checks, [](std::uint64_t, auto& a) { a = {192, 0, 2, 1}; });
    }
    {
        dns::RateLimiter limiter(settings);
        // A multiplicative step through the 2^24 /24s: consecutive checks land far apart.
        run("spoofed sources, every /24", limiter, checks, [](std::uint64_t i, auto& a) {
            auto n = static_cast<std::uint32_t>(i * 2654435761u) >> 8;
            a = {static_cast<std::uint8_t>(n >> 16), static_cast<std::uint8_t>(n >> 8), static_cast<std::uint8_t>(n), 7};
        });
        std::printf("%-34s %7zu KiB, fixed\n", "table", limiter.table_bytes() / 1024);
    }
    {
        dns::RateLimiter limiter(settings);
        run("exempt source (127.0.0.1)", limiter, checks, [](std::uint64_t, auto& a) { a = {127, 0, 0, 1}; });
    }
    return 0;
}
