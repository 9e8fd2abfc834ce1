// Structured output for mesctl: a small ordered value tree written as JSON or YAML, and
// aligned text tables.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace cmd {

class Value {
public:
    using Object = std::vector<std::pair<std::string, Value>>;  // keeps insertion order
    using Array = std::vector<Value>;

    Value() = default;  // null
    Value(bool b) : v_(b) {}
    Value(std::int64_t n) : v_(n) {}
    Value(int n) : v_(static_cast<std::int64_t>(n)) {}
    Value(std::string s) : v_(std::move(s)) {}
    Value(const char* s) : v_(std::string(s)) {}
    static Value object() { Value v; v.v_ = Object{}; return v; }
    static Value array() { Value v; v.v_ = Array{}; return v; }

    // Object: appends `key` (callers do not repeat keys). Array: appends.
    Value& set(std::string key, Value value);
    Value& push(Value value);
    bool empty() const;

    std::string json(int indent = 2) const;
    std::string yaml() const;

private:
    friend struct Printer;
    std::variant<std::monostate, bool, std::int64_t, std::string, Array, Object> v_;
};

// Rows of cells, printed with columns padded to their widest cell.
std::string table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);

}  // namespace cmd
