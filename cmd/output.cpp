#include "cmd/output.hpp"

#include <nlohmann/json.hpp>
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
    // The tree as nlohmann's, which writes it: insertion order kept.
    static nlohmann::ordered_json to_json(const Value& v)
    {
        return std::visit(
            [](const auto& x) -> nlohmann::ordered_json {
                using T = std::decay_t<decltype(x)>;
                if constexpr (std::is_same_v<T, std::monostate>) return nullptr;
                else if constexpr (std::is_same_v<T, Value::Array>) {
                    auto out = nlohmann::ordered_json::array();
                    for (const auto& item : x) out.push_back(to_json(item));
                    return out;
                } else if constexpr (std::is_same_v<T, Value::Object>) {
                    auto out = nlohmann::ordered_json::object();
                    for (const auto& [k, item] : x) out[k] = to_json(item);
                    return out;
                } else {
                    return x;
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
    // Bytes that are not UTF-8 (a name in a store written by hand) come out as U+FFFD rather
    // than failing the whole output.
    return Printer::to_json(*this).dump(indent > 0 ? indent : -1, ' ', false,
                                        nlohmann::ordered_json::error_handler_t::replace) +
           "\n";
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
