// mesctl: the command line for mesd's resources.
#include "conf/conf.hpp"

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr int exit_ok = 0;
constexpr int exit_invalid = 1;
constexpr int exit_usage = 2;

constexpr std::string_view usage_text =
    "usage: mesctl COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  validate [--quiet] PATH...   check YAML files or directories of resources\n"
    "  help                         show this text\n"
    "\n"
    "exit status: 0 all valid, 1 some resource invalid, 2 usage error or unreadable path\n";

int usage_error(std::string_view message)
{
    std::cerr << "mesctl: " << message << "\n\n" << usage_text;
    return exit_usage;
}

int cmd_validate(std::span<const std::string> args)
{
    bool quiet = false;
    std::vector<std::string> paths;
    bool options_done = false;
    for (const auto& arg : args) {
        if (!options_done && (arg == "--quiet" || arg == "-q")) quiet = true;
        else if (!options_done && arg == "--") options_done = true;
        else if (!options_done && arg.starts_with("-") && arg != "-")
            return usage_error("validate: unknown option " + arg);
        else paths.push_back(arg == "-" ? "/dev/stdin" : arg);
    }
    if (paths.empty()) return usage_error("validate: no PATH given");

    auto result = conf::load_paths(paths);
    for (const auto& d : result.file_errors) std::cerr << d.format() << '\n';
    for (const auto& doc : result.documents) {
        for (const auto& d : doc.diagnostics) std::cerr << d.format() << '\n';
        if (doc.valid() && !quiet) {
            const auto& r = doc.resource;
            std::cout << "ok " << conf::kind_name(r.kind) << ' ' << r.mesh << '/' << r.name << '\n';
        }
    }
    std::cout.flush();
    if (!result.unreadable.empty()) return exit_usage;
    if (!result.ok()) {
        std::size_t invalid = 0;
        for (const auto& doc : result.documents) invalid += doc.valid() ? 0 : 1;
        std::cerr << "mesctl: " << result.error_count() << " error(s) in " << invalid
                  << " resource(s)" << (result.file_errors.empty() ? "" : " and files") << '\n';
        return exit_invalid;
    }
    return exit_ok;
}

}  // namespace

int main(int argc, char** argv)
{
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) return usage_error("no command given");
    std::string command = args.front();
    std::span<const std::string> rest(args.begin() + 1, args.end());
    try {
        if (command == "validate") return cmd_validate(rest);
        if (command == "help" || command == "--help" || command == "-h") {
            std::cout << usage_text;
            return exit_ok;
        }
    } catch (const std::exception& e) {
        std::cerr << "mesctl: " << e.what() << '\n';
        return exit_invalid;
    }
    return usage_error("unknown command \"" + command + "\"");
}
