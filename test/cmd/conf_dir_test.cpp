// mesd --conf-dir and mesctl validate/apply on directories that change under them, hold
// entries nobody can read, or links that lead elsewhere.
#include "conf/conf.hpp"
#include "store/store.hpp"
#include "test/support/dns.hpp"
#include "test/support/resources.hpp"

#include <sys/stat.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <thread>

using namespace test_support;
namespace fs = std::filesystem;

namespace {

const std::string mesctl_path = MESCTL_PATH;

std::string mes_range(const std::string& prefix, int from, int to, int port)
{
    std::string out;
    for (int i = from; i < to; ++i) out += mes_doc(prefix + std::to_string(i), port);
    return out;
}

void write_file(const fs::path& p, const std::string& content)
{
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
}

RunResult mesctl(const std::string& config, std::vector<std::string> args)
{
    args.insert(args.begin(), {mesctl_path, "--config", config});
    return run(args);
}

// name -> VIP of the MES in use, from `mesctl get vips -o json`.
std::map<std::string, std::string> vips_by_name(const std::string& config)
{
    auto r = mesctl(config, {"get", "vips", "-o", "json"});
    REQUIRE(r.exit_code == 0);
    std::map<std::string, std::string> out;
    std::regex item(R"re("ip": "([^"]+)",\s*"state": "inUse",\s*"mesh": "([^"]+)",\s*"name": "([^"]+)")re");
    for (std::sregex_iterator it(r.out.begin(), r.out.end(), item), end; it != end; ++it)
        out.emplace((*it)[3].str(), (*it)[1].str());
    return out;
}

std::uint64_t metric(const Mesd& mesd, const std::string& name)
{
    auto text = mesd.admin_get("/metrics");
    auto at = text.find("\n" + name + " ");
    if (at == std::string::npos) return 0;
    return std::stoull(text.substr(at + name.size() + 2));
}

// A directory laid out as the kubelet lays out a ConfigMap volume: the files of each version
// in a `..<version>` directory, `..data` linking to the current one, and a visible link per
// file through `..data`.
struct ConfigMapDir {
    fs::path dir;
    std::map<std::string, std::vector<std::string>> files;  // version -> file names
    std::string current;

    void add_version(const std::string& version, const std::map<std::string, std::string>& content)
    {
        for (const auto& [name, text] : content) {
            write_file(dir / (".." + version) / name, text);
            files[version].push_back(name);
        }
    }
    // The kubelet's order (atomic_writer.go): flip `..data` with a rename, then add the new
    // visible links, then remove those the new version lacks. `lag` is the kubelet's pause
    // between the flip and the links, when the old links dangle.
    void switch_to(const std::string& version, std::chrono::milliseconds lag = {})
    {
        fs::create_directory_symlink(".." + version, dir / "..data_tmp");
        fs::rename(dir / "..data_tmp", dir / "..data");
        if (lag.count() > 0) std::this_thread::sleep_for(lag);
        for (const auto& name : files[version])
            if (!fs::is_symlink(dir / name)) fs::create_symlink("..data/" + name, dir / name);
        if (!current.empty())
            for (const auto& name : files[current])
                if (std::ranges::find(files[version], name) == files[version].end()) fs::remove(dir / name);
        current = version;
    }
};

}  // namespace

TEST_CASE("a ..data flip racing conf dir reloads deletes no shared MES and changes no VIP")
{
    TempDir t;
    constexpr int shared = 2500;
    ConfigMapDir cm{t.path / "conf", {}, {}};
    // The shared MES sit in differently named files in the two versions, as when a ConfigMap
    // is split differently: a reader that mixes the versions misses some of them.
    cm.add_version("v1", {{"gen.yaml", generator_doc},
                          {"shared-a.yaml", mes_range("shared-", 0, shared / 2, 80)},
                          {"shared-b.yaml", mes_range("shared-", shared / 2, shared, 80)},
                          {"only-v1.yaml", mes_doc("only-v1", 80)}});
    cm.add_version("v2", {{"gen.yaml", generator_doc},
                          {"part-1.yaml", mes_range("shared-", 0, shared / 2, 81)},
                          {"part-2.yaml", mes_range("shared-", shared / 2, shared, 81)},
                          {"only-v2.yaml", mes_doc("only-v2", 81)}});
    cm.switch_to("v1");

    MesdOptions options;
    options.conf_dir = cm.dir.string();
    options.dns_section = "  forward:\n    enabled: false\n";
    // Kuma's default generators off: a second name for each of the 2,500 MES doubles the
    // cost of an apply, and under AddressSanitizer fewer reloads then fall among the flips.
    options.extra_config = "defaultHostnameGenerators: false\n";
    Mesd mesd(t.path / "mesd", options);
    auto before = vips_by_name(mesd.config());
    REQUIRE(before.size() == shared + 1);

    // Bursts of flips with pauses between: some reloads fall in a burst, some after it.
    auto applies_before = metric(mesd, "mesd_conf_dir_applies_total");
    std::mt19937 random(42);
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(7);
    int flips = 0;
    while (std::chrono::steady_clock::now() < until) {
        // A slow kubelet: the visible links dangle for a while after each flip.
        cm.switch_to(cm.current == "v1" ? "v2" : "v1", std::chrono::milliseconds(150 + random() % 250));
        ++flips;
        // Every third flip a pause long enough for the change to settle and be read: two
        // looks 500 ms apart that agree, then the read and apply of 2,500 MES, which
        // AddressSanitizer with four workers makes take most of a second.
        std::this_thread::sleep_for(std::chrono::milliseconds(flips % 3 == 0 ? 1800 + random() % 400 : random() % 40));
    }
    cm.switch_to("v2");
    // The last version is applied: its own MES is there, the other's gone.
    CHECK(eventually([&] { return vips_by_name(mesd.config()).contains("only-v2") &&
                                  !vips_by_name(mesd.config()).contains("only-v1"); },
                     std::chrono::seconds(10)));
    auto applies = metric(mesd, "mesd_conf_dir_applies_total") - applies_before;
    INFO("flips " << flips << ", applies " << applies << ", torn reads "
                  << metric(mesd, "mesd_conf_dir_torn_reads_total"));
    WARN("..data flips: " << flips << " flips, " << applies << " applies, "
                          << metric(mesd, "mesd_conf_dir_torn_reads_total") << " torn reads");
    CHECK(applies >= 2);  // the reloads did race the flips

    auto after = vips_by_name(mesd.config());
    int changed = 0;
    for (int i = 0; i < shared; ++i) {
        auto name = "shared-" + std::to_string(i);
        if (!after.contains(name) || after[name] != before[name]) ++changed;
    }
    CHECK(changed == 0);
    auto log = mesd.log();
    std::smatch deleted;
    CHECK_FALSE(std::regex_search(log, deleted, std::regex("msg=deleted [^\n]*name=shared-")));
    CHECK_THAT(log, Catch::Contains("msg=configured kind=MeshExternalService mesh=default name=shared-0"));
}

TEST_CASE("DNS is answered within 100 ms while a 20000-MES conf dir is read and applied")
{
    TempDir t;
    constexpr int files = 20, per_file = 1000;
    auto conf = t.path / "conf";
    write_file(conf / "gen.yaml", generator_doc);
    for (int f = 0; f < files; ++f)
        write_file(conf / ("mes-" + std::to_string(f) + ".yaml"), mes_range("m" + std::to_string(f) + "-", 0, per_file, 80));
    MesdOptions options;
    options.conf_dir = conf.string();
    options.dns_section = "  forward:\n    enabled: false\n";
    // The proxy in redirect mode: in bind mode it reconciles 20,000 listeners on the loop after
    // every store change (about 130 ms here), which is the proxy's cost, not the reload's.
    // Kuma's default generators off: they give every MES a second name, 40,000 to index where
    // this measures the pause of 20,000 (worst about 110 ms instead of 80 here with them on).
    options.extra_config = "proxy:\n  mode: redirect\n  redirectListen: 127.0.0.1:0\ndefaultHostnameGenerators: false\n";
    Mesd mesd(t.path / "mesd", options);
    REQUIRE(metric(mesd, "mesd_conf_dir_applies_total") == 1);

    // A change to one file has every file read and parsed again.
    write_file(conf / "mes-0.yaml", mes_range("m0-", 0, per_file, 81));
    auto query = raw_query("m7-123.mesh");
    // The loop still swaps in the new name index (tens of milliseconds at 20,000 MES), which
    // AddressSanitizer makes several times slower.
#ifdef __SANITIZE_ADDRESS__
    constexpr std::chrono::milliseconds bound{400};
#else
    constexpr std::chrono::milliseconds bound{100};
#endif
    int sent = 0, slow = 0;
    std::chrono::milliseconds worst{0};
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    bool applied = false;
    while (std::chrono::steady_clock::now() < deadline && (!applied || sent < 200)) {
        auto started = std::chrono::steady_clock::now();
        auto reply = udp_exchange(mesd.dns_port(), query, bound);
        auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
        ++sent;
        worst = std::max(worst, took);
        if (reply.size() < 12 || took > bound) {
            ++slow;
            UNSCOPED_INFO("query " << sent << " took " << took.count() << " ms at "
                                   << std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::system_clock::now().time_since_epoch()).count() % 100000);
        }
        if (sent % 20 == 0) applied = metric(mesd, "mesd_conf_dir_applies_total") == 2;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    INFO("queries " << sent << ", slow or lost " << slow << ", worst " << worst.count() << " ms");
    WARN("20000 MES reloaded: " << sent << " queries, worst " << worst.count() << " ms");
    CHECK(applied);
    CHECK(sent >= 200);
    CHECK(slow == 0);
    CHECK_THAT(mesd.log(), Catch::Contains("msg=configured kind=MeshExternalService mesh=default name=m0-999"));
}

TEST_CASE("entries that cannot be read fail validate and apply and stop the conf dir sync")
{
    // Root reads a mode-000 file, so the entries here are ones nobody can read: a link to
    // nothing (a file or a subdirectory removed, or a mount not there yet) and a FIFO.
    TempDir t;
    auto conf = t.path / "conf";
    write_file(conf / "gen.yaml", generator_doc);
    write_file(conf / "a.yaml", mes_doc("mes-a", 80));
    write_file(conf / "sub" / "b.yaml", mes_doc("mes-b", 80));
    MesdOptions options;
    options.conf_dir = conf.string();
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(t.path / "mesd", options);
    REQUIRE(vips_by_name(mesd.config()).size() == 2);
    auto config = mesd.config();

    SECTION("a dangling link")
    {
        fs::create_symlink("gone.yaml", conf / "c.yaml");
    }
    SECTION("a link to a directory that is not there")
    {
        fs::create_directory_symlink(t.path / "not-mounted", conf / "more");
    }
    SECTION("a FIFO named like a file")
    {
        REQUIRE(::mkfifo((conf / "d.yaml").c_str(), 0644) == 0);
    }
    fs::remove(conf / "sub" / "b.yaml");  // what a skipped entry might have held

    auto validate = mesctl(config, {"validate", conf.string()});
    CHECK(validate.exit_code == 2);
    CHECK_THAT(validate.err, Catch::Contains("cannot read"));
    auto apply = mesctl(config, {"apply", "--prune", "-f", conf.string()});
    CHECK(apply.exit_code == 2);
    CHECK_THAT(apply.err, Catch::Contains("nothing was applied"));
    CHECK(vips_by_name(config).contains("mes-b"));

    CHECK(eventually([&] { return metric(mesd, "mesd_conf_dir_errors_total") >= 1; }, std::chrono::seconds(5)));
    CHECK_THAT(mesd.log(), Catch::Contains("cannot read"));
    CHECK(vips_by_name(config).contains("mes-b"));
}

TEST_CASE("links out of the conf dir are not followed unless asked and rejected keys are shown in short")
{
    TempDir t;
    auto conf = t.path / "conf";
    write_file(conf / "gen.yaml", generator_doc);
    write_file(conf / "a.yaml", mes_doc("mes-a", 80));
    // A link inside the directory is followed as before.
    write_file(conf / ".versions" / "b-1.yaml", mes_doc("mes-b", 80));
    fs::create_symlink(".versions/b-1.yaml", conf / "b.yaml");
    TempDir ws;
    auto config = ws.write("mesd.yaml", "dataDir: " + (ws.path / "data").string() + "\nvip:\n  ipv4: 127.242.0.0/16\n");
    auto fine = mesctl(config, {"validate", conf.string()});
    CHECK(fine.exit_code == 0);
    CHECK_THAT(fine.out, Catch::Contains("ok MeshExternalService default/mes-b"));

    // A secret-looking file elsewhere, with a long key holding a control byte.
    const std::string secret_key = "root:$6$Zx9secretsecretsecretsecretsecretsecretsecretsecret";
    auto outside = t.write("elsewhere/shadow", "type: MeshExternalService\nname: shadow\n\"" + secret_key +
                                                   "\\x07:19000:0:99999:7:::\": x\nspec:\n  match: {port: 80}\n"
                                                   "  endpoints: [{address: 127.0.0.1, port: 9}]\n");
    fs::create_symlink(outside, conf / "shadow.yaml");

    auto refused = mesctl(config, {"validate", conf.string()});
    CHECK(refused.exit_code == 2);
    CHECK_THAT(refused.err, Catch::Contains("shadow.yaml: a link that leads out of the directory; not followed"));
    CHECK_THAT(refused.err, !Catch::Contains("secret"));
    auto apply = mesctl(config, {"apply", "-f", conf.string()});
    CHECK(apply.exit_code == 2);
    CHECK_FALSE(vips_by_name(config).contains("mes-a"));

    auto followed = mesctl(config, {"validate", "--follow-links", conf.string()});
    CHECK(followed.exit_code == 1);
    // 40 bytes of the key, then how long it was; the control byte past them never shown.
    CHECK_THAT(followed.err, Catch::Contains("unknown field \"" + secret_key.substr(0, 40) + "...\" (79 bytes)"));
    CHECK_THAT(followed.err, !Catch::Contains(secret_key.substr(0, 41)));
    CHECK_THAT(followed.err, !Catch::Contains("\x07"));

    // A control byte within the excerpt is escaped.
    write_file(conf / "bell.yaml", mes_doc("mes-c", 80) + "\"a\\x07b\": 1\n");
    fs::remove(conf / "shadow.yaml");
    auto bell = mesctl(config, {"validate", conf.string()});
    CHECK_THAT(bell.err, Catch::Contains("unknown field \"a\\x07b\""));

    // mesd refuses the link as mesctl does.
    fs::remove(conf / "bell.yaml");
    MesdOptions options;
    options.conf_dir = conf.string();
    options.dns_section = "  forward:\n    enabled: false\n";
    Mesd mesd(t.path / "mesd", options);
    fs::create_symlink(outside, conf / "shadow.yaml");
    CHECK(eventually([&] { return metric(mesd, "mesd_conf_dir_errors_total") == 1; }, std::chrono::seconds(5)));
    CHECK_THAT(mesd.log(), Catch::Contains("a link that leads out of the directory"));
    CHECK_THAT(mesd.log(), !Catch::Contains("secret"));
}

TEST_CASE("a write that must grow the map fails with map_full when growing is off and then grows")
{
    // mesd writes the conf dir on a worker thread with grow_map off and redoes on its loop a
    // write that fails so; the loop's write grows the map as before.
    TempDir t;
    auto opened = store::Store::open(store::Options{(t.path / "data").string(), std::size_t{1} << 20});
    REQUIRE(opened.has_value());
    auto result = conf::load_text(generator_doc + mes_range("m-", 0, 5000, 80), "many.yaml");
    REQUIRE(result.ok());
    std::vector<conf::Resource> resources;
    for (const auto& doc : result.documents) resources.push_back(doc.resource);
    store::WriteOptions options;
    options.pools.ipv4 = "127.242.0.0/16";
    options.prune = true;
    options.grow_map = false;
    auto refused = (*opened)->apply(resources, options);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().map_full);
    CHECK((*opened)->usage()->vips == 0);  // nothing of the failed write stayed
    options.grow_map = true;
    auto grown = (*opened)->apply(resources, options);
    REQUIRE(grown.has_value());
    CHECK(grown->changes.size() == 5001);
    CHECK((*opened)->usage()->map_bytes > (std::size_t{1} << 20));
}
