// What tests read off a running process: a series from the admin endpoint's metrics text, and
// the resident memory the kernel reports.
#pragma once

#include <fstream>
#include <string>

namespace test_support {

// A counter or gauge from the metrics text (`name` with its labels), or -1 when absent.
inline double metric(const std::string& text, const std::string& name)
{
    auto at = text.find("\n" + name + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + name.size() + 2));
}

// VmRSS of a process, in KiB, or -1.
inline long rss_kib(int pid)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (line.starts_with("VmRSS:")) return std::stol(line.substr(6));
    return -1;
}

}  // namespace test_support
