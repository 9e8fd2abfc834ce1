// Hostnames generated for new MES alone (the store's incremental path) against the full
// generation over every MES of the mesh: the same statuses and the same hostname index after
// every write, for seeded random sequences of applies, deletes and etcd mirror batches whose
// generators and labels collide on purpose. And the time it saves on large stores.
#include "store/store.hpp"

#include "test/support/resources.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

struct TestStore {
    std::filesystem::path dir;
    std::unique_ptr<store::Store> db;
    store::WriteOptions options;

    explicit TestStore(bool full_recompute)
    {
        char tmpl[] = "/tmp/mesd-incremental-XXXXXX";
        dir = mkdtemp(tmpl);
        auto opened = store::Store::open(store::Options{(dir / "data").string()});
        REQUIRE(opened.has_value());
        db = std::move(*opened);
        options.now = store::Clock::time_point(std::chrono::seconds(1'800'000'000));
        options.pools.ipv4 = "10.0.0.0/8";
        options.full_recompute = full_recompute;
    }
    ~TestStore()
    {
        db.reset();
        std::filesystem::remove_all(dir);
    }
    store::Snapshot snap() const
    {
        auto s = db->snapshot();
        REQUIRE(s.has_value());
        return std::move(*s);
    }
};

std::string describe(const conf::HostnameStatus& h)
{
    std::ostringstream out;
    for (const auto& a : h.addresses) out << " addr " << a.hostname << " via " << a.generator << ";";
    for (const auto& g : h.generators)
        for (const auto& c : g.conditions)
            out << " " << g.generator << ": " << c.status << " " << c.reason << " " << c.message << ";";
    return out.str();
}

// Every MES with its creation order and hostname status, one line each, by key.
std::string statuses(const store::Snapshot& s)
{
    auto list = s.list(conf::Kind::mesh_external_service, std::nullopt);
    REQUIRE(list.has_value());
    std::string out;
    for (const auto& e : *list)
        out += e.resource.mesh + "/" + e.resource.name + " #" + std::to_string(e.created) + ":" +
               describe(e.status.hostnames) + "\n";
    return out;
}

std::string hostname_index(const store::Snapshot& s)
{
    std::string out;
    auto r = s.scan_hostnames([&](std::string_view hostname, std::string_view mesh, std::string_view name) {
        out += std::string(hostname) + " " + std::string(mesh) + " -> " + std::string(name) + "\n";
    });
    REQUIRE(r.has_value());
    return out;
}

// The statuses the full generation gives for what `s` holds, computed here from the list.
std::string generated_here(const store::Snapshot& s)
{
    auto gens = s.list(conf::Kind::hostname_generator, std::nullopt);
    auto services = s.list(conf::Kind::mesh_external_service, std::nullopt);
    REQUIRE(gens.has_value());
    REQUIRE(services.has_value());
    std::map<std::string, std::vector<conf::Ordered>> gen_in, mes_in;
    for (const auto& g : *gens) gen_in[g.resource.mesh].push_back(conf::Ordered{&g.resource, g.created});
    for (const auto& m : *services) mes_in[m.resource.mesh].push_back(conf::Ordered{&m.resource, m.created});
    std::map<const conf::Resource*, conf::HostnameStatus> by_resource;
    for (auto& [mesh, in] : mes_in) {
        auto out = conf::generate_hostnames(gen_in[mesh], in);
        for (std::size_t i = 0; i < in.size(); ++i) by_resource[in[i].resource] = out[i];
    }
    std::string text;
    for (const auto& e : *services)
        text += e.resource.mesh + "/" + e.resource.name + " #" + std::to_string(e.created) + ":" +
                describe(by_resource[&e.resource]) + "\n";
    return text;
}

void require_sound(const store::Snapshot& s)
{
    auto problems = s.check();
    REQUIRE(problems.has_value());
    INFO(Catch::Detail::stringify(*problems));
    CHECK(problems->empty());
}

store::MirrorEntry entry(conf::Resource res, std::uint64_t created)
{
    store::MirrorEntry e;
    e.resource = std::move(res);
    e.created = created;
    e.created_at = store::Clock::time_point(std::chrono::seconds(1'700'000'000 + static_cast<std::int64_t>(created)));
    e.modified_at = e.created_at;
    return e;
}

conf::Resource generator(const std::string& name, const std::string& tmpl, const std::string& mesh,
                         std::map<std::string, std::string> match = {})
{
    auto g = test_support::make_generator(name, tmpl, mesh);
    std::get<conf::HostnameGenerator>(g.spec).match_labels = std::move(match);
    return g;
}

// One write, fed alike to the store under test and to the one that recomputes everything.
struct Write {
    enum class Way { apply, remove, mirror } way = Way::apply;
    std::vector<conf::Resource> resources;  // apply
    store::ResourceKey removed;             // remove
    store::MirrorBatch batch;               // mirror
    std::string what;
};

// Writes random but reproducible changes to a few meshes: mostly new MES (the incremental
// path), now and then a generator added, changed or removed, a MES relabelled or deleted, a
// mirror entry older than the sequence or a whole snapshot (the full one). Names and labels
// come from small sets, so that the templates collide across MES and generators.
class Scenario {
public:
    explicit Scenario(unsigned seed) : rng_(seed), mode_(seed % 3) {}

    Write next()
    {
        int roll = pick(100);
        if (models_.empty() || roll < 8) return add_generator();
        if (roll < 70 || mes_count() == 0) return add_mes();
        if (roll < 78) return relabel_mes();
        if (roll < 84) return remove_mes();
        if (roll < 89) return change_generator();
        if (roll < 92) return remove_generator();
        if (roll < 96 && mirror_allowed()) return old_mes();
        if (mirror_allowed()) return replace_all();
        return add_mes();
    }

private:
    struct Stored {
        conf::Resource resource;
        std::uint64_t created = 0;
    };
    using Key = std::tuple<conf::Kind, std::string, std::string>;

    int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
    template <class T>
    const T& choose(const std::vector<T>& v) { return v[static_cast<std::size_t>(pick(static_cast<int>(v.size())))]; }
    std::string mesh() { return choose(std::vector<std::string>{"m1", "m2", "m3"}); }
    bool mirror_allowed() const { return mode_ != 0; }
    bool use_mirror() { return mode_ == 1 || (mode_ == 2 && pick(2) == 0); }
    std::size_t mes_count() const
    {
        return static_cast<std::size_t>(std::ranges::count_if(
            models_, [](const auto& kv) { return std::get<0>(kv.first) == conf::Kind::mesh_external_service; }));
    }

    std::map<std::string, std::string> labels()
    {
        std::map<std::string, std::string> l;
        static const std::vector<std::string> names{"a", "b", "c", "d", "e", "f"};
        if (pick(2) == 0) l["kuma.io/display-name"] = choose(names);
        if (pick(2) == 0) l["tier"] = choose(std::vector<std::string>{"x", "y"});
        if (pick(3) == 0) l["alias"] = choose(names);
        if (pick(8) == 0) l["kuma.io/display-name"] = "Not-Valid";
        return l;
    }

    std::string template_text()
    {
        return choose(std::vector<std::string>{"{{ .Name }}.svc", "{{ .DisplayName }}.svc",
                                               "{{ label \"alias\" }}.svc", "{{ .Name }}.alt", "fixed.svc",
                                               "{{ .DisplayName }}.alt"});
    }
    std::map<std::string, std::string> match()
    {
        switch (pick(4)) {
        case 0: return {{"tier", "x"}};
        case 1: return {{"tier", "y"}};
        default: return {};
        }
    }

    // The creation order a new entry gets: from the sequence, as a local apply would, or
    // (mirror) a revision past it, at times several entries with the same one (one etcd txn).
    std::uint64_t next_created(bool mirror, bool same_as_last = false)
    {
        if (!(mirror && same_as_last && last_created_ > 0)) {
            last_created_ = sequence_ + (mirror ? static_cast<std::uint64_t>(1 + pick(3)) : 1);
            sequence_ = last_created_;
        }
        return last_created_;
    }

    // The write of `puts` (new or changed) and `removed`, the way this scenario writes now.
    Write make(std::vector<Stored> puts, std::vector<Key> removed, std::string what, bool mirror)
    {
        Write w;
        w.what = std::move(what);
        if (mirror) {
            w.way = Write::Way::mirror;
            w.batch.revision = static_cast<std::int64_t>(++revision_);
            w.batch.source = "test";
            for (auto& s : puts) {
                w.batch.puts.push_back(entry(s.resource, s.created));
                models_[{s.resource.kind, s.resource.mesh, s.resource.name}] = std::move(s);
            }
            for (const auto& k : removed) {
                w.batch.removals.push_back(store::ResourceKey{std::get<0>(k), std::get<1>(k), std::get<2>(k)});
                models_.erase(k);
            }
            return w;
        }
        if (!removed.empty()) {
            w.way = Write::Way::remove;
            const auto& k = removed.front();
            w.removed = store::ResourceKey{std::get<0>(k), std::get<1>(k), std::get<2>(k)};
            models_.erase(k);
            return w;
        }
        w.way = Write::Way::apply;
        for (auto& s : puts) {
            w.resources.push_back(s.resource);
            Key k{s.resource.kind, s.resource.mesh, s.resource.name};
            // A local apply keeps a stored resource's creation order.
            if (auto it = models_.find(k); it != models_.end()) s.created = it->second.created;
            models_[k] = std::move(s);
        }
        return w;
    }

    std::optional<Key> some(conf::Kind kind)
    {
        std::vector<Key> keys;
        for (const auto& [k, v] : models_)
            if (std::get<0>(k) == kind) keys.push_back(k);
        if (keys.empty()) return std::nullopt;
        return choose(keys);
    }

    Write add_generator()
    {
        bool mirror = use_mirror();
        auto m = mesh();
        auto name = "g" + std::to_string(++generators_made_);
        Stored s{generator(name, template_text(), m, match()), next_created(mirror)};
        return make({s}, {}, "add generator " + m + "/" + name, mirror);
    }

    Write add_mes()
    {
        bool mirror = use_mirror();
        std::vector<Stored> puts;
        std::string what = "add";
        int n = 1 + pick(4);
        for (int i = 0; i < n; ++i) {
            auto m = mesh();
            // Names from a small set too: some of them are new only to this mesh.
            static const std::vector<std::string> names{"a", "b", "c", "d", "e", "f", "g", "h"};
            std::string name = choose(names) + std::to_string(pick(4));
            Key k{conf::Kind::mesh_external_service, m, name};
            if (models_.contains(k) || std::ranges::any_of(puts, [&](const Stored& p) {
                    return p.resource.mesh == m && p.resource.name == name;
                }))
                continue;
            puts.push_back(Stored{test_support::make_mes(name, 80, labels(), m), next_created(mirror, pick(4) == 0)});
            what += " " + m + "/" + name;
        }
        return make(std::move(puts), {}, what, mirror);
    }

    Write relabel_mes()
    {
        bool mirror = use_mirror();
        auto k = *some(conf::Kind::mesh_external_service);
        Stored s = models_.at(k);
        s.resource.labels = labels();
        return make({s}, {}, "relabel " + std::get<1>(k) + "/" + std::get<2>(k), mirror);
    }

    Write remove_mes()
    {
        auto k = *some(conf::Kind::mesh_external_service);
        return make({}, {k}, "remove " + std::get<1>(k) + "/" + std::get<2>(k), use_mirror());
    }

    Write change_generator()
    {
        auto k = some(conf::Kind::hostname_generator);
        if (!k) return add_generator();
        Stored s = models_.at(*k);
        auto& g = std::get<conf::HostnameGenerator>(s.resource.spec);
        g.template_text = template_text();
        g.match_labels = match();
        return make({s}, {}, "change generator " + std::get<1>(*k) + "/" + std::get<2>(*k), use_mirror());
    }

    Write remove_generator()
    {
        auto k = some(conf::Kind::hostname_generator);
        if (!k) return add_generator();
        return make({}, {*k}, "remove generator " + std::get<1>(*k) + "/" + std::get<2>(*k), use_mirror());
    }

    // A new MES whose creation order is below the sequence (etcd never does this, but the
    // store must not assume so): it may come first in its generators' order.
    Write old_mes()
    {
        auto m = mesh();
        auto name = "old" + std::to_string(++old_made_);
        std::uint64_t created = 1 + static_cast<std::uint64_t>(pick(static_cast<int>(sequence_)));
        Stored s{test_support::make_mes(name, 80, labels(), m), created};
        return make({s}, {}, "add older " + m + "/" + name + " #" + std::to_string(created), true);
    }

    // A whole snapshot (after a lost watch): what is stored, one MES less, one new more.
    Write replace_all()
    {
        Write w;
        w.way = Write::Way::mirror;
        w.what = "replace";
        w.batch.replace = true;
        w.batch.revision = static_cast<std::int64_t>(++revision_);
        w.batch.source = "test";
        if (auto k = some(conf::Kind::mesh_external_service)) models_.erase(*k);
        auto m = mesh();
        auto name = "r" + std::to_string(++old_made_);
        Stored s{test_support::make_mes(name, 80, labels(), m), next_created(true)};
        models_[{conf::Kind::mesh_external_service, m, name}] = s;
        for (const auto& [k, v] : models_) w.batch.puts.push_back(entry(v.resource, v.created));
        return w;
    }

    std::mt19937 rng_;
    unsigned mode_;  // 0: local applies, 1: etcd mirror batches, 2: both
    std::map<Key, Stored> models_;
    std::uint64_t sequence_ = 0;
    std::uint64_t last_created_ = 0;
    std::uint64_t revision_ = 0;
    int generators_made_ = 0;
    int old_made_ = 0;
};

std::string run(TestStore& s, const Write& w)
{
    store::Result<store::WriteReport> r = std::unexpected(store::Error{"nothing written"});
    switch (w.way) {
    case Write::Way::apply: r = s.db->apply(w.resources, s.options); break;
    case Write::Way::remove: r = s.db->remove(w.removed.kind, w.removed.mesh, w.removed.name, s.options); break;
    case Write::Way::mirror: r = s.db->mirror(w.batch, s.options); break;
    }
    INFO(w.what << ": " << (r ? std::string() : r.error().message));
    REQUIRE(r.has_value());
    std::string changes;
    for (const auto& c : r->changes)
        changes += c.mesh + "/" + c.name + " " + std::string(store::outcome_name(c.outcome)) + ":" +
                   describe(c.status.hostnames) + "\n";
    return changes;
}

conf::Resource numbered_mes(std::size_t i)
{
    auto name = "svc-" + std::to_string(i);
    return test_support::make_mes(name, 80, {{"kuma.io/display-name", "d" + std::to_string(i % 1000)}});
}

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

}  // namespace

TEST_CASE("incremental hostnames: random writes give the statuses and index of the full generation")
{
    constexpr unsigned scenarios = 200;
    constexpr int writes = 25;
    for (unsigned seed = 1; seed <= scenarios; ++seed) {
        TestStore incremental(false), full(true);
        Scenario scenario(seed);
        for (int step = 0; step < writes; ++step) {
            Write w = scenario.next();
            INFO("seed " << seed << " write " << step << ": " << w.what);
            std::string reported = run(incremental, w);
            std::string reported_full = run(full, w);
            auto a = incremental.snap();
            auto b = full.snap();
            REQUIRE(statuses(a) == statuses(b));
            REQUIRE(hostname_index(a) == hostname_index(b));
            REQUIRE(statuses(a) == generated_here(a));
            REQUIRE(reported == reported_full);
            require_sound(a);
        }
    }
}

TEST_CASE("incremental hostnames: a new MES takes a name through an older generator from a younger one's holder")
{
    // g-old selects tier=x by display name, g-young every MES by name. `b` (no tier) holds
    // b.svc through g-young; the new `late` (tier=x, display name b) renders b.svc through
    // g-old, which comes first in the generation: `late` holds it and `b` collides.
    for (bool mirrored : {true, false}) {
        INFO((mirrored ? "mirror" : "apply"));
        TestStore incremental(false), full(true);
        std::vector<conf::Resource> setup{generator("g-old", "{{ .DisplayName }}.svc", "default", {{"tier", "x"}}),
                                          generator("g-young", "{{ .Name }}.svc", "default"),
                                          test_support::make_mes("b", 80, {}, "default")};
        conf::Resource late = test_support::make_mes("late", 80, {{"tier", "x"}, {"kuma.io/display-name", "b"}});
        for (auto* s : {&incremental, &full}) {
            if (mirrored) {
                store::MirrorBatch first;
                first.revision = 3;
                for (std::size_t i = 0; i < setup.size(); ++i) first.puts.push_back(entry(setup[i], i + 1));
                REQUIRE(s->db->mirror(first, s->options).has_value());
                store::MirrorBatch second;
                second.revision = 4;
                second.puts.push_back(entry(late, 4));
                REQUIRE(s->db->mirror(second, s->options).has_value());
            } else {
                REQUIRE(s->db->apply(setup, s->options).has_value());
                REQUIRE(s->db->apply(std::span(&late, 1), s->options).has_value());
            }
        }
        auto snap = incremental.snap();
        auto b = snap.get(conf::Kind::mesh_external_service, "default", "b");
        auto l = snap.get(conf::Kind::mesh_external_service, "default", "late");
        REQUIRE(b.has_value());
        REQUIRE(l.has_value());
        REQUIRE(b->has_value());
        REQUIRE(l->has_value());
        REQUIRE((*l)->status.hostnames.addresses.size() == 2);  // b.svc and late.svc
        CHECK((*l)->status.hostnames.addresses[0].hostname == "b.svc");
        CHECK((*b)->status.hostnames.addresses.empty());
        REQUIRE((*b)->status.hostnames.generators.size() == 1);
        CHECK((*b)->status.hostnames.generators[0].conditions.at(0).message ==
              "Hostname collision with MeshExternalService: late");
        auto owner = snap.lookup_hostname_in("b.svc", "default");
        REQUIRE(owner.has_value());
        REQUIRE(owner->has_value());
        CHECK((*owner)->name == "late");
        CHECK(statuses(snap) == statuses(full.snap()));
        CHECK(hostname_index(snap) == hostname_index(full.snap()));
        require_sound(snap);

        // Through the same generator the holder stays: `later` renders b.svc through g-old,
        // which `late` holds through g-old too (older MES first). Through an older one it
        // moves again: `latest` renders late.svc through g-old, `late` holds it through
        // g-young.
        conf::Resource later = test_support::make_mes("later", 80, {{"kuma.io/display-name", "b"}, {"tier", "x"}});
        conf::Resource latest = test_support::make_mes("latest", 80, {{"kuma.io/display-name", "late"}, {"tier", "x"}});
        for (auto* s : {&incremental, &full}) {
            std::uint64_t created = 5;
            for (const auto* res : {&later, &latest}) {
                if (mirrored) {
                    store::MirrorBatch next;
                    next.revision = static_cast<std::int64_t>(created);
                    next.puts.push_back(entry(*res, created++));
                    REQUIRE(s->db->mirror(next, s->options).has_value());
                } else {
                    REQUIRE(s->db->apply(std::span(res, 1), s->options).has_value());
                }
            }
        }
        auto after = incremental.snap();
        auto lt = after.get(conf::Kind::mesh_external_service, "default", "later");
        REQUIRE(lt.has_value());
        REQUIRE(lt->has_value());
        CHECK(describe((*lt)->status.hostnames) ==
              " addr later.svc via g-young; g-old: False Collision Hostname collision with MeshExternalService: late;"
              " g-young: True Generated ;");
        auto owner_late = after.lookup_hostname_in("late.svc", "default");
        REQUIRE(owner_late.has_value());
        REQUIRE(owner_late->has_value());
        CHECK((*owner_late)->name == "latest");
        CHECK(statuses(after) == statuses(full.snap()));
        CHECK(hostname_index(after) == hostname_index(full.snap()));
        CHECK(statuses(after) == generated_here(after));
        require_sound(after);
    }
}

TEST_CASE("incremental hostnames: 100000 MES mirrored in batches of 64 take time linear in their number")
{
    TestStore s(false);
    store::MirrorBatch gens;
    gens.revision = 2;
    gens.puts.push_back(entry(generator("by-name", "{{ .Name }}.svc", "default"), 1));
    gens.puts.push_back(entry(generator("by-display-name", "{{ .DisplayName }}.svc", "default"), 2));
    REQUIRE(s.db->mirror(gens, s.options).has_value());

    constexpr std::size_t total = 100'000, per_batch = 64;
    std::uint64_t revision = 2;
    auto start = Clock::now();
    double first_tenth = 0, last_tenth = 0;
    std::size_t batches = (total + per_batch - 1) / per_batch;
    for (std::size_t b = 0; b < batches; ++b) {
        store::MirrorBatch batch;
        for (std::size_t i = b * per_batch; i < std::min(total, (b + 1) * per_batch); ++i) {
            batch.puts.push_back(entry(numbered_mes(i), ++revision));
        }
        batch.revision = static_cast<std::int64_t>(revision);
        auto t = Clock::now();
        auto r = s.db->mirror(batch, s.options);
        REQUIRE(r.has_value());
        double took = seconds_since(t);
        if (b < batches / 10) first_tenth += took;
        if (b >= batches - batches / 10) last_tenth += took;
    }
    double elapsed = seconds_since(start);
    std::printf("incremental hostnames: %zu MES mirrored in %zu batches of %zu: %.2f s (first tenth of the batches "
                "%.3f s, last tenth %.3f s)\n",
                total, batches, per_batch, elapsed, first_tenth, last_tenth);
    // Recomputing the mesh per batch makes the last batches ~19 times slower than the first
    // (95,000 MES decoded against 5,000 on average), and the whole O(N^2): minutes.
    CHECK(last_tenth < 4 * first_tenth + 0.5);
    CHECK(elapsed < 60);

    auto snap = s.snap();
    auto counts = snap.counts();
    REQUIRE(counts.has_value());
    // 1000 display names: 1000 MES hold one through by-display-name, the others collide.
    CHECK(counts->hostnames == total + 1000);
    CHECK(statuses(snap) == generated_here(snap));
}

TEST_CASE("incremental hostnames: one new MES applied to a store of 100000 skips the full generation")
{
    TestStore s(false);
    std::vector<conf::Resource> resources{generator("by-name", "{{ .Name }}.svc", "default"),
                                          generator("by-display-name", "{{ .DisplayName }}.svc", "default")};
    for (std::size_t i = 0; i < 100'000; ++i) resources.push_back(numbered_mes(i));
    REQUIRE(s.db->apply(resources, s.options).has_value());

    // The best of three of each, the full generation first (the same work as before the
    // incremental path), each a new MES.
    auto time_apply = [&](bool full_recompute, std::size_t n) {
        double best = 1e9;
        for (int i = 0; i < 3; ++i) {
            s.options.full_recompute = full_recompute;
            auto mes = numbered_mes(200'000 + n * 10 + static_cast<std::size_t>(i));
            auto t = Clock::now();
            auto r = s.db->apply(std::span(&mes, 1), s.options);
            best = std::min(best, seconds_since(t));
            REQUIRE(r.has_value());
            REQUIRE(r->changes.size() == 1);
            CHECK(r->changes[0].status.hostnames.addresses.size() == 1);  // its name; its display name is taken
        }
        return best;
    };
    double full = time_apply(true, 0);
    double incremental = time_apply(false, 1);
    std::printf("incremental hostnames: apply of one new MES into 100000: full generation %.1f ms, "
                "incremental %.1f ms\n",
                full * 1e3, incremental * 1e3);
    CHECK(incremental * 5 < full);
    auto snap = s.snap();
    require_sound(snap);
}
