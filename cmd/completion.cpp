#include "cmd/completion.hpp"

#include "conf/conf.hpp"
#include "store/store.hpp"

#include <algorithm>
#include <filesystem>
#include <set>

namespace cmd {

namespace {

// `$1` is how the command line named mesctl, so that a mesctl outside PATH completes too.
constexpr std::string_view bash_script = R"(# bash completion for mesctl: source it, or install it as
# /usr/share/bash-completion/completions/mesctl. Candidates come from `mesctl __complete`.
_mesctl()
{
    local cur=${COMP_WORDS[COMP_CWORD]} out
    out=$("${COMP_WORDS[0]}" __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null) || return 0
    COMPREPLY=()
    case $out in
    :files)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
    :dirs)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -d -- "$cur") ;;
    ?*)
        mapfile -t COMPREPLY <<< "$out" ;;
    esac
    return 0
}
complete -F _mesctl mesctl
)";

constexpr std::string_view zsh_script = R"(#compdef mesctl
# zsh completion for mesctl: source it after compinit, or install it as _mesctl in a
# directory of $fpath. Candidates come from `mesctl __complete`.
_mesctl()
{
    local -a out
    out=("${(@f)$(${words[1]} __complete "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    case ${out[1]} in
    :files) _files ;;
    :dirs) _files -/ ;;
    *) (( ${#${out:#}} )) && compadd -- "${(@)out:#}" ;;
    esac
}
if [[ ${funcstack[1]} == _mesctl ]]; then
    _mesctl "$@"
else
    compdef _mesctl mesctl
fi
)";

struct Command {
    std::string_view name;
    std::vector<std::string_view> flags;
};

// Each command with the flags it uses (beside the global ones). Hidden: __complete.
const std::vector<Command>& commands()
{
    static const std::vector<Command> list = {
        {"validate", {"--quiet", "-q", "--follow-links"}},
        {"apply", {"-f", "--filename", "--prune", "--follow-links"}},
        {"get", {"--mesh", "-o", "--output"}},
        {"delete", {"--mesh", "--force"}},
        {"inspect", {"--mesh", "--admin"}},
        {"check", {}},
        {"cluster", {"--from"}},
        {"completion", {}},
        {"version", {}},
        {"help", {}},
    };
    return list;
}

constexpr std::string_view global_flags[] = {"--config", "--data-dir", "--etcd-endpoints", "--help", "--version"};

// Flags followed by a value.
bool takes_value(std::string_view flag)
{
    static constexpr std::string_view with_value[] = {"--config", "--data-dir", "--etcd-endpoints", "--from",
                                                      "--admin",  "-f",         "--filename",       "--mesh",
                                                      "-o",       "--output"};
    return std::ranges::find(with_value, flag) != std::end(with_value);
}

// What the command line says so far.
struct Line {
    std::optional<std::string> config;
    std::optional<std::string> data_dir;
    std::string mesh;
    std::string command;
    std::vector<std::string> positional;  // after the command
};

class Names {
public:
    explicit Names(const Line& line) : line_(line) {}

    // Names of `kind` in the store, of --mesh when given.
    std::set<std::string> of(conf::Kind kind)
    {
        std::set<std::string> out;
        auto* s = snapshot();
        if (!s) return out;
        auto list = s->list(kind, line_.mesh.empty() ? std::nullopt : std::optional<std::string_view>(line_.mesh));
        if (list)
            for (const auto& e : *list) out.insert(e.resource.name);
        return out;
    }

    // MES names and their generated hostnames: what `inspect` takes.
    std::set<std::string> inspectable()
    {
        std::set<std::string> out;
        auto* s = snapshot();
        if (!s) return out;
        auto list = s->list(conf::Kind::mesh_external_service,
                            line_.mesh.empty() ? std::nullopt : std::optional<std::string_view>(line_.mesh));
        if (!list) return out;
        for (const auto& e : *list) {
            out.insert(e.resource.name);
            for (const auto& a : e.status.hostnames.addresses) out.insert(a.hostname);
        }
        return out;
    }

    std::set<std::string> vips()
    {
        std::set<std::string> out;
        auto* s = snapshot();
        if (!s) return out;
        if (auto v = s->vips())
            for (const auto& e : *v) out.insert(e.address.to_string());
        return out;
    }

    std::set<std::string> meshes()
    {
        std::set<std::string> out;
        if (auto c = config()) out.insert(c->meshes.begin(), c->meshes.end());
        if (auto* s = snapshot())
            if (auto list = s->list(std::nullopt, std::nullopt))
                for (const auto& e : *list)
                    if (!e.resource.mesh.empty()) out.insert(e.resource.mesh);
        return out;
    }

private:
    const conf::Config* config()
    {
        if (!loaded_) {
            auto result = conf::load_config(line_.config);
            if (line_.data_dir) result.config.data_dir = *line_.data_dir;
            loaded_ = std::move(result);
        }
        return loaded_->ok() || line_.data_dir ? &loaded_->config : nullptr;
    }

    store::Snapshot* snapshot()
    {
        if (tried_) return snapshot_ ? &*snapshot_ : nullptr;
        tried_ = true;
        auto* c = config();
        // Completing must not create a store where there is none.
        std::error_code ec;
        if (!c || !std::filesystem::exists(c->data_dir + "/data.mdb", ec)) return nullptr;
        auto opened = store::Store::open(store::Options{c->data_dir});
        if (!opened) return nullptr;
        store_ = std::move(*opened);
        auto snap = store_->snapshot();
        if (!snap) return nullptr;
        snapshot_.emplace(std::move(*snap));
        return &*snapshot_;
    }

    const Line& line_;
    std::optional<conf::ConfigResult> loaded_;
    std::unique_ptr<store::Store> store_;
    std::optional<store::Snapshot> snapshot_;
    bool tried_ = false;
};

template <class Range>
std::vector<std::string> starting_with(const Range& candidates, std::string_view prefix)
{
    std::vector<std::string> out;
    for (const auto& c : candidates)
        if (std::string_view(c).starts_with(prefix)) out.emplace_back(c);
    return out;
}

// The value of `flag`, its prefix typed so far `cur`.
std::vector<std::string> value_of(std::string_view flag, std::string_view cur, Names& names)
{
    if (flag == "--config" || flag == "-f" || flag == "--filename") return {":files"};
    if (flag == "--data-dir" || flag == "--from") return {":dirs"};
    if (flag == "-o" || flag == "--output") {
        static constexpr std::string_view formats[] = {"table", "yaml", "json"};
        return starting_with(formats, cur);
    }
    if (flag == "--mesh") return starting_with(names.meshes(), cur);
    return {};  // --admin HOST:PORT, --etcd-endpoints URL: nothing to offer
}

}  // namespace

std::optional<std::string_view> completion_script(std::string_view shell)
{
    if (shell == "bash") return bash_script;
    if (shell == "zsh") return zsh_script;
    return std::nullopt;
}

std::vector<std::string> complete(const std::vector<std::string>& words)
{
    if (words.empty()) return {};
    const std::string& cur = words.back();
    Line line;
    // Bash splits `--mesh=x` at '=' into "--mesh", "=", "x": the '=' joins them again.
    std::string pending;  // a flag whose value comes next
    bool options_done = false;
    for (std::size_t i = 0; i + 1 < words.size(); ++i) {
        const std::string& w = words[i];
        if (w == "=" && !pending.empty()) continue;
        if (!pending.empty()) {
            if (pending == "--config") line.config = w;
            else if (pending == "--data-dir") line.data_dir = w;
            else if (pending == "--mesh") line.mesh = w;
            pending.clear();
            continue;
        }
        if (!options_done && w == "--") {
            options_done = true;
            continue;
        }
        if (!options_done && w.starts_with("-") && w != "-") {
            auto eq = w.find('=');
            std::string flag = w.substr(0, eq);
            if (eq != std::string::npos) {
                std::string v = w.substr(eq + 1);
                if (flag == "--config") line.config = v;
                else if (flag == "--data-dir") line.data_dir = v;
                else if (flag == "--mesh") line.mesh = v;
            } else if (takes_value(flag)) {
                pending = flag;
                if (i + 2 < words.size() && words[i + 1] == "=") ++i;
            }
            continue;
        }
        if (line.command.empty()) line.command = w;
        else line.positional.push_back(w);
    }
    Names names(line);
    if (!pending.empty()) return value_of(pending, cur, names);
    // `--mesh=de`: the flag's values, each with the flag in front.
    if (auto eq = cur.find('='); cur.starts_with("--") && eq != std::string::npos) {
        std::string flag = cur.substr(0, eq);
        auto values = value_of(flag, cur.substr(eq + 1), names);
        if (values.size() == 1 && values[0].starts_with(':')) return {};
        for (auto& v : values) v = flag + "=" + v;
        return values;
    }
    const auto& cmds = commands();
    auto command = std::ranges::find(cmds, line.command, &Command::name);
    if (!options_done && cur.starts_with("-")) {
        std::vector<std::string> flags(std::begin(global_flags), std::end(global_flags));
        if (command != cmds.end()) flags.insert(flags.end(), command->flags.begin(), command->flags.end());
        return starting_with(flags, cur);
    }
    if (line.command.empty()) {
        std::vector<std::string_view> all;
        for (const auto& c : cmds) all.push_back(c.name);
        return starting_with(all, cur);
    }
    const std::string& c = line.command;
    const std::size_t n = line.positional.size();
    if (c == "validate" || c == "apply") return {":files"};
    if (c == "completion" && n == 0) {
        static constexpr std::string_view shells[] = {"bash", "zsh"};
        return starting_with(shells, cur);
    }
    if (c == "cluster" && n == 0) {
        static constexpr std::string_view subs[] = {"import"};
        return starting_with(subs, cur);
    }
    if (c == "inspect" && n == 0) {
        auto all = names.inspectable();
        all.merge(names.vips());
        return starting_with(all, cur);
    }
    if (c == "get" || c == "delete") {
        if (n == 0) {
            static constexpr std::string_view get_kinds[] = {
                "mes", "meshexternalservices", "hostnamegenerators", "hg", "secrets", "vips", "nodes"};
            static constexpr std::string_view delete_kinds[] = {
                "mes", "meshexternalservices", "hostnamegenerators", "hg", "secrets"};
            return c == "get" ? starting_with(get_kinds, cur) : starting_with(delete_kinds, cur);
        }
        if (n == 1) {
            const std::string& kind = line.positional[0];
            if (kind == "vips" || kind == "vip") return starting_with(names.vips(), cur);
            if (auto k = conf::kind_from_string(kind)) return starting_with(names.of(*k), cur);
        }
    }
    return {};
}

}  // namespace cmd
