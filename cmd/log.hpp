// Structured logs: one line per event, `time level subsystem message key=value...`, on stderr.
// The subsystem is a short tag ("daemon", "dns", "store", "admin", "confd").
#pragma once

#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace cmd::log {

enum class Level { debug, info, warn, error };

void set_level(Level level);
bool enabled(Level level);
// Parses "debug", "info", "warn", "error".
bool parse_level(std::string_view text, Level& out);

using Field = std::pair<std::string_view, std::string>;
void write(Level level, std::string_view subsystem, std::string_view message, std::initializer_list<Field> fields = {});
void write(Level level, std::string_view subsystem, std::string_view message, std::span<const Field> fields);

inline void debug(std::string_view sys, std::string_view msg, std::initializer_list<Field> f = {}) { if (enabled(Level::debug)) write(Level::debug, sys, msg, f); }
inline void info(std::string_view sys, std::string_view msg, std::initializer_list<Field> f = {}) { write(Level::info, sys, msg, f); }
inline void warn(std::string_view sys, std::string_view msg, std::initializer_list<Field> f = {}) { write(Level::warn, sys, msg, f); }
inline void error(std::string_view sys, std::string_view msg, std::initializer_list<Field> f = {}) { write(Level::error, sys, msg, f); }

}  // namespace cmd::log
