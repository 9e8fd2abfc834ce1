// The manual pages against the programs: every flag that `mesd --help` and `mesctl --help`
// print, every mesctl command and every key the configuration reader takes is documented;
// mandoc finds nothing to warn about and man renders them. Also `--version`.
#include "conf/conf.hpp"
#include "test/support/process.hpp"

#include <catch2/catch.hpp>

#include <regex>
#include <set>
#include <string>
#include <vector>

namespace {

using test_support::file_text;
using test_support::run;

const std::string man_dir = std::string(MESD_SOURCE_DIR) + "/man/";

// Every `-x` or `--flag` token of a help text (not the '-' inside words such as 1-253).
std::set<std::string> flags_in(const std::string& help)
{
    std::set<std::string> out;
    static const std::regex flag(R"((?:^|[\s\[|(])(--?[a-z][a-z0-9-]*))");
    for (auto it = std::sregex_iterator(help.begin(), help.end(), flag); it != std::sregex_iterator(); ++it)
        out.insert((*it)[1].str());
    return out;
}

// The page as a reader sees it: rendered by mandoc, wide enough that no flag is broken
// across lines, the overstrike of bold and underline taken out.
std::string rendered(const std::string& page)
{
    auto r = run({"/usr/bin/mandoc", "-T", "ascii", "-O", "width=400", man_dir + page});
    REQUIRE(r.exit_code == 0);
    std::string out;
    for (std::size_t i = 0; i < r.out.size(); ++i) {
        if (i + 1 < r.out.size() && r.out[i + 1] == '\b') {
            ++i;  // "X\bX" or "_\bX": the X that follows stays
            continue;
        }
        out += r.out[i];
    }
    return out;
}

bool has_word(const std::string& text, const std::string& word)
{
    static const std::string word_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";
    for (auto at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) {
        bool left = at == 0 || word_chars.find(text[at - 1]) == std::string::npos;
        auto end = at + word.size();
        bool right = end == text.size() || word_chars.find(text[end]) == std::string::npos || text[end] == '.';
        if (left && right) return true;
    }
    return false;
}

}  // namespace

TEST_CASE("every flag of mesd --help is in mesd(8)", "[man]")
{
    auto help = run({MESD_PATH, "--help"});
    REQUIRE(help.exit_code == 0);
    auto flags = flags_in(help.out);
    // What the text shows today: a flag dropped from the help would pass unseen otherwise.
    for (const char* known : {"--config", "--data-dir", "--dns-listen", "--admin-listen", "--conf-dir",
                              "--conf-dir-follow-links", "--log-level", "--allow-core-dumps", "--etcd-endpoints",
                              "--node-name", "--workers", "--version", "--help"})
        CHECK(flags.count(known) == 1);
    auto page = rendered("mesd.8");
    for (const auto& f : flags) {
        INFO("flag " << f);
        CHECK(has_word(page, f));
    }
}

TEST_CASE("every flag and command of mesctl --help is in mesctl(1)", "[man]")
{
    auto help = run({MESCTL_PATH, "--help"});
    REQUIRE(help.exit_code == 0);
    auto flags = flags_in(help.out);
    for (const char* known : {"--config", "--data-dir", "--etcd-endpoints", "--quiet", "-q", "-f", "--filename",
                              "--prune", "--follow-links", "--mesh", "-o", "--output", "--force", "--admin", "--from"})
        CHECK(flags.count(known) == 1);
    // Each command's help is the same text.
    for (const char* command : {"validate", "apply", "get", "delete", "inspect", "check", "cluster"}) {
        auto r = run({MESCTL_PATH, command, "--help"});
        INFO(command);
        CHECK(r.exit_code == 0);
        CHECK(r.out == help.out);
    }
    auto page = rendered("mesctl.1");
    for (const auto& f : flags) {
        INFO("flag " << f);
        CHECK(has_word(page, f));
    }
    // The commands: the first word of each line of the list; each has its entry (".It Cm
    // NAME") in the page's COMMANDS section.
    auto source = file_text(man_dir + "mesctl.1");
    auto list = help.out.substr(help.out.find("commands:\n"));
    std::set<std::string> commands;
    static const std::regex command_line(R"(\n  ([a-z]+)[ \n])");
    for (auto it = std::sregex_iterator(list.begin(), list.end(), command_line); it != std::sregex_iterator(); ++it)
        commands.insert((*it)[1].str());
    for (const char* known : {"validate", "apply", "get", "delete", "inspect", "check", "cluster", "completion",
                              "version", "help"})
        CHECK(commands.count(known) == 1);
    for (const auto& c : commands) {
        INFO("command " << c);
        CHECK(source.find("\n.It Cm " + c) != std::string::npos);
    }
}

TEST_CASE("config_keys lists what the reader takes and refuses the rest", "[man]")
{
    const auto& keys = conf::config_keys();
    std::set<std::string> set(keys.begin(), keys.end());
    // Sections read only when present, down to the deepest, are found too.
    for (const char* known : {"dataDir", "dns", "dns.forward.upstreams", "dns.rateLimit.exempt", "proxy.accessLog.path",
                              "proxy.healthCheck.interval", "cluster.nodeName", "cluster.etcd.tls.caFile",
                              "cluster.etcd.requestTimeout", "admin.listen", "log.level"})
        CHECK(set.count(known) == 1);
    CHECK(set.size() == keys.size());
    CHECK(keys.size() > 60);
    // A key of the list is no unknown field; one beside it is.
    for (const auto& key : keys) {
        std::string yaml, indent;
        std::string_view rest = key;
        while (true) {
            auto dot = rest.find('.');
            yaml += indent + std::string(rest.substr(0, dot)) + ":";
            if (dot == std::string_view::npos) break;
            yaml += "\n";
            indent += "  ";
            rest.remove_prefix(dot + 1);
        }
        auto unknown = yaml + "\n" + indent + "notAKey: 1\n";
        auto known = conf::load_config_text(yaml + "\n", "t.yaml");
        auto refused = conf::load_config_text(unknown, "t.yaml");
        INFO(key);
        bool any_unknown = false, names_it = false;
        for (const auto& d : known.errors) any_unknown |= d.message.starts_with("unknown field");
        for (const auto& d : refused.errors) names_it |= d.message.find("notAKey") != std::string::npos;
        CHECK_FALSE(any_unknown);
        CHECK(names_it);
    }
}

TEST_CASE("every configuration key is in mesd.yaml(5)", "[man]")
{
    auto source = file_text(man_dir + "mesd.yaml.5");
    REQUIRE(!source.empty());
    for (const auto& key : conf::config_keys()) {
        INFO("key " << key);
        // Each key has its entry: ".It Cm KEY" or ".It Cm KEY : Vt TYPE".
        CHECK((source.find("\n.It Cm " + key + "\n") != std::string::npos ||
               source.find("\n.It Cm " + key + " :") != std::string::npos));
    }
}

TEST_CASE("mandoc -T lint finds nothing in the manual pages", "[man]")
{
    for (const char* page : {"mesd.8", "mesctl.1", "mesd.yaml.5"}) {
        auto r = run({"/usr/bin/mandoc", "-T", "lint", "-W", "warning", man_dir + page});
        INFO(page << ": " << r.out << r.err);
        CHECK(r.exit_code == 0);
        CHECK(r.out.empty());
        CHECK(r.err.empty());
    }
}

TEST_CASE("man renders the manual pages at 80 columns", "[man]")
{
    const std::vector<std::pair<std::string, std::string>> pages = {
        {"mesd.8", "MESD(8)"}, {"mesctl.1", "MESCTL(1)"}, {"mesd.yaml.5", "MESD.YAML(5)"}};
    for (const auto& [page, title] : pages) {
        auto r = run({"/usr/bin/man", "-l", man_dir + page}, {}, {"MANWIDTH=80", "MAN_KEEP_FORMATTING=", "PAGER=cat", "MANPAGER=cat"});
        INFO(page << ": " << r.err);
        CHECK(r.exit_code == 0);
        CHECK(r.err.empty());
        CHECK(r.out.find(title) != std::string::npos);
        for (const char* section : {"NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"}) CHECK(r.out.find(section) != std::string::npos);
        std::size_t widest = 0, start = 0;
        while (start < r.out.size()) {
            auto end = r.out.find('\n', start);
            if (end == std::string::npos) end = r.out.size();
            // Columns, not bytes: the page may hold UTF-8 dashes and quotes.
            std::size_t columns = 0;
            for (auto i = start; i < end; ++i) columns += (static_cast<unsigned char>(r.out[i]) & 0xc0) != 0x80;
            widest = std::max(widest, columns);
            start = end + 1;
        }
        CHECK(widest <= 80);
    }
}

TEST_CASE("mesd(8) documents the signals exit status and environment", "[man]")
{
    auto page = rendered("mesd.8");
    for (const char* word : {"SIGNALS", "SIGTERM", "SIGINT", "SIGHUP", "EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES",
                             "MESD_CONFIG", "MESD_WORKERS", "MESD_DATA_DIR", "MESD_ETCD_ENDPOINTS", "MESD_NODE_NAME"})
        CHECK(page.find(word) != std::string::npos);
}

namespace {

// "VERSION" of project(mesd VERSION ...) in CMakeLists.txt.
std::string project_version()
{
    auto text = file_text(std::string(MESD_SOURCE_DIR) + "/CMakeLists.txt");
    std::smatch m;
    REQUIRE(std::regex_search(text, m, std::regex(R"(project\(mesd VERSION ([0-9.]+))")));
    return m[1].str();
}

// The version pkg-config knows the library by: what the build found.
std::string pkg_version(const std::string& module)
{
    auto r = run({"/usr/bin/pkg-config", "--modversion", module});
    REQUIRE(r.exit_code == 0);
    return r.out.substr(0, r.out.find('\n'));
}

void check_version_text(const std::string& text, const std::string& program)
{
    INFO(text);
    auto first = text.substr(0, text.find('\n'));
    std::smatch m;
    REQUIRE(std::regex_match(first, m, std::regex("([a-z]+) ([0-9.]+)(?: \\(commit ([0-9a-f]+)(-dirty)?\\))?")));
    CHECK(m[1].str() == program);
    CHECK(m[2].str() == project_version());
    // Built from git: the commit is one git knows. (A tarball build prints none.)
    if (run({"/usr/bin/git", "-C", MESD_SOURCE_DIR, "rev-parse", "HEAD"}).exit_code == 0) {
        REQUIRE(m[3].matched);
        CHECK(run({"/usr/bin/git", "-C", MESD_SOURCE_DIR, "cat-file", "-e", m[3].str() + "^{commit}"}).exit_code == 0);
    }
    CHECK(std::regex_search(text, std::regex("\ncompiler: (g\\+\\+|clang) [0-9]")));
    CHECK(text.find("\nldns: " + pkg_version("ldns") + "\n") != std::string::npos);
    CHECK(text.find("\nlibuv: " + pkg_version("libuv") + "\n") != std::string::npos);
    CHECK(text.find("\nLMDB: " + pkg_version("lmdb") + "\n") != std::string::npos);
    CHECK(text.find("\nyaml-cpp: " + pkg_version("yaml-cpp")) != std::string::npos);
    CHECK(std::regex_search(text, std::regex("\nOpenSSL: OpenSSL " + std::regex_replace(pkg_version("openssl"),
                                                                                         std::regex("\\."), "\\.") +
                                             "\\b")));
}

}  // namespace

TEST_CASE("mesd --version and mesctl version print the versions", "[version]")
{
    auto mesd = run({MESD_PATH, "--version"});
    CHECK(mesd.exit_code == 0);
    check_version_text(mesd.out, "mesd");
    auto mesctl = run({MESCTL_PATH, "version"});
    CHECK(mesctl.exit_code == 0);
    check_version_text(mesctl.out, "mesctl");
    auto flag = run({MESCTL_PATH, "--version"});
    CHECK(flag.exit_code == 0);
    CHECK(flag.out == mesctl.out);
    // The same build: only the program's name differs.
    CHECK(mesd.out.substr(mesd.out.find(' ')) == mesctl.out.substr(mesctl.out.find(' ')));
}
