#include "conf/detail/reader.hpp"

#include <algorithm>
#include <charconv>

namespace conf::detail {

Mark Reporter::mark(const YAML::Mark& m) const
{
    if (m.is_null() || m.line < 0) return fallback_.line > 0 ? fallback_ : Mark{file_, 0, 0};
    return Mark{file_, m.line + 1 + line_offset_, m.column + 1};
}

Mark Reporter::mark(const YAML::Node& node) const
{
    if (!node.IsDefined()) return fallback_.line > 0 ? fallback_ : Mark{file_, 0, 0};
    return mark(node.Mark());
}

void Reporter::add(Severity severity, const Mark& at, std::string path, std::string message)
{
    Diagnostic d;
    d.severity = severity;
    d.mark = at;
    d.path = std::move(path);
    d.message = std::move(message);
    doc_.diagnostics.push_back(std::move(d));
}

void Reporter::error(const Mark& at, std::string path, std::string message)
{
    add(Severity::error, at, std::move(path), std::move(message));
}

void Reporter::warning(const Mark& at, std::string path, std::string message)
{
    add(Severity::warning, at, std::move(path), std::move(message));
}

// A key as a field path shows it: itself when short and plain, else its excerpt.
std::string shown_key(std::string_view key)
{
    bool plain = key.size() <= 40 && std::ranges::all_of(key, [](char ch) {
        auto c = static_cast<unsigned char>(ch);
        return c >= 0x20 && c != 0x7f && c != '"' && c != '\\';
    });
    return plain ? std::string(key) : excerpt(key, 40);
}

std::string join(std::string_view path, std::string_view key)
{
    if (path.empty()) return std::string(key);
    std::string out(path);
    out += '.';
    out += key;
    return out;
}

std::string join(std::string_view path, std::size_t index)
{
    return std::string(path) + '[' + std::to_string(index) + ']';
}

bool present(const YAML::Node& node) { return node.IsDefined() && !node.IsNull(); }

Fields::Fields(Reporter& reporter, const YAML::Node& node, std::string path)
    : reporter_(reporter), node_(node), path_(std::move(path))
{
    if (!present(node)) return;
    if (!node.IsMap()) {
        reporter_.error(node, path_, "must be a mapping (key: value pairs)");
        return;
    }
    ok_ = true;
    for (auto it = node.begin(); it != node.end(); ++it) {
        if (!it->first.IsScalar()) {
            reporter_.error(it->first, path_, "keys must be plain strings");
            continue;
        }
        const std::string& key = it->first.Scalar();
        if (auto bad = invalid_utf8_at(key); bad != std::string_view::npos) {
            reporter_.error(it->first, path_, "key is not UTF-8 (invalid byte at offset " + std::to_string(bad) + ")");
            continue;
        }
        if (!index_.try_emplace(key, entries_.size()).second) {
            reporter_.error(it->first, join(path_, shown_key(key)), "duplicate field " + excerpt(key, 40));
            continue;
        }
        entries_.push_back(Entry{key, it->first, it->second, false});
    }
}

Fields::~Fields()
{
    for (const auto& e : entries_)
        if (!e.taken) reporter_.error(e.key_node, join(path_, shown_key(e.key)), "unknown field " + excerpt(e.key, 40));
}

YAML::Node Fields::take(std::string_view key)
{
    if (reporter_.recording_keys()) reporter_.key_asked(join(path_, key));
    auto found = index_.find(key);
    if (found == index_.end()) return YAML::Node(YAML::NodeType::Undefined);
    auto& e = entries_[found->second];
    e.taken = true;
    if (e.value.IsNull()) return YAML::Node(YAML::NodeType::Undefined);
    return e.value;
}

bool Fields::has(std::string_view key) const
{
    auto found = index_.find(key);
    return found != index_.end() && !entries_[found->second].value.IsNull();
}

namespace {

std::string_view type_word(const YAML::Node& node)
{
    if (node.IsMap()) return "a mapping";
    if (node.IsSequence()) return "a list";
    return "a scalar";
}

bool quoted(const YAML::Node& node) { return node.Tag() == "!"; }

}  // namespace

std::optional<std::string> read_string(Reporter& r, const YAML::Node& node, const std::string& path)
{
    if (!present(node)) return std::nullopt;
    if (!node.IsScalar()) {
        r.error(node, path, "must be a string, got " + std::string(type_word(node)));
        return std::nullopt;
    }
    // The file is checked to be UTF-8, but escapes in double-quoted scalars ("\ud800",
    // "\xc0") can still make what RFC 3629 forbids.
    if (auto bad = invalid_utf8_at(node.Scalar()); bad != std::string_view::npos) {
        r.error(node, path, "must be UTF-8 text (invalid byte at offset " + std::to_string(bad) + " of the value)");
        return std::nullopt;
    }
    return node.Scalar();
}

std::optional<bool> read_bool(Reporter& r, const YAML::Node& node, const std::string& path)
{
    if (!present(node)) return std::nullopt;
    if (node.IsScalar() && !quoted(node)) {
        std::string v = node.Scalar();
        std::ranges::transform(v, v.begin(), [](char c) { return static_cast<char>(c | 0x20); });
        if (v == "true") return true;
        if (v == "false") return false;
    }
    r.error(node, path,
            "must be a boolean (true or false), got " +
                (node.IsScalar() ? excerpt(node.Scalar()) : std::string(type_word(node))));
    return std::nullopt;
}

std::optional<std::int64_t> read_int(Reporter& r, const YAML::Node& node, const std::string& path,
                                     std::int64_t min, std::int64_t max, std::string_view range_message)
{
    if (!present(node)) return std::nullopt;
    if (!node.IsScalar() || quoted(node)) {
        r.error(node, path,
                "must be an integer, got " +
                    (node.IsScalar() ? "string " + excerpt(node.Scalar()) : std::string(type_word(node))));
        return std::nullopt;
    }
    std::string_view text = node.Scalar();
    bool negative = !text.empty() && text.front() == '-';
    std::string_view digits = text.substr(!text.empty() && (text.front() == '+' || negative) ? 1 : 0);
    // YAML 1.2's core schema also writes integers in hex ("0x4d45", as firewall marks are).
    int base = 10;
    if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
        base = 16;
        digits.remove_prefix(2);
    }
    bool all_digits = !digits.empty() && std::ranges::all_of(digits, [base](char c) {
        return (c >= '0' && c <= '9') || (base == 16 && ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')));
    });
    if (!all_digits) {
        r.error(node, path, "must be an integer, got " + excerpt(text));
        return std::nullopt;
    }
    std::int64_t value = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value, base);
    if (ec != std::errc{} || end != digits.data() + digits.size()) {
        r.error(node, path, std::string(range_message));  // too large for any range we accept
        return std::nullopt;
    }
    if (negative) value = -value;
    if (value < min || value > max) {
        r.error(node, path, std::string(range_message));
        return std::nullopt;
    }
    return value;
}

std::map<std::string, std::string> read_string_map(Reporter& r, const YAML::Node& node,
                                                   const std::string& path)
{
    std::map<std::string, std::string> out;
    if (!present(node)) return out;
    if (!node.IsMap()) {
        r.error(node, path, "must be a mapping of strings, got " + std::string(type_word(node)));
        return out;
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
        if (!it->first.IsScalar()) {
            r.error(it->first, path, "keys must be plain strings");
            continue;
        }
        const std::string& key = it->first.Scalar();
        if (auto bad = invalid_utf8_at(key); bad != std::string_view::npos) {
            r.error(it->first, path, "key is not UTF-8 (invalid byte at offset " + std::to_string(bad) + ")");
            continue;
        }
        if (it->second.IsNull()) {
            out[key] = "";
            continue;
        }
        auto value = read_string(r, it->second, join(path, key));
        if (value) out[key] = *value;
    }
    return out;
}

std::optional<std::size_t> read_choice(Reporter& r, const YAML::Node& node, const std::string& path,
                                       std::string_view field, std::span<const std::string_view> choices)
{
    auto value = read_string(r, node, path);
    if (!value) return std::nullopt;
    for (std::size_t i = 0; i < choices.size(); ++i)
        if (*value == choices[i]) return i;
    std::string message = "\"" + std::string(field) + "\" must be one of [";
    for (std::size_t i = 0; i < choices.size(); ++i) {
        if (i) message += ", ";
        message += "\"" + std::string(choices[i]) + "\"";
    }
    message += "]";
    r.error(node, path, message);
    return std::nullopt;
}

}  // namespace conf::detail
