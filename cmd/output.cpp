#include "cmd/output.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>

namespace cmd {

Value& Value::set(std::string key, Value value)
{
    auto& obj = std::get<Object>(v_);
    obj.emplace_back(std::move(key), std::move(value));
    return obj.back().second;
}

Value& Value::push(Value value)
{
    auto& arr = std::get<Array>(v_);
    arr.push_back(std::move(value));
    return arr.back();
}

bool Value::empty() const
{
    if (auto* a = std::get_if<Array>(&v_)) return a->empty();
    if (auto* o = std::get_if<Object>(&v_)) return o->empty();
    return std::holds_alternative<std::monostate>(v_);
}

struct Printer {
    static void json_string(std::string& out, const std::string& s)
    {
        out += '"';
        for (unsigned char c : s) {
            switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
            }
        }
        out += '"';
    }

    static void json(std::string& out, const Value& v, int indent, int depth)
    {
        auto newline = [&](int d) {
            if (indent <= 0) return;
            out += '\n';
            out.append(static_cast<std::size_t>(indent * d), ' ');
        };
        std::visit(
            [&](const auto& x) {
                using T = std::decay_t<decltype(x)>;
                if constexpr (std::is_same_v<T, std::monostate>) out += "null";
                else if constexpr (std::is_same_v<T, bool>) out += x ? "true" : "false";
                else if constexpr (std::is_same_v<T, std::int64_t>) out += std::to_string(x);
                else if constexpr (std::is_same_v<T, std::string>) json_string(out, x);
                else if constexpr (std::is_same_v<T, Value::Array>) {
                    if (x.empty()) { out += "[]"; return; }
                    out += '[';
                    for (std::size_t i = 0; i < x.size(); ++i) {
                        if (i) out += ',';
                        newline(depth + 1);
                        json(out, x[i], indent, depth + 1);
                    }
                    newline(depth);
                    out += ']';
                } else {
                    if (x.empty()) { out += "{}"; return; }
                    out += '{';
                    for (std::size_t i = 0; i < x.size(); ++i) {
                        if (i) out += ',';
                        newline(depth + 1);
                        json_string(out, x[i].first);
                        out += indent > 0 ? ": " : ":";
                        json(out, x[i].second, indent, depth + 1);
                    }
                    newline(depth);
                    out += '}';
                }
            },
            v.v_);
    }

    static void yaml(YAML::Emitter& e, const Value& v)
    {
        std::visit(
            [&](const auto& x) {
                using T = std::decay_t<decltype(x)>;
                if constexpr (std::is_same_v<T, std::monostate>) e << YAML::Null;
                else if constexpr (std::is_same_v<T, bool>) e << x;
                else if constexpr (std::is_same_v<T, std::int64_t>) e << x;
                else if constexpr (std::is_same_v<T, std::string>) {
                    // Strings that YAML would read as another type are quoted.
                    std::string lower = x;
                    for (auto& c : lower) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
                    bool ambiguous = x.empty() || lower == "true" || lower == "false" || lower == "null" ||
                                     lower == "yes" || lower == "no" || lower == "on" || lower == "off" || x == "~" ||
                                     std::all_of(x.begin(), x.end(), [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
                    if (ambiguous) e << YAML::DoubleQuoted << x;
                    else e << x;
                } else if constexpr (std::is_same_v<T, Value::Array>) {
                    if (x.empty()) { e << YAML::Flow << YAML::BeginSeq << YAML::EndSeq; return; }
                    e << YAML::BeginSeq;
                    for (const auto& item : x) yaml(e, item);
                    e << YAML::EndSeq;
                } else {
                    if (x.empty()) { e << YAML::Flow << YAML::BeginMap << YAML::EndMap; return; }
                    e << YAML::BeginMap;
                    for (const auto& [k, item] : x) {
                        e << YAML::Key << k << YAML::Value;
                        yaml(e, item);
                    }
                    e << YAML::EndMap;
                }
            },
            v.v_);
    }
};

std::string Value::json(int indent) const
{
    std::string out;
    Printer::json(out, *this, indent, 0);
    return out + "\n";
}

std::string Value::yaml() const
{
    YAML::Emitter e;
    e.SetIndent(2);
    Printer::yaml(e, *this);
    return std::string(e.c_str()) + "\n";
}

std::string table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows)
{
    std::vector<std::size_t> width(header.size());
    for (std::size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
    for (const auto& row : rows)
        for (std::size_t i = 0; i < row.size() && i < width.size(); ++i) width[i] = std::max(width[i], row[i].size());
    std::string out;
    auto line = [&](const std::vector<std::string>& cells) {
        std::string l;
        for (std::size_t i = 0; i < cells.size() && i < width.size(); ++i) {
            l += cells[i];
            if (i + 1 < cells.size()) l.append(width[i] - cells[i].size() + 3, ' ');
        }
        out += l + "\n";
    };
    line(header);
    for (const auto& row : rows) line(row);
    return out;
}

}  // namespace cmd
