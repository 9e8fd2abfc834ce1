// `mesctl completion bash|zsh` and what its scripts ask, `mesctl __complete`: commands,
// flags per command, kinds, and the names of what a store holds, the store named earlier on
// the line. The bash script is driven in a real bash, the zsh one loaded by compinit and
// run with compadd stood in for.
#include "test/support/process.hpp"
#include "test/support/resources.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

using test_support::run;
using test_support::TempDir;

std::vector<std::string> lines_of(const std::string& text)
{
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) out.push_back(line);
    return out;
}

std::set<std::string> set_of(const std::string& text)
{
    auto l = lines_of(text);
    return {l.begin(), l.end()};
}

// A store holding two MES, a Secret and a generator naming the MES `<name>.compl.mesh`.
struct Store {
    TempDir dir;
    std::string data_dir = (dir.path / "store").string();

    Store()
    {
        auto file = dir.write("res.yaml", test_support::mes_doc("compl-alpha", 80) + test_support::mes_doc("compl-beta", 81) +
                                              "---\ntype: Secret\nname: compl-key\ndata: aGVsbG8=\n"
                                              "---\ntype: HostnameGenerator\nname: compl-names\nspec:\n  selector:\n"
                                              "    meshExternalService:\n      matchLabels: {}\n"
                                              "  template: \"{{ .Name }}.compl.mesh\"\n");
        auto r = run({MESCTL_PATH, "--data-dir", data_dir, "apply", "-f", file});
        INFO(r.err);
        REQUIRE(r.exit_code == 0);
    }
};

std::set<std::string> complete(const std::vector<std::string>& words, const std::vector<std::string>& env = {})
{
    std::vector<std::string> argv{MESCTL_PATH, "__complete"};
    argv.insert(argv.end(), words.begin(), words.end());
    auto r = run(argv, {}, env);
    REQUIRE(r.exit_code == 0);
    CHECK(r.err.empty());
    return set_of(r.out);
}

std::string mesctl_dir() { return std::filesystem::path(MESCTL_PATH).parent_path().string(); }

// Runs `script` in the shell `sh` with mesctl first on PATH (set in the script: an entry
// added to the environment would come after the PATH already there).
test_support::RunResult shell(const std::string& sh, const std::string& script)
{
    return run({sh, "-c", "export PATH=" + mesctl_dir() + ":$PATH; " + script});
}

}  // namespace

TEST_CASE("completion offers commands and per command flags", "[completion]")
{
    auto commands = complete({""});
    CHECK(commands == std::set<std::string>{"validate", "apply", "get", "delete", "inspect", "check", "cluster",
                                            "completion", "version", "help"});
    CHECK(complete({"g"}) == std::set<std::string>{"get"});
    CHECK(complete({"c"}) == std::set<std::string>{"check", "cluster", "completion"});
    auto get_flags = complete({"get", "--"});
    for (const char* f : {"--mesh", "--output", "--config", "--data-dir"}) CHECK(get_flags.count(f) == 1);
    CHECK(get_flags.count("--prune") == 0);
    auto apply_flags = complete({"apply", "-"});
    for (const char* f : {"-f", "--filename", "--prune", "--follow-links"}) CHECK(apply_flags.count(f) == 1);
    CHECK(apply_flags.count("--mesh") == 0);
    CHECK(complete({"get", "mes", "-o", ""}) == std::set<std::string>{"table", "yaml", "json"});
    CHECK(complete({"get", "mes", "--output=j"}) == std::set<std::string>{"--output=json"});
    CHECK(complete({"completion", ""}) == std::set<std::string>{"bash", "zsh"});
    CHECK(complete({"cluster", ""}) == std::set<std::string>{"import"});
    // Where a path goes, the shell completes file names.
    CHECK(complete({"apply", "-f", ""}) == std::set<std::string>{":files"});
    CHECK(complete({"validate", "x"}) == std::set<std::string>{":files"});
    CHECK(complete({"--data-dir", ""}) == std::set<std::string>{":dirs"});
}

TEST_CASE("completion offers kinds and the names in the store", "[completion]")
{
    Store s;
    auto kinds = complete({"get", ""});
    for (const char* k : {"mes", "meshexternalservices", "hostnamegenerators", "hg", "secrets", "vips", "nodes"})
        CHECK(kinds.count(k) == 1);
    CHECK(complete({"delete", "h"}) == std::set<std::string>{"hostnamegenerators", "hg"});
    CHECK(complete({"--data-dir", s.data_dir, "get", "mes", ""}) == std::set<std::string>{"compl-alpha", "compl-beta"});
    CHECK(complete({"--data-dir=" + s.data_dir, "get", "mes", "compl-a"}) == std::set<std::string>{"compl-alpha"});
    // The global option after the command counts too, and the long kind name.
    CHECK(complete({"delete", "meshexternalservices", "--data-dir", s.data_dir, "compl-b"}) ==
          std::set<std::string>{"compl-beta"});
    CHECK(complete({"--data-dir", s.data_dir, "get", "secrets", ""}) == std::set<std::string>{"compl-key"});
    CHECK(complete({"--data-dir", s.data_dir, "get", "hg", "compl"}) == std::set<std::string>{"compl-names"});
    CHECK(complete({"--data-dir", s.data_dir, "get", "mes", "--mesh", ""}) == std::set<std::string>{"default"});
    CHECK(complete({"--data-dir", s.data_dir, "get", "mes", "--mesh", "other", ""}).empty());
    // inspect takes a name, a hostname or a VIP.
    auto inspect = complete({"--data-dir", s.data_dir, "inspect", ""});
    for (const char* w : {"compl-alpha", "compl-beta", "compl-alpha.compl.mesh", "compl-beta.compl.mesh"})
        CHECK(inspect.count(w) == 1);
    auto vips = complete({"--data-dir", s.data_dir, "get", "vips", ""});
    CHECK(vips.size() == 2);
    for (const auto& v : vips) CHECK(inspect.count(v) == 1);
    // $MESD_DATA_DIR, as every command reads it; and a config file's dataDir.
    CHECK(complete({"get", "mes", ""}, {"MESD_DATA_DIR=" + s.data_dir}) ==
          std::set<std::string>{"compl-alpha", "compl-beta"});
    auto config = s.dir.write("mesd.yaml", "dataDir: " + s.data_dir + "\n");
    CHECK(complete({"--config", config, "get", "mes", ""}) == std::set<std::string>{"compl-alpha", "compl-beta"});
}

TEST_CASE("completion does not create a store where there is none", "[completion]")
{
    TempDir dir;
    auto missing = (dir.path / "none").string();
    CHECK(complete({"--data-dir", missing, "get", "mes", ""}).empty());
    CHECK_FALSE(std::filesystem::exists(missing));
    auto r = run({MESCTL_PATH, "completion", "fish"});
    CHECK(r.exit_code == 2);
}

TEST_CASE("the bash completion script completes in bash", "[completion]")
{
    Store s;
    auto script = run({MESCTL_PATH, "completion", "bash"});
    REQUIRE(script.exit_code == 0);
    auto file = s.dir.write("mesctl.bash", script.out);
    auto drive = [&](const std::string& words, int cword) {
        auto r = shell("/bin/bash", "source " + file + "; COMP_WORDS=(" + words + "); COMP_CWORD=" + std::to_string(cword) +
                                   "; _mesctl; printf '%s\\n' \"${COMPREPLY[@]}\"");
        INFO(r.err);
        CHECK(r.exit_code == 0);
        return set_of(r.out);
    };
    auto registered = shell("/bin/bash", "source " + file + "; complete -p mesctl");
    CHECK(registered.out.find("complete -F _mesctl mesctl") != std::string::npos);
    CHECK(drive("mesctl ''", 1).count("inspect") == 1);
    CHECK(drive("mesctl --data-dir " + s.data_dir + " get mes ''", 5) == std::set<std::string>{"compl-alpha", "compl-beta"});
    CHECK(drive("mesctl --data-dir " + s.data_dir + " delete mes compl-b", 5) == std::set<std::string>{"compl-beta"});
    CHECK(drive("mesctl get mes --data-dir " + s.data_dir + " --mesh ''", 6) == std::set<std::string>{"default"});
    // bash splits --mesh=d at '=' (COMP_WORDBREAKS): "--mesh" "=" "d".
    CHECK(drive("mesctl get mes --data-dir " + s.data_dir + " --mesh = d", 7) == std::set<std::string>{"default"});
    // A path: the shell's own file names.
    s.dir.write("in/one.yaml", "");
    s.dir.write("in/two.yaml", "");
    CHECK(drive("mesctl apply -f " + (s.dir.path / "in/o").string(), 3) ==
          std::set<std::string>{(s.dir.path / "in/one.yaml").string()});
}

TEST_CASE("the zsh completion script loads and completes in zsh", "[completion]")
{
    Store s;
    auto script = run({MESCTL_PATH, "completion", "zsh"});
    REQUIRE(script.exit_code == 0);
    CHECK(script.out.starts_with("#compdef mesctl\n"));
    auto file = s.dir.write("_mesctl", script.out);
    auto syntax = run({"/usr/bin/zsh", "-n", file});
    INFO(syntax.err);
    CHECK(syntax.exit_code == 0);
    CHECK(syntax.err.empty());
    const std::string init = "autoload -U compinit; compinit -u -D; source " + file + "; ";
    auto registered = shell("/usr/bin/zsh", init + "print -r -- $_comps[mesctl]");
    INFO(registered.err);
    CHECK(registered.out == "_mesctl\n");
    // compadd works inside a completion widget only: a function of the same name stands in
    // for it and prints what the script offers.
    auto offered = shell("/usr/bin/zsh", init + "compadd() { print -rl -- \"$@\" }; words=(mesctl --data-dir " + s.data_dir +
                                    " get mes compl-); CURRENT=6; _mesctl");
    INFO(offered.err);
    CHECK(offered.exit_code == 0);
    auto got = set_of(offered.out);
    got.erase("--");
    CHECK(got == std::set<std::string>{"compl-alpha", "compl-beta"});
    auto commands = shell("/usr/bin/zsh", init + "compadd() { print -rl -- \"$@\" }; words=(mesctl ch); CURRENT=2; _mesctl");
    auto cmds = set_of(commands.out);
    cmds.erase("--");
    CHECK(cmds == std::set<std::string>{"check"});
}
