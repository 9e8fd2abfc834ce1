// Reading Kuma's test tables ported as data (test/conf/kuma/): where they are, and their
// expected violations as a sorted list to compare with mesd's.
#pragma once

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <compare>
#include <filesystem>
#include <string>
#include <vector>

namespace test_support {

inline const std::filesystem::path kuma_dir = std::filesystem::path(MESD_SOURCE_DIR) / "test" / "conf" / "kuma";

struct Violation {
    std::string field;
    std::string message;
    auto operator<=>(const Violation&) const = default;
};

inline std::vector<Violation> violations_of(const YAML::Node& list)
{
    std::vector<Violation> out;
    for (const auto& v : list) out.push_back({v["field"].as<std::string>(), v["message"].as<std::string>()});
    std::ranges::sort(out);
    return out;
}

}  // namespace test_support
