#include "cmd/log.hpp"

#include "conf/conf.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace cmd::log {

namespace {

// Atomic: SIGHUP changes it on the control loop while the workers log.
std::atomic<Level> threshold{Level::info};

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

}  // namespace

void set_level(Level level) { threshold.store(level, std::memory_order_relaxed); }
bool enabled(Level level) { return level >= threshold.load(std::memory_order_relaxed); }

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
    conf::append_logfmt_value(line, message);
    for (const auto& [k, v] : fields) {
        line += ' ';
        line += k;
        line += '=';
        conf::append_logfmt_value(line, v);
    }
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
}

}  // namespace cmd::log
