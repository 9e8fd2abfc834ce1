// The in-memory name index against the store it is built from.
#include "dns/dns.hpp"
#include "dns/name_index.hpp"

#include "test/support/resources.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace {

conf::Resource mes(const std::string& name, const std::string& mesh = "default")
{
    return test_support::make_mes(name, 80, {}, mesh);
}

conf::Resource generator(const std::string& name, const std::string& tmpl, const std::string& mesh = "default")
{
    return test_support::make_generator(name, tmpl, mesh);
}

struct Fixture {
    test_support::TempDir dir;
    std::unique_ptr<store::Store> db;
    store::WriteOptions options;

    Fixture()
    {
        auto opened = store::Store::open(store::Options{(dir.path / "data").string()});
        REQUIRE(opened.has_value());
        db = std::move(*opened);
        options.pools.ipv4 = "127.242.0.0/16";
        options.pools.ipv6 = "fd00::/112";
    }
    void apply(const std::vector<conf::Resource>& resources)
    {
        auto r = db->apply(resources, options);
        INFO((r ? std::string() : r.error().message));
        REQUIRE(r.has_value());
    }
    dns::NameIndex index(const std::vector<std::string>& meshes)
    {
        auto snap = db->snapshot();
        REQUIRE(snap.has_value());
        auto built = dns::NameIndex::build(*snap, meshes);
        REQUIRE(built.has_value());
        return std::move(*built);
    }
};

std::string v4(const dns::NameIndex::Owner* o) { return o && o->has_ipv4 ? dns::NameIndex::ipv4(*o)->to_string() : "none"; }

}  // namespace

TEST_CASE("name index: every generated name answers what the store says, other names nothing")
{
    Fixture f;
    std::vector<conf::Resource> input{generator("g", "{{ .Name }}.mesh"), generator("h", "{{ .Name }}.alt.mesh")};
    for (int i = 0; i < 5000; ++i) input.push_back(mes("svc-" + std::to_string(i)));
    f.apply(input);
    auto index = f.index({"default"});
    CHECK(index.names() == 10000);
    CHECK(index.owners() == 5000);

    auto snap = f.db->snapshot();
    REQUIRE(snap.has_value());
    for (int i = 0; i < 5000; ++i) {
        for (const auto& name : {"svc-" + std::to_string(i) + ".mesh", "svc-" + std::to_string(i) + ".alt.mesh"}) {
            auto stored = snap->lookup_hostname_in(name, "default");
            REQUIRE(stored.has_value());
            REQUIRE(stored->has_value());
            const auto* o = index.find(name);
            REQUIRE(o);
            CHECK(index.mesh(*o) == "default");
            CHECK(index.name(*o) == "svc-" + std::to_string(i));
            CHECK(dns::NameIndex::ipv4(*o) == (*stored)->ipv4);
            CHECK(index.ipv6(*o) == (*stored)->ipv6);
            // The hot path's copy of the addresses, in the name's own record, agrees.
            auto addresses = index.addresses(name);
            REQUIRE(addresses);
            CHECK(addresses->ipv4 == (*stored)->ipv4);
            CHECK(addresses->ipv6 == (*stored)->ipv6);
            // And back from each address.
            CHECK(index.find(*(*stored)->ipv4) == o);
            CHECK(index.find(*(*stored)->ipv6) == o);
        }
        CHECK_FALSE(index.find("nx-" + std::to_string(i) + ".mesh"));
        CHECK_FALSE(index.addresses("nx-" + std::to_string(i) + ".mesh"));
        CHECK_FALSE(index.find("svc-" + std::to_string(i)));           // the MES name is not a hostname
        CHECK_FALSE(index.find("svc-" + std::to_string(i) + ".mesh.")); // callers strip the dot
    }
    CHECK_FALSE(index.find(*vip::Address::parse("127.242.200.1")));
    CHECK_FALSE(index.find(*vip::Address::parse("fd00::ffff")));
}

TEST_CASE("name index: a name two served meshes generate belongs to the first listed; other meshes are left out")
{
    Fixture f;
    f.apply({generator("g", "{{ .Name }}.mesh", "default"), mes("shared", "default"), mes("only-default", "default"),
             generator("g", "{{ .Name }}.mesh", "other"), mes("shared", "other"), mes("only-other", "other"),
             generator("g", "{{ .Name }}.mesh", "hidden"), mes("only-hidden", "hidden")});

    auto other_first = f.index({"other", "default"});
    REQUIRE(other_first.find("shared.mesh"));
    CHECK(other_first.mesh(*other_first.find("shared.mesh")) == "other");
    // The name's record carries the winner's addresses, not the first owner scanned.
    REQUIRE(other_first.addresses("shared.mesh"));
    CHECK(other_first.addresses("shared.mesh")->ipv4 == dns::NameIndex::ipv4(*other_first.find("shared.mesh")));
    CHECK(other_first.find("only-default.mesh"));
    CHECK(other_first.find("only-other.mesh"));
    CHECK_FALSE(other_first.find("only-hidden.mesh"));

    auto default_first = f.index({"default", "other"});
    CHECK(default_first.mesh(*default_first.find("shared.mesh")) == "default");
    // The hidden mesh's VIP is not answered either.
    auto snap = f.db->snapshot();
    auto hidden = snap->lookup_hostname_in("only-hidden.mesh", "hidden");
    REQUIRE(hidden.has_value());
    REQUIRE(hidden->has_value());
    CHECK_FALSE(default_first.find(*(*hidden)->ipv4));
}

TEST_CASE("name index: a MES whose pool ran out keeps its names, with no addresses")
{
    Fixture f;
    f.options.pools.ipv4 = "127.242.0.0/30";  // two usable addresses
    f.options.pools.ipv6 = "";
    f.apply({generator("g", "{{ .Name }}.mesh"), mes("a"), mes("b"), mes("c")});
    auto index = f.index({"default"});
    CHECK(v4(index.find("a.mesh")) == "127.242.0.1");
    CHECK(v4(index.find("b.mesh")) == "127.242.0.2");
    const auto* c = index.find("c.mesh");
    REQUIRE(c);
    CHECK(index.name(*c) == "c");
    CHECK_FALSE(c->has_ipv4);
    CHECK_FALSE(index.ipv6(*c));
    auto addresses = index.addresses("c.mesh");
    REQUIRE(addresses);  // the name exists (NODATA, not NXDOMAIN)
    CHECK_FALSE(addresses->ipv4);
    CHECK_FALSE(addresses->ipv6);
}

TEST_CASE("name index: an empty store gives an empty index")
{
    Fixture f;
    auto index = f.index({"default"});
    CHECK(index.names() == 0);
    CHECK_FALSE(index.find("a.mesh"));
    CHECK_FALSE(index.find(""));
    CHECK_FALSE(index.find(*vip::Address::parse("127.242.0.1")));
}

TEST_CASE("store source: the index follows the store, and reads still work after its pages are unmapped")
{
    Fixture f;
    f.apply({generator("g", "{{ .Name }}.mesh"), mes("a")});
    dns::StoreSource source(*f.db, {"default"});
    auto first = source.refresh();
    REQUIRE(first.has_value());
    CHECK(*first);
    REQUIRE(source.find_addresses("a.mesh"));
    CHECK(source.find_addresses("a.mesh")->ipv4->to_string() == "127.242.0.1");
    CHECK_FALSE(source.find_addresses("b.mesh"));
    // TXT facts come from the snapshot, whose pages were unmapped after the build.
    auto facts = source.describe(*source.find_name("a.mesh"));
    REQUIRE_FALSE(facts.empty());
    CHECK(facts.front() == "mes=default/a");

    auto unchanged = source.refresh();
    REQUIRE(unchanged.has_value());
    CHECK_FALSE(*unchanged);

    f.apply({mes("b")});
    auto moved = source.refresh();
    REQUIRE(moved.has_value());
    CHECK(*moved);
    REQUIRE(source.find_addresses("b.mesh"));
    CHECK(source.find_addresses("b.mesh")->ipv4->to_string() == "127.242.0.2");
    REQUIRE(source.find_vip(*vip::Address::parse("127.242.0.2")));
    CHECK(source.find_vip(*vip::Address::parse("127.242.0.2"))->name == "b");
    CHECK(source.hostnames_of(*source.find_name("b.mesh")) == std::vector<std::string>{"b.mesh"});
}

TEST_CASE("name index: every proper ancestor of a hostname is known, and nothing else")
{
    Fixture f;
    // "www.<name>.mesh" gives 300 distinct ancestors (the table grows several times over);
    // "<name>.extsvc.mesh.local" gives the same three ancestors 300 times.
    std::vector<conf::Resource> resources = {generator("www", "www.{{ .Name }}.mesh"),
                                             generator("kuma", "{{ .Name }}.extsvc.mesh.local")};
    for (int i = 0; i < 300; ++i) resources.push_back(mes("mes-" + std::to_string(i)));
    f.apply(resources);
    auto index = f.index({"default"});
    for (int i = 0; i < 300; ++i) {
        auto name = "mes-" + std::to_string(i);
        CAPTURE(name);
        CHECK(index.has_names_below(name + ".mesh"));
        CHECK_FALSE(index.has_names_below("www." + name + ".mesh"));  // a hostname with nothing below
        CHECK_FALSE(index.has_names_below(name + ".extsvc.mesh.local"));
        CHECK(index.find("www." + name + ".mesh"));
    }
    for (std::string name : {"mesh", "extsvc.mesh.local", "mesh.local", "local"}) CHECK(index.has_names_below(name));
    for (std::string name : {"", "extsvc", "mesh.loca", "esh", "mes-300.mesh", "x.extsvc.mesh.local", "www.mesh"})
        CHECK_FALSE(index.has_names_below(name));
    CHECK_FALSE(f.index({"other"}).has_names_below("mesh"));
}
