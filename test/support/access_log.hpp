// Reading mesd's access log back in tests: a logfmt line or a JSON line as key to value, and
// an echo backend for the proxy to carry connections to.
#pragma once

#include "test/support/net.hpp"
#include "test/support/process.hpp"

#include <cctype>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace test_support {

using Fields = std::map<std::string, std::string>;

// A logfmt line (key=value, values quoted with \" and \\ inside quotes); nothing when it is
// not one.
inline std::optional<Fields> parse_logfmt(const std::string& line)
{
    Fields out;
    std::size_t i = 0, n = line.size();
    while (i < n) {
        std::size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq == i) return std::nullopt;
        std::string key = line.substr(i, eq - i);
        for (char c : key)
            if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return std::nullopt;
        i = eq + 1;
        std::string value;
        if (i < n && line[i] == '"') {
            ++i;
            bool closed = false;
            while (i < n) {
                char c = line[i++];
                if (c == '\\' && i < n) {
                    value += line[i++];
                } else if (c == '"') {
                    closed = true;
                    break;
                } else {
                    value += c;
                }
            }
            if (!closed) return std::nullopt;
        } else {
            while (i < n && line[i] != ' ') value += line[i++];
        }
        if (out.count(key)) return std::nullopt;
        out[key] = value;
        if (i < n) {
            if (line[i] != ' ') return std::nullopt;
            ++i;
        }
    }
    return out;
}

// A flat JSON object of strings, integers and booleans (what the access log writes), values as
// text; nothing when the line is not valid JSON of that shape.
inline std::optional<Fields> parse_json_line(const std::string& line)
{
    Fields out;
    std::size_t i = 0, n = line.size();
    auto ws = [&] {
        while (i < n && (line[i] == ' ' || line[i] == '\t')) ++i;
    };
    auto string = [&](std::string& s) {
        if (i >= n || line[i] != '"') return false;
        ++i;
        while (i < n && line[i] != '"') {
            auto c = static_cast<unsigned char>(line[i]);
            if (c < 0x20) return false;
            if (c == '\\') {
                if (++i >= n) return false;
                char e = line[i++];
                if (e == 'u') {
                    if (i + 4 > n) return false;
                    auto v = std::stoul(line.substr(i, 4), nullptr, 16);
                    i += 4;
                    if (v >= 0x80) return false;  // not written by mesd
                    s += static_cast<char>(v);
                } else if (e == '"' || e == '\\' || e == '/') {
                    s += e;
                } else if (e == 'n') {
                    s += '\n';
                } else if (e == 't') {
                    s += '\t';
                } else if (e == 'r') {
                    s += '\r';
                } else {
                    return false;
                }
                continue;
            }
            s += line[i++];
        }
        if (i >= n) return false;
        ++i;
        return true;
    };
    ws();
    if (i >= n || line[i++] != '{') return std::nullopt;
    ws();
    if (i < n && line[i] == '}') {
        ++i;
    } else {
        while (true) {
            ws();
            std::string key, value;
            if (!string(key)) return std::nullopt;
            ws();
            if (i >= n || line[i++] != ':') return std::nullopt;
            ws();
            if (i < n && line[i] == '"') {
                if (!string(value)) return std::nullopt;
            } else if (line.compare(i, 4, "true") == 0 || line.compare(i, 5, "false") == 0) {
                value = line[i] == 't' ? "true" : "false";
                i += value.size();
            } else {
                std::size_t start = i;
                if (i < n && line[i] == '-') ++i;
                while (i < n && std::isdigit(static_cast<unsigned char>(line[i]))) ++i;
                if (i == start) return std::nullopt;
                value = line.substr(start, i - start);
            }
            if (out.count(key)) return std::nullopt;
            out[key] = value;
            ws();
            if (i < n && line[i] == ',') {
                ++i;
                continue;
            }
            if (i < n && line[i] == '}') {
                ++i;
                break;
            }
            return std::nullopt;
        }
    }
    ws();
    if (i != n) return std::nullopt;
    return out;
}

// The lines of a file (without their newlines); a last line without one is left out, as a
// line still being written.
inline std::vector<std::string> whole_lines(const std::string& text)
{
    std::vector<std::string> out;
    std::size_t at = 0;
    while (true) {
        auto nl = text.find('\n', at);
        if (nl == std::string::npos) break;
        out.push_back(text.substr(at, nl - at));
        at = nl + 1;
    }
    return out;
}

// socat echoing what each connection sends, on 127.0.0.1:port.
struct EchoBackend {
    int port = free_tcp_port();
    std::unique_ptr<Child> child;
    EchoBackend()
    {
        child = std::make_unique<Child>(std::vector<std::string>{"/usr/bin/socat", "TCP-LISTEN:" + std::to_string(port) +
                                                                                       ",bind=127.0.0.1,fork,reuseaddr,backlog=512",
                                                                 "PIPE"});
        if (!eventually([&] { return accepting("127.0.0.1", port); })) throw std::runtime_error("socat did not listen");
    }
};

}  // namespace test_support
