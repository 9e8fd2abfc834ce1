// Running the real binaries from tests.
#pragma once

#include <string>
#include <vector>

namespace test_support {

struct RunResult {
    int exit_code = -1;  // -1 when killed by a signal
    std::string out;
    std::string err;
};

// Runs `argv` to completion with stdin from /dev/null (or `input` when given) and
// returns what it printed. `env` entries ("KEY=VALUE") are added to this environment.
RunResult run(const std::vector<std::string>& argv, const std::string& input = {},
              const std::vector<std::string>& env = {});

}  // namespace test_support
