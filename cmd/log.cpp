#include "cmd/log.hpp"

#include "conf/conf.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace cmd::log {

namespace {

Level threshold = Level::info;

std::string_view name(Level l)
{
    switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
    }
    return "?";
}

// Values carry names and messages from the input: control bytes (CR, ESC...) and bytes that
// are not UTF-8 are written escaped, so that no value can forge a log line or drive the
// terminal that shows it. Values with spaces, quotes, '=' or escapes are quoted (logfmt).
void append_value(std::string& out, std::string_view raw)
{
    std::string v = conf::escape_controls(raw);
    bool quote = v.empty() || v.size() != raw.size() || v.find_first_of(" \"=\\") != std::string::npos;
    if (!quote) {
        out += v;
        return;
    }
    // The value's own quotes and backslashes first, then the control bytes: their escapes'
    // backslashes are then the only single ones.
    std::string quoted;
    quoted.reserve(raw.size());
    for (char c : raw) {
        if (c == '"' || c == '\\') quoted += '\\';
        quoted += c;
    }
    out += '"';
    out += conf::escape_controls(quoted);
    out += '"';
}

}  // namespace

void set_level(Level level) { threshold = level; }
bool enabled(Level level) { return level >= threshold; }

bool parse_level(std::string_view text, Level& out)
{
    for (auto l : {Level::debug, Level::info, Level::warn, Level::error})
        if (text == name(l)) {
            out = l;
            return true;
        }
    return false;
}

void write(Level level, std::string_view subsystem, std::string_view message, std::initializer_list<Field> fields)
{
    write(level, subsystem, message, std::span<const Field>(fields.begin(), fields.size()));
}

void write(Level level, std::string_view subsystem, std::string_view message, std::span<const Field> fields)
{
    if (!enabled(level)) return;
    auto now = std::chrono::system_clock::now();
    auto t = std::chrono::system_clock::to_time_t(now);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    struct tm tm {};
    gmtime_r(&t, &tm);
    char stamp[96];
    std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
    std::string line = "time=";
    line += stamp;
    line += " level=";
    line += name(level);
    line += " sys=";
    line += subsystem;
    line += " msg=";
    append_value(line, message);
    for (const auto& [k, v] : fields) {
        line += ' ';
        line += k;
        line += '=';
        append_value(line, v);
    }
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
}

}  // namespace cmd::log
