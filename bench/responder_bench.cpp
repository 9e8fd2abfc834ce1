// bench-responder: what one query costs the responder, by query type, on the fast path and on
// the general (ldns) one, over a store of N MES with two hostnames each; and what building the
// name index costs. No sockets: this is mesd's own
// code per query, the part a flood of one query type could make expensive.
#include "dns/dns.hpp"
#include "dns/name_index.hpp"
#include "test/support/resources.hpp"

#include <ldns/ldns.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

conf::Resource mes(int i)
{
    conf::Resource r;
    r.kind = conf::Kind::mesh_external_service;
    r.mesh = "default";
    r.name = "mes-" + std::to_string(i);
    conf::MeshExternalService m;
    m.port = 443;
    m.endpoints.push_back(conf::Endpoint{"service-" + std::to_string(i) + ".example.com", conf::AddressKind::hostname, 443, 0});
    r.spec = m;
    return r;
}

std::vector<std::uint8_t> query(const std::string& name, ldns_rr_type type)
{
    ldns_pkt* q = nullptr;
    if (ldns_pkt_query_new_frm_str(&q, name.c_str(), type, LDNS_RR_CLASS_IN, LDNS_RD) != LDNS_STATUS_OK) std::exit(1);
    ldns_pkt_set_edns_udp_size(q, 1232);
    std::uint8_t* buf = nullptr;
    std::size_t size = 0;
    if (ldns_pkt2wire(&buf, q, &size) != LDNS_STATUS_OK) std::exit(1);
    std::vector<std::uint8_t> out(buf, buf + size);
    free(buf);
    ldns_pkt_free(q);
    return out;
}

// Queries answered per second by `responder`, cycling through `queries` for about `seconds`.
double rate(const dns::Responder& responder, dns::Source& source, const std::vector<std::vector<std::uint8_t>>& queries,
            double seconds)
{
    dns::Client client{false, false};
    std::size_t done = 0, bytes = 0;
    for (const auto& q : queries) bytes += responder.respond(q, client, source).wire.size();  // warm up
    auto start = Clock::now();
    double elapsed = 0;
    while (elapsed < seconds) {
        for (const auto& q : queries) bytes += responder.respond(q, client, source).wire.size();
        done += queries.size();
        elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    }
    if (bytes == 0) std::exit(1);  // every query gets an answer
    return static_cast<double>(done) / elapsed;
}

}  // namespace

int main(int argc, char** argv)
{
    int count = argc > 1 ? std::atoi(argv[1]) : 100000;
    double seconds = argc > 2 ? std::atof(argv[2]) : 0.5;
    char tmpl[] = "/tmp/mesd-bench-responder-XXXXXX";
    std::filesystem::path dir = mkdtemp(tmpl);
    auto opened = store::Store::open(store::Options{(dir / "data").string()});
    if (!opened) return 1;
    auto& db = **opened;
    std::vector<conf::Resource> resources = {test_support::make_generator("a", "{{ .Name }}.mesh"),
                                              test_support::make_generator("b", "{{ .Name }}.alt.mesh")};
    for (int i = 0; i < count; ++i) resources.push_back(mes(i));
    store::WriteOptions options;
    options.pools.ipv4 = "10.0.0.0/8";
    options.pools.ipv6 = "fd00::/64";
    if (auto applied = db.apply(resources, options); !applied) {
        std::fprintf(stderr, "bench-responder: %s\n", applied.error().message.c_str());
        return 1;
    }
    std::printf("bench-responder: %d MES, two hostnames each, IPv4 and IPv6 VIPs\n", count);

    // The index build.
    auto snapshot = db.snapshot();
    if (!snapshot) return 1;
    double best_build = 1e9;
    std::size_t index_bytes = 0;
    for (int round = 0; round < 3; ++round) {
        auto start = Clock::now();
        auto index = dns::NameIndex::build(*snapshot, {"default"});
        best_build = std::min(best_build, std::chrono::duration<double>(Clock::now() - start).count());
        if (!index) return 1;
        index_bytes = index->bytes();
    }
    std::printf("index: %.1f ms to build, %.1f MB\n", best_build * 1e3, static_cast<double>(index_bytes) / 1e6);

    dns::StoreSource source(db, {"default"});
    if (!source.refresh()) return 1;
    dns::Responder fast{dns::Settings{}};
    dns::Settings plain;
    plain.fast_path = false;
    dns::Responder general{plain};

    // 4,096 distinct names or VIPs per kind, spread over the store.
    constexpr int distinct = 4096;
    struct Kind {
        const char* label;
        std::vector<std::vector<std::uint8_t>> queries;
    };
    std::vector<Kind> kinds = {{"A hit", {}}, {"TXT hit", {}}, {"PTR hit (IPv4)", {}}, {"PTR hit (IPv6)", {}},
                               {"A NXDOMAIN", {}}, {"TXT NXDOMAIN", {}}};
    for (int i = 0; i < distinct; ++i) {
        int n = static_cast<int>((static_cast<long long>(i) * 7919) % count);
        std::string name = "mes-" + std::to_string(n) + ".mesh.";
        kinds[0].queries.push_back(query(name, LDNS_RR_TYPE_A));
        kinds[1].queries.push_back(query(name, LDNS_RR_TYPE_TXT));
        auto owner = source.find_name("mes-" + std::to_string(n) + ".mesh");
        if (!owner || !owner->ipv4 || !owner->ipv6) return 1;
        kinds[2].queries.push_back(query(owner->ipv4->reverse_name(), LDNS_RR_TYPE_PTR));
        kinds[3].queries.push_back(query(owner->ipv6->reverse_name(), LDNS_RR_TYPE_PTR));
        kinds[4].queries.push_back(query("nope-" + std::to_string(i) + ".mesh.", LDNS_RR_TYPE_A));
        kinds[5].queries.push_back(query("nope-" + std::to_string(i) + ".mesh.", LDNS_RR_TYPE_TXT));
    }
    std::printf("%-16s %14s %14s %8s\n", "query", "fast path q/s", "ldns path q/s", "ratio");
    for (const auto& k : kinds) {
        double f = rate(fast, source, k.queries, seconds), g = rate(general, source, k.queries, seconds);
        std::printf("%-16s %14.0f %14.0f %7.1fx\n", k.label, f, g, f / g);
    }
    std::filesystem::remove_all(dir);
    return 0;
}
