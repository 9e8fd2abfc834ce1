// The store through its public interface, on a real LMDB environment in a temporary dir.
#include "store/store.hpp"
#include "test/support/temp_store.hpp"

#include "test/support/certs.hpp"
#include "test/support/resources.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <set>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <optional>

using namespace std::chrono_literals;

namespace {

struct TempStore : test_support::StoreFixture {
    using StoreFixture::StoreFixture;
    store::WriteReport apply(const std::vector<conf::Resource>& resources)
    {
        auto r = db->apply(resources, options);
        INFO((r ? std::string() : r.error().message));
        REQUIRE(r.has_value());
        return *r;
    }
    store::Entry get(const std::string& name, const std::string& mesh = "default")
    {
        auto s = snap();
        auto e = s.get(conf::Kind::mesh_external_service, mesh, name);
        REQUIRE(e.has_value());
        REQUIRE(e->has_value());
        return **e;
    }
    std::string vip(const std::string& name) { return get(name).status.ipv4 ? get(name).status.ipv4->to_string() : "none"; }
    void require_sound()
    {
        auto s = snap();
        auto problems = s.check();
        REQUIRE(problems.has_value());
        INFO(Catch::Detail::stringify(*problems));
        CHECK(problems->empty());
    }
};

conf::Resource mes(const std::string& name, std::uint16_t port = 80, std::map<std::string, std::string> labels = {},
                   const std::string& mesh = "default")
{
    return test_support::make_mes(name, port, std::move(labels), mesh);
}

conf::Resource generator(const std::string& name, const std::string& tmpl, const std::string& mesh = "default")
{
    return test_support::make_generator(name, tmpl, mesh);
}

conf::Resource secret(const std::string& name, const std::string& data)
{
    conf::Resource r;
    r.kind = conf::Kind::secret;
    r.name = name;
    r.spec = conf::Secret{data};
    return r;
}

std::vector<std::string> outcomes(const store::WriteReport& report)
{
    std::vector<std::string> out;
    for (const auto& c : report.changes) out.push_back(std::string(store::outcome_name(c.outcome)) + " " + c.name);
    return out;
}

}  // namespace

TEST_CASE("the data dir is created 0700 and reopened")
{
    TempStore s;
    struct stat st {};
    REQUIRE(::stat(s.dir.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    s.apply({mes("a")});
    s.reopen();
    CHECK(s.vip("a") == "127.242.0.1");
}

TEST_CASE("a MES gets its VIP and hostname in the transaction that creates it")
{
    TempStore s;
    auto report = s.apply({generator("g", "{{ .Name }}.mesh"), mes("a"), mes("b")});
    CHECK(outcomes(report) == std::vector<std::string>{"created g", "created a", "created b"});
    REQUIRE(report.changes[1].status.ipv4);
    CHECK(report.changes[1].status.ipv4->to_string() == "127.242.0.1");
    CHECK(report.changes[2].status.ipv4->to_string() == "127.242.0.2");
    CHECK(report.generation == 1);
    auto snap = s.snap();
    auto owners = snap.lookup_hostname("A.MESH.");
    REQUIRE(owners.has_value());
    REQUIRE(owners->size() == 1);
    CHECK((*owners)[0].name == "a");
    CHECK((*owners)[0].ipv4->to_string() == "127.242.0.1");
    auto owner = snap.owner_of(*vip::Address::parse("127.242.0.2"));
    REQUIRE(owner.has_value());
    REQUIRE(owner->has_value());
    CHECK((*owner)->name == "b");
    s.require_sound();
}

TEST_CASE("re-applies and updates keep the VIP, and unchanged writes change nothing")
{
    TempStore s;
    s.apply({mes("a"), mes("b")});
    auto again = s.apply({mes("a"), mes("b")});
    CHECK(outcomes(again) == std::vector<std::string>{"unchanged a", "unchanged b"});
    CHECK(again.generation == 1);
    auto changed = s.apply({mes("a", 8080), mes("b")});
    CHECK(outcomes(changed) == std::vector<std::string>{"configured a", "unchanged b"});
    CHECK(changed.generation == 2);
    CHECK(s.vip("a") == "127.242.0.1");
    CHECK(*s.get("a").resource.mes()->port == 8080);
    s.reopen();
    CHECK(s.vip("b") == "127.242.0.2");
}

TEST_CASE("deleted VIPs go to quarantine and come back only after it")
{
    TempStore s;
    s.options.pools.ipv4 = "127.242.0.0/30";  // two usable addresses
    s.options.pools.quarantine = 1h;
    s.apply({mes("a"), mes("b")});
    auto removed = s.db->remove(conf::Kind::mesh_external_service, "default", "a", s.options);
    REQUIRE(removed.has_value());
    CHECK(outcomes(*removed) == std::vector<std::string>{"deleted a"});
    {
        auto snap = s.snap();
        auto q = snap.quarantine();
        REQUIRE(q.has_value());
        REQUIRE(q->size() == 1);
        CHECK((*q)[0].address.to_string() == "127.242.0.1");
    }
    // The pool is exhausted: c gets no VIP and says why; b is untouched.
    s.reopen();  // quarantine survives restarts
    s.options.now += 30min;
    auto c = s.apply({mes("b"), mes("c")});
    CHECK(s.get("c").status.vip_error == "no addresses left in pool 127.242.0.0/30");
    CHECK_FALSE(s.get("c").status.ipv4);
    CHECK(s.vip("b") == "127.242.0.2");
    REQUIRE(c.notes.size() == 1);
    CHECK(c.notes[0] == "MeshExternalService default/c has no VIP: no addresses left in pool 127.242.0.0/30");
    s.require_sound();
    // After the quarantine, a re-apply of c takes the released address.
    s.options.now += 31min;
    s.apply({mes("c")});
    CHECK(s.vip("c") == "127.242.0.1");
    CHECK(s.get("c").status.vip_error.empty());
    s.require_sound();
}

TEST_CASE("a changed pool re-allocates the VIPs outside it and says so")
{
    TempStore s;
    s.apply({mes("a"), mes("b")});
    s.options.pools.ipv4 = "10.242.0.0/16";
    auto report = s.apply({mes("a"), mes("b"), mes("c")});
    CHECK(s.vip("a") == "10.242.0.1");
    CHECK(s.vip("b") == "10.242.0.2");
    CHECK(s.vip("c") == "10.242.0.3");
    auto has_note = [&](const std::string& n) {
        return std::ranges::find(report.notes, n) != report.notes.end();
    };
    INFO(Catch::Detail::stringify(report.notes));
    CHECK(has_note("IPv4 pool changed from 127.242.0.0/16 to 10.242.0.0/16: 2 VIP(s) outside it"));
    CHECK(has_note("MeshExternalService default/a: VIP 127.242.0.1 moved to 10.242.0.1"));
    s.require_sound();
    auto pools = s.snap().pools();
    REQUIRE(pools.has_value());
    CHECK(pools->ipv4 == "10.242.0.0/16");

    // A wider pool that contains the old VIPs keeps them.
    s.options.pools.ipv4 = "10.240.0.0/12";
    s.apply({});
    CHECK(s.vip("a") == "10.242.0.1");
    s.apply({mes("d")});
    CHECK(s.vip("d") == "10.240.0.1");
    s.require_sound();
}

TEST_CASE("IPv6 VIPs when an IPv6 pool is configured")
{
    TempStore s;
    s.apply({mes("a")});
    s.options.pools.ipv6 = "fd00:fd02::/64";
    s.apply({mes("b")});
    CHECK(s.get("a").status.ipv6->to_string() == "fd00:fd02::1");
    CHECK(s.get("b").status.ipv6->to_string() == "fd00:fd02::2");
    CHECK(s.vip("b") == "127.242.0.2");
    auto snap = s.snap();
    auto owner = snap.owner_of(*vip::Address::parse("fd00:fd02::2"));
    REQUIRE(owner.has_value());
    REQUIRE(owner->has_value());
    CHECK((*owner)->name == "b");
    s.require_sound();
    s.options.pools.ipv6 = "";
    s.apply({});
    CHECK_FALSE(s.get("a").status.ipv6);
    s.require_sound();
}

TEST_CASE("hostname collisions: the older MES keeps the name across applies")
{
    TempStore s;
    s.apply({generator("g", "{{ .DisplayName }}.mesh"), mes("zeta", 80, {{"kuma.io/display-name", "same"}})});
    s.apply({mes("alpha", 80, {{"kuma.io/display-name", "same"}})});
    CHECK(s.get("zeta").status.hostnames.addresses.at(0).hostname == "same.mesh");
    auto alpha = s.get("alpha");
    CHECK(alpha.status.hostnames.addresses.empty());
    CHECK(alpha.status.hostnames.generators.at(0).conditions.at(0).reason == "Collision");
    s.require_sound();
    // The holder goes away: the name passes to the other in the same transaction.
    REQUIRE(s.db->remove(conf::Kind::mesh_external_service, "default", "zeta", s.options).has_value());
    CHECK(s.get("alpha").status.hostnames.addresses.at(0).hostname == "same.mesh");
    auto owners = s.snap().lookup_hostname("same.mesh");
    REQUIRE(owners.has_value());
    REQUIRE(owners->size() == 1);
    CHECK((*owners)[0].name == "alpha");
    s.require_sound();
}

TEST_CASE("generators changing recompute every MES of their mesh only")
{
    TempStore s;
    s.apply({generator("g", "{{ .Name }}.mesh"), mes("a"), mes("b", 80, {}, "other")});
    CHECK(s.get("a").status.hostnames.addresses.at(0).hostname == "a.mesh");
    CHECK(s.get("b", "other").status.hostnames.addresses.empty());
    s.apply({generator("g", "{{ .Name }}.example")});
    CHECK(s.get("a").status.hostnames.addresses.at(0).hostname == "a.example");
    auto old = s.snap().lookup_hostname("a.mesh");
    REQUIRE(old.has_value());
    CHECK(old->empty());
    REQUIRE(s.db->remove(conf::Kind::hostname_generator, "default", "g", s.options).has_value());
    CHECK(s.get("a").status.hostnames.addresses.empty());
    CHECK(s.get("a").status.hostnames.generators.empty());
    s.require_sound();
}

TEST_CASE("prune deletes what the input does not name")
{
    TempStore s;
    s.apply({generator("g", "{{ .Name }}.mesh"), mes("a"), mes("b"), secret("s", "x")});
    s.options.prune = true;
    auto report = s.apply({mes("b")});
    CHECK(outcomes(report) == std::vector<std::string>{"unchanged b", "deleted a", "deleted g", "deleted s"});
    auto list = s.snap().list(std::nullopt, std::nullopt);
    REQUIRE(list.has_value());
    CHECK(list->size() == 1);
    CHECK(s.get("b").status.hostnames.addresses.empty());
    s.require_sound();
}

TEST_CASE("a Secret in use is not deleted without force")
{
    TempStore s;
    auto pair = test_support::make_self_signed("client");
    auto m = mes("a");
    auto& spec = std::get<conf::MeshExternalService>(m.spec);
    spec.tls = conf::Tls{};
    spec.tls->client_cert = conf::DataSource{conf::DataSource::Type::secret, "cert"};
    spec.tls->client_key = conf::DataSource{conf::DataSource::Type::secret, "key"};
    s.apply({secret("cert", pair.cert_pem), secret("key", pair.key_pem), m});
    auto refused = s.db->remove(conf::Kind::secret, "default", "cert", s.options);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().message ==
          "Secret default/cert is used by MeshExternalService default/a (use --force to delete it anyway)");
    CHECK(s.snap().has_secret("default", "cert").value());
    s.options.force = true;
    REQUIRE(s.db->remove(conf::Kind::secret, "default", "cert", s.options).has_value());
    CHECK_FALSE(s.snap().has_secret("default", "cert").value());
    auto missing = s.db->remove(conf::Kind::secret, "default", "cert", s.options);
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().message == "Secret default/cert not found");
}

TEST_CASE("the map grows instead of failing")
{
    TempStore s(std::size_t{1} << 20);  // 1 MiB: far too small for what follows
    std::vector<conf::Resource> many;
    for (int i = 0; i < 5000; ++i) many.push_back(mes("mes-" + std::to_string(i)));
    many.push_back(generator("g", "{{ .Name }}.mesh"));
    auto report = s.apply(many);
    CHECK(report.changes.size() == 5001);
    auto usage = s.db->usage();
    REQUIRE(usage.has_value());
    CHECK(usage->map_bytes > (std::size_t{1} << 20));
    CHECK(usage->vips == 5000);
    CHECK(s.vip("mes-4999") == "127.242.19.136");
    s.require_sound();
}

TEST_CASE("a map another process grew is taken once this process's reads have ended")
{
    constexpr std::size_t small = std::size_t{1} << 20;
    TempStore s(small);
    s.apply({mes("first")});
    std::optional<store::Snapshot> held = s.snap();  // a read open in this process
    pid_t child = ::fork();
    if (child == 0) {
        // Another process with its own handle, growing the map well past 1 MiB.
        auto other = store::Store::open(store::Options{s.dir.string(), small});
        if (!other) ::_exit(1);
        std::vector<conf::Resource> many;
        for (int i = 0; i < 5000; ++i) many.push_back(mes("mes-" + std::to_string(i)));
        ::_exit((*other)->apply(many, s.options) ? 0 : 2);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);

    // The read still open keeps what it saw; a new one cannot take the new size meanwhile
    // (LMDB resizes only with no transaction open in the process) and says so.
    auto first = held->get(conf::Kind::mesh_external_service, "default", "first");
    REQUIRE(first.has_value());
    CHECK(first->has_value());
    auto refused = s.db->snapshot();
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().map_resized);
    held.reset();
    // Once it has ended, the new size is taken and the other process's writes are seen.
    CHECK(s.vip("mes-4999") != "none");
    auto usage = s.db->usage();
    REQUIRE(usage.has_value());
    CHECK(usage->map_bytes > small);
    s.require_sound();
}

TEST_CASE("a space reserve made sparse by a copy is allocated again at open")
{
    TempStore s;
    auto reserve = s.dir / "space.reserve";
    struct stat st {};
    REQUIRE(::stat(reserve.c_str(), &st) == 0);
    auto size = st.st_size;
    CHECK(st.st_blocks * 512 >= size);
    // As `cp --sparse=always` or `rsync -S` would leave it: the size, no blocks.
    std::filesystem::remove(reserve);
    FILE* f = std::fopen(reserve.c_str(), "w");
    REQUIRE(f);
    std::fclose(f);
    std::filesystem::resize_file(reserve, static_cast<std::uintmax_t>(size));
    REQUIRE(::stat(reserve.c_str(), &st) == 0);
    REQUIRE(st.st_blocks * 512 < size);
    s.reopen();
    REQUIRE(::stat(reserve.c_str(), &st) == 0);
    CHECK(st.st_blocks * 512 >= size);
}

TEST_CASE("two handles on one store allocate distinct VIPs")
{
    TempStore s;
    auto second = store::Store::open(store::Options{s.dir.string()});
    REQUIRE(second.has_value());
    s.apply({mes("a")});
    auto r = (*second)->apply(std::vector<conf::Resource>{mes("b")}, s.options);
    REQUIRE(r.has_value());
    s.apply({mes("c")});
    std::set<std::string> vips{s.vip("a"), s.vip("b"), s.vip("c")};
    CHECK(vips.size() == 3);
    s.require_sound();
}

TEST_CASE("a failed write leaves nothing behind")
{
    TempStore s;
    s.apply({mes("a")});
    s.options.pools.ipv4 = "not a pool";
    auto r = s.db->apply(std::vector<conf::Resource>{mes("b")}, s.options);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message == "vip.ipv4: not an IPv4 CIDR: not a pool");
    auto missing = s.db->remove(conf::Kind::mesh_external_service, "default", "nope", s.options);
    REQUIRE_FALSE(missing.has_value());
    auto list = s.snap().list(conf::Kind::mesh_external_service, std::nullopt);
    REQUIRE(list.has_value());
    CHECK(list->size() == 1);
    CHECK(s.snap().generation().value() == 1);
}

TEST_CASE("listing by kind and mesh")
{
    TempStore s;
    s.apply({mes("a"), mes("b", 80, {}, "other"), generator("g", "{{ .Name }}.mesh"), secret("s", "v")});
    auto snap = s.snap();
    CHECK(snap.list(conf::Kind::mesh_external_service, std::nullopt)->size() == 2);
    CHECK(snap.list(conf::Kind::mesh_external_service, std::string_view("other"))->size() == 1);
    CHECK(snap.list(std::nullopt, std::string_view("default"))->size() == 3);
    CHECK(snap.list(conf::Kind::secret, std::nullopt)->at(0).resource.secret()->data == "v");
    auto vips = snap.vips();
    REQUIRE(vips.has_value());
    CHECK(vips->size() == 2);
}
