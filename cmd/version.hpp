// What `mesd --version`, `mesctl version` and `mesctl --version` print.
#pragma once

#include <string>
#include <string_view>

namespace cmd {

// "PROGRAM VERSION (commit C)" on the first line (no commit part when built outside git),
// then the compiler and each library with the version it runs with, one a line.
std::string version_text(std::string_view program);

}  // namespace cmd
