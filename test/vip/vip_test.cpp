#include "vip/vip.hpp"

#include <catch2/catch.hpp>

#include <map>
#include <set>

using vip::Address;
using vip::Family;
using vip::Pool;
using namespace std::chrono_literals;

namespace {

// The allocator's view of storage, kept in memory.
class MemoryLedger : public vip::Ledger {
public:
    std::set<Address> used;
    std::map<Address, vip::Clock::time_point> quarantine;
    std::map<Family, Address> cursors;
    int lookups = 0;

    bool in_use(const Address& a) override { ++lookups; return used.contains(a); }
    bool quarantined(const Address& a) override { ++lookups; return quarantine.contains(a); }
    std::optional<Address> cursor(Family f) override
    {
        auto it = cursors.find(f);
        return it == cursors.end() ? std::nullopt : std::optional<Address>(it->second);
    }
    void set_cursor(const Address& a) override { cursors[a.family] = a; }
    std::optional<std::pair<Address, vip::Clock::time_point>> oldest_released(Family f) override
    {
        std::optional<std::pair<Address, vip::Clock::time_point>> best;
        for (const auto& [a, t] : quarantine)
            if (a.family == f && (!best || t < best->second)) best.emplace(a, t);
        return best;
    }
    void release_from_quarantine(const Address& a) override { quarantine.erase(a); }

    std::string take(const Pool& p, vip::Clock::time_point now, vip::Clock::duration q = 1h)
    {
        auto a = vip::allocate(p, *this, now, q);
        if (!a) return "error: " + a.error();
        used.insert(*a);
        return a->to_string();
    }
    void release(const std::string& text, vip::Clock::time_point when)
    {
        auto a = *Address::parse(text);
        used.erase(a);
        quarantine[a] = when;
    }
};

const vip::Clock::time_point t0 = vip::Clock::time_point(std::chrono::seconds(1'800'000'000));

}  // namespace

TEST_CASE("addresses parse, print and reverse")
{
    auto a = Address::parse("242.0.0.1");
    REQUIRE(a);
    CHECK(a->family == Family::v4);
    CHECK(a->to_string() == "242.0.0.1");
    CHECK(a->bytes() == std::string("\xf2\x00\x00\x01", 4));
    CHECK(a->reverse_name() == "1.0.0.242.in-addr.arpa.");
    auto b = Address::parse("fd00:fd02::1");
    REQUIRE(b);
    CHECK(b->family == Family::v6);
    CHECK(b->to_string() == "fd00:fd02::1");
    CHECK(b->reverse_name() == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.d.f.0.0.d.f.ip6.arpa.");
    CHECK(Address::from_bytes(b->bytes()) == b);
    CHECK_FALSE(Address::parse("242.0.0"));
    CHECK_FALSE(Address::from_bytes("abc"));
}

TEST_CASE("pools: network, broadcast and usable range")
{
    auto p = Pool::parse("242.0.0.0/8");
    REQUIRE(p);
    CHECK(p->first_usable().to_string() == "242.0.0.1");
    CHECK(p->last_usable().to_string() == "242.255.255.254");
    CHECK(p->broadcast().to_string() == "242.255.255.255");
    CHECK(p->usable_count() == 16777214);
    CHECK(p->contains(*Address::parse("242.1.2.3")));
    CHECK_FALSE(p->contains(*Address::parse("243.0.0.1")));
    CHECK_FALSE(p->contains(*Address::parse("::1")));
    CHECK(Pool::parse("127.242.7.9/16")->to_string() == "127.242.0.0/16");
    CHECK_FALSE(Pool::parse("127.0.0.0/33"));
    CHECK_FALSE(Pool::parse("127.0.0.0"));
    CHECK_FALSE(Pool::parse("10.0.0.0/31")->has_usable());
    auto v6 = Pool::parse("fd00:fd02::/64");
    REQUIRE(v6);
    CHECK(v6->first_usable().to_string() == "fd00:fd02::1");
    CHECK(v6->last_usable().to_string() == "fd00:fd02::ffff:ffff:ffff:fffe");
    CHECK(Pool::parse("::/0")->usable_count() == ~vip::u128{0} - 1);
}

TEST_CASE("allocation is sequential from the first usable address")
{
    MemoryLedger l;
    auto p = *Pool::parse("242.0.0.0/8");
    CHECK(l.take(p, t0) == "242.0.0.1");
    CHECK(l.take(p, t0) == "242.0.0.2");
    CHECK(l.take(p, t0) == "242.0.0.3");
    // The cursor is kept: a fresh ledger view with the same state continues after it.
    CHECK(l.cursors.at(Family::v4).to_string() == "242.0.0.4");
}

TEST_CASE("released addresses wait out their quarantine")
{
    MemoryLedger l;
    auto p = *Pool::parse("10.0.0.0/29");  // 6 usable: .1 - .6
    for (int i = 0; i < 6; ++i) l.take(p, t0);
    CHECK_THAT(l.take(p, t0), Catch::StartsWith("error: no addresses left in pool 10.0.0.0/29"));
    l.release("10.0.0.3", t0);
    l.release("10.0.0.5", t0 + 10min);
    CHECK_THAT(l.take(p, t0 + 59min), Catch::StartsWith("error: "));
    // Reused only after the quarantine, the longest released first.
    CHECK(l.take(p, t0 + 60min) == "10.0.0.3");
    CHECK_THAT(l.take(p, t0 + 60min), Catch::StartsWith("error: "));
    CHECK(l.take(p, t0 + 70min) == "10.0.0.5");
}

TEST_CASE("a released address is not reused while fresh ones remain")
{
    MemoryLedger l;
    auto p = *Pool::parse("10.0.0.0/24");
    CHECK(l.take(p, t0) == "10.0.0.1");
    l.release("10.0.0.1", t0);
    CHECK(l.take(p, t0 + 2h) == "10.0.0.2");
}

TEST_CASE("a /30 pool holds two addresses, never network or broadcast")
{
    MemoryLedger l;
    auto p = *Pool::parse("127.242.0.0/30");
    CHECK(l.take(p, t0) == "127.242.0.1");
    CHECK(l.take(p, t0) == "127.242.0.2");
    CHECK(l.take(p, t0) == "error: no addresses left in pool 127.242.0.0/30");
    CHECK(l.take(p, t0) == "error: no addresses left in pool 127.242.0.0/30");
    CHECK_THAT(l.take(*Pool::parse("127.242.0.0/31"), t0), Catch::Contains("no usable address"));
}

TEST_CASE("after a pool change the cursor starts over, skipping addresses in use")
{
    MemoryLedger l;
    auto old_pool = *Pool::parse("127.242.0.0/16");
    for (int i = 0; i < 3; ++i) l.take(old_pool, t0);
    auto wider = *Pool::parse("127.240.0.0/12");
    l.cursors.clear();  // the store drops the cursor when the pool changes
    l.used.insert(*Address::parse("127.240.0.1"));
    CHECK(l.take(wider, t0) == "127.240.0.2");
    auto other = *Pool::parse("10.1.0.0/16");
    l.cursors[Family::v4] = *Address::parse("127.240.0.3");  // a cursor outside the pool is ignored
    CHECK(l.take(other, t0) == "10.1.0.1");
}

TEST_CASE("IPv6 pools allocate independently")
{
    MemoryLedger l;
    auto p4 = *Pool::parse("242.0.0.0/8");
    auto p6 = *Pool::parse("fd00:fd02::/64");
    CHECK(l.take(p6, t0) == "fd00:fd02::1");
    CHECK(l.take(p4, t0) == "242.0.0.1");
    CHECK(l.take(p6, t0) == "fd00:fd02::2");
    auto tiny = *Pool::parse("fd00::/126");
    MemoryLedger m;
    CHECK(m.take(tiny, t0) == "fd00::1");
    CHECK(m.take(tiny, t0) == "fd00::2");
    CHECK_THAT(m.take(tiny, t0), Catch::StartsWith("error: no addresses left"));
}

TEST_CASE("allocation cost does not grow with the number of addresses in use")
{
    MemoryLedger l;
    auto p = *Pool::parse("242.0.0.0/8");
    for (int i = 0; i < 100000; ++i) l.take(p, t0);
    l.lookups = 0;
    l.take(p, t0);
    CHECK(l.lookups <= 2);
}
