// bench-store: 100,000 MeshExternalServices applied from one file into an empty store with
// the real mesctl, re-applied unchanged, then the store's size per MES and the cost of a
// hostname -> VIP lookup. Prints each figure next to its target.
#include "store/store.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_of(const std::string& command)
{
    auto start = Clock::now();
    int rc = std::system(command.c_str());
    double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (rc != 0) {
        std::fprintf(stderr, "bench-store: command failed (%d): %s\n", rc, command.c_str());
        std::exit(1);
    }
    return s;
}

const char* verdict(bool ok) { return ok ? "ok" : "MISSED"; }

}  // namespace

int main(int argc, char** argv)
{
    std::string mesctl = argc > 1 ? argv[1] : "build/cmd/mesctl";
    int count = argc > 2 ? std::atoi(argv[2]) : 100000;
    char tmpl[] = "/tmp/mesd-bench-store-XXXXXX";
    std::filesystem::path dir = mkdtemp(tmpl);
    auto input = dir / "mes.yaml";
    {
        std::ofstream out(input);
        out << "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
               "  template: \"{{ .Name }}.mesh\"\n";
        for (int i = 0; i < count; ++i)
            out << "---\ntype: MeshExternalService\nname: mes-" << i << "\nspec:\n  match: {port: 443, protocol: tcp}\n"
                << "  endpoints:\n    - address: service-" << i << ".example.com\n      port: 443\n";
    }
    auto data = dir / "data";
    std::string base = mesctl + " --data-dir " + data.string() + " apply -f " + input.string() + " > /dev/null";
    std::printf("bench-store: %d MeshExternalServices, %.1f MB of YAML\n", count,
                static_cast<double>(std::filesystem::file_size(input)) / 1e6);
    double apply = seconds_of(base);
    double reapply = seconds_of(base);

    auto opened = store::Store::open(store::Options{data.string()});
    if (!opened) {
        std::fprintf(stderr, "bench-store: %s\n", opened.error().message.c_str());
        return 1;
    }
    auto& db = **opened;
    auto usage = db.usage();
    double per_mes = usage ? static_cast<double>(usage->bytes) / count : 0;

    // Lookups through one snapshot, as the DNS responder does between store changes.
    auto opened_snap = db.snapshot();
    if (!opened_snap) return 1;
    std::optional<store::Snapshot> snap(std::move(*opened_snap));
    std::mt19937 rng(1);
    std::vector<std::string> names;
    for (int i = 0; i < 1000; ++i) names.push_back("mes-" + std::to_string(rng() % static_cast<unsigned>(count)) + ".mesh");
    std::vector<double> per_lookup_ns;
    std::size_t found = 0;
    for (int batch = 0; batch < 200; ++batch) {
        auto start = Clock::now();
        for (const auto& n : names) {
            auto owners = snap->lookup_hostname(n);
            found += owners && !owners->empty() && owners->front().ipv4 ? 1 : 0;
        }
        per_lookup_ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - start).count() / static_cast<double>(names.size()));
    }
    std::sort(per_lookup_ns.begin(), per_lookup_ns.end());
    double median_us = per_lookup_ns[per_lookup_ns.size() / 2] / 1000.0;

    std::printf("  apply into an empty store   %6.2f s     (target < 10 s)   %s\n", apply, verdict(apply < 10));
    std::printf("  re-apply unchanged          %6.2f s     (target < 5 s)    %s\n", reapply, verdict(reapply < 5));
    std::printf("  LMDB bytes per MES          %6.0f B     (target <= 1024)  %s\n", per_mes, verdict(per_mes <= 1024));
    std::printf("  hostname -> VIP lookup      %6.2f us    (target < 2 us)   %s   (median of 200 batches, %zu/%zu found)\n",
                median_us, verdict(median_us < 2), found, names.size() * 200);
    snap.reset();
    opened->reset();
    std::filesystem::remove_all(dir);
    return 0;
}
