// Go text/template, the subset HostnameGenerator templates use. Grammar accepted:
//   template := (text | action)*
//   action   := "{{" ["- "] (field | "label" string | comment) [" -"] "}}"
// Anything else Go would accept (pipelines, if/range/with, variables) is refused by name, so
// a user learns at validation time rather than from a surprising hostname.
#include "conf/conf.hpp"

#include <algorithm>
#include <cstdio>

namespace conf {

namespace {

constexpr std::string_view supported =
    "supported: {{ .Name }}, {{ .DisplayName }}, {{ .Namespace }}, {{ .Mesh }}, {{ .Zone }}, "
    "{{ label \"key\" }}";

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }
bool is_ident_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_ident(char c) { return is_ident_start(c) || (c >= '0' && c <= '9'); }

Template::Piece piece_of(Template::Piece::Type type, std::string text = {})
{
    Template::Piece p;
    p.type = type;
    p.text = std::move(text);
    return p;
}

std::string go_error(int line, std::string_view message)
{
    return "template: :" + std::to_string(line) + ": " + std::string(message);
}

std::string describe_char(char c)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "U+%04X '%c'", static_cast<unsigned>(static_cast<unsigned char>(c)), c);
    return buf;
}

// Reads a Go string literal ("..." with escapes, or `raw`) at the front of `s`.
std::expected<std::string, std::string> read_string(std::string_view& s, int line)
{
    char quote = s.front();
    std::string out;
    std::size_t i = 1;
    for (; i < s.size(); ++i) {
        char c = s[i];
        if (c == quote) break;
        if (quote == '"' && c == '\\') {
            if (i + 1 >= s.size()) return std::unexpected(go_error(line, "unterminated quoted string"));
            char e = s[++i];
            switch (e) {
            case '"': out.push_back('"'); break;
            case '\\': out.push_back('\\'); break;
            case 'n': out.push_back('\n'); break;
            case 't': out.push_back('\t'); break;
            default:
                return std::unexpected(go_error(line, std::string("unsupported escape \\") + e +
                                                          " in quoted string"));
            }
            continue;
        }
        if (quote == '"' && c == '\n') return std::unexpected(go_error(line, "unterminated quoted string"));
        out.push_back(c);
    }
    if (i >= s.size()) {
        return std::unexpected(go_error(line, quote == '"' ? "unterminated quoted string"
                                                           : "unterminated raw quoted string"));
    }
    s.remove_prefix(i + 1);
    return out;
}

void trim_left(std::string_view& s)
{
    while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
}

// Parses the inside of one action (between the delimiters and trim markers).
std::expected<Template::Piece, std::string> parse_action(std::string_view body, int line)
{
    using Type = Template::Piece::Type;
    trim_left(body);
    if (body.starts_with("/*")) {
        if (!body.ends_with("*/")) return std::unexpected(go_error(line, "unclosed comment"));
        return piece_of(Type::text);
    }
    if (body.empty()) return std::unexpected(go_error(line, "missing value for command"));

    if (body.front() == '.') {
        std::size_t n = 1;
        while (n < body.size() && is_ident(body[n])) ++n;
        std::string_view field = body.substr(1, n - 1);
        std::string_view rest = body.substr(n);
        trim_left(rest);
        if (!rest.empty()) {
            if (is_ident_start(rest.front()) || rest.front() == '"' || rest.front() == '|' ||
                rest.front() == '.')
                return std::unexpected("unsupported template construct \"" + std::string(body) +
                                       "\" (" + std::string(supported) + ")");
            return std::unexpected(go_error(line, "bad character " + describe_char(rest.front())));
        }
        if (field == "Name") return piece_of(Type::name);
        if (field == "DisplayName") return piece_of(Type::display_name);
        if (field == "Namespace") return piece_of(Type::namespace_);
        if (field == "Mesh") return piece_of(Type::mesh);
        if (field == "Zone") return piece_of(Type::zone);
        if (field.empty())
            return std::unexpected("unsupported template construct \".\" (" + std::string(supported) + ")");
        // Go parses any field and fails when it executes: so does this, in its words.
        return piece_of(Type::unknown_field, std::string(field));
    }

    if (is_ident_start(body.front())) {
        std::size_t n = 0;
        while (n < body.size() && is_ident(body[n])) ++n;
        std::string word(body.substr(0, n));
        static constexpr std::string_view keywords[] = {"if", "else", "end", "range", "with",
                                                        "define", "block", "template", "break",
                                                        "continue", "nil", "true", "false"};
        if (std::ranges::find(keywords, word) != std::end(keywords))
            return std::unexpected("unsupported template construct \"" + word + "\" (" +
                                   std::string(supported) + ")");
        if (word != "label")
            return std::unexpected(go_error(line, "function \"" + word + "\" not defined"));
        std::string_view rest = body.substr(n);
        trim_left(rest);
        if (rest.empty()) return std::unexpected("wrong number of args for label: want 1 got 0");
        if (rest.front() != '"' && rest.front() != '`')
            return std::unexpected("unsupported template construct \"" + std::string(body) +
                                   "\": label takes one quoted string (" + std::string(supported) + ")");
        std::string_view quoted = rest;
        auto key = read_string(rest, line);
        if (!key) return std::unexpected(key.error());
        trim_left(rest);
        if (!rest.empty())
            return std::unexpected("unsupported template construct \"" + std::string(body) +
                                   "\": label takes one quoted string (" + std::string(supported) + ")");
        Template::Piece piece = piece_of(Type::label, std::move(*key));
        // Go prints a string argument as it was quoted in the template.
        std::string_view arg = quoted.substr(0, quoted.size() - rest.size());
        while (!arg.empty() && is_space(arg.back())) arg.remove_suffix(1);
        piece.context = "label " + std::string(arg);
        return piece;
    }

    if (body.front() == '$' || body.front() == '(' || body.front() == '"' || body.front() == '`' ||
        (body.front() >= '0' && body.front() <= '9'))
        return std::unexpected("unsupported template construct \"" + std::string(body) + "\" (" +
                               std::string(supported) + ")");
    return std::unexpected(go_error(line, "bad character " + describe_char(body.front())));
}

// Go's ExecError: `template: NAME:LINE:COL: executing "NAME" at <CONTEXT>: MESSAGE`, the
// template's name being "" in Kuma.
std::string exec_error(const Template::Piece& piece, const std::string& message)
{
    return "template: :" + std::to_string(piece.line) + ":" + std::to_string(piece.col) + ": executing \"\" at <" +
           piece.context + ">: " + message;
}

// The type Kuma's validator renders templates with, as Go names it.
constexpr std::string_view values_type =
    "struct { Name string; DisplayName string; Namespace string; Mesh string; Zone string }";

}  // namespace

std::expected<Template, std::string> Template::parse(std::string_view text)
{
    Template t;
    t.source_ = std::string(text);
    std::string_view rest = text;
    int line = 1;
    bool trim_next_text = false;
    while (!rest.empty()) {
        auto open = rest.find("{{");
        std::string_view literal = rest.substr(0, open);
        // "{{- " trims the white space before the action; "{{-3}}" would be a number.
        bool trim_before = open != std::string_view::npos && rest.size() > open + 3 &&
                           rest[open + 2] == '-' && is_space(rest[open + 3]);
        std::string lit(literal);
        if (trim_next_text) {
            auto first = std::ranges::find_if_not(lit, is_space);
            lit.erase(lit.begin(), first);
        }
        if (trim_before)
            while (!lit.empty() && is_space(lit.back())) lit.pop_back();
        if (!lit.empty()) t.pieces_.push_back(piece_of(Piece::Type::text, std::move(lit)));
        line += static_cast<int>(std::ranges::count(literal, '\n'));
        if (open == std::string_view::npos) break;

        rest.remove_prefix(open + 2);
        if (trim_before) rest.remove_prefix(2);
        // The action ends at the first "}}" outside a quoted string.
        std::size_t close = std::string_view::npos;
        char quote = 0;
        for (std::size_t i = 0; i + 1 < rest.size(); ++i) {
            char c = rest[i];
            if (quote) {
                if (c == '\\' && quote == '"') ++i;
                else if (c == quote) quote = 0;
                continue;
            }
            if (c == '"' || c == '`') quote = c;
            else if (c == '}' && rest[i + 1] == '}') { close = i; break; }
        }
        if (close == std::string_view::npos)
            return std::unexpected(go_error(line, quote == '"' ? "unterminated quoted string"
                                                  : quote == '`' ? "unterminated raw quoted string"
                                                                 : "unclosed action"));
        std::string_view body = rest.substr(0, close);
        trim_next_text = false;
        if (body.size() >= 2 && body.back() == '-' && is_space(body[body.size() - 2])) {
            trim_next_text = true;
            body.remove_suffix(2);
        }
        auto piece = parse_action(body, line);
        if (!piece) return std::unexpected(piece.error());
        {
            // Go's position of the command: its first byte, as a line and a byte in the line.
            auto first = body.find_first_not_of(" \t\r\n");
            std::size_t offset = static_cast<std::size_t>(body.data() - text.data()) +
                                 (first == std::string_view::npos ? 0 : first);
            std::string_view before = text.substr(0, offset);
            piece->line = 1 + static_cast<int>(std::ranges::count(before, '\n'));
            auto nl = before.rfind('\n');
            piece->col = static_cast<int>(nl == std::string_view::npos ? offset : offset - nl - 1);
            if (piece->type == Piece::Type::unknown_field) piece->context = "." + piece->text;
        }
        if (piece->type != Piece::Type::text) t.pieces_.push_back(std::move(*piece));
        line += static_cast<int>(std::ranges::count(body, '\n'));
        rest.remove_prefix(close + 2);
    }
    return t;
}

std::expected<std::string, std::string> Template::render(const Values& values) const
{
    std::string out;
    for (const auto& piece : pieces_) {
        switch (piece.type) {
        case Piece::Type::text: out += piece.text; break;
        case Piece::Type::name: out += values.name; break;
        case Piece::Type::display_name: out += values.display_name; break;
        case Piece::Type::namespace_: out += values.namespace_; break;
        case Piece::Type::mesh: out += values.mesh; break;
        case Piece::Type::zone: out += values.zone; break;
        case Piece::Type::label: {
            auto it = values.labels.find(piece.text);
            if (it == values.labels.end())
                return std::unexpected(exec_error(piece, "error calling label: label " + piece.text + " not found"));
            out += it->second;
            break;
        }
        case Piece::Type::unknown_field:
            return std::unexpected(exec_error(piece, "can't evaluate field " + piece.text + " in type " +
                                                         std::string(values_type)));
        }
    }
    return out;
}

}  // namespace conf
