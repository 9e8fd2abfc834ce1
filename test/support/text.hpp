// Text helpers for tests that write YAML and read command output.
#pragma once

#include <cstddef>
#include <sstream>
#include <string>

namespace test_support {

// `s` without its trailing newlines, carriage returns and spaces (a command's output).
inline std::string trim(std::string s)
{
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    return s;
}

// Every line of `text` indented by `spaces` (PEM under a YAML block scalar).
inline std::string indent(const std::string& text, int spaces)
{
    std::string pad(static_cast<std::size_t>(spaces), ' '), out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) out += pad + line + "\n";
    return out;
}

// How many times `what` stands in `text` (overlapping ones counted).
inline std::size_t occurrences(const std::string& text, const std::string& what)
{
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

}  // namespace test_support
