// mesctl's view of a running mesd: GET /config from its admin endpoint, and the part of it
// that concerns one MES (listeners, connections, each endpoint's health and, when the
// daemon reports them, its last failure and its addresses), as lines for `mesctl inspect`.
// Keys the JSON lacks are left out of the lines, so that an older or newer daemon is read
// as far as it goes.
#pragma once

#include "cmd/output.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstddef>
#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cmd {

// A blocking HTTP/1.1 GET of `path` from HOST:PORT ("127.0.0.1:9901", "[::1]:9901",
// "localhost:9901"): the body of a 200 reply, at most `max_body` bytes. The error reads
// "connection refused", "timed out after 3s", "HTTP 404", ...
std::expected<std::string, std::string> http_get(const std::string& host_port, const std::string& path,
                                                 std::chrono::milliseconds timeout = std::chrono::seconds(3),
                                                 std::size_t max_body = std::size_t{128} << 20);

// The lines `inspect` prints for MES `mesh`/`name` from the body of /config (each already
// indented to follow print_inspection's), or why it cannot: not JSON, nested too deeply
// (more than 64 levels), not the shape /config has. An empty vector: the daemon does not
// hold that MES (redirect mode holds one only once it has carried a connection).
std::expected<std::vector<std::string>, std::string> live_lines(std::string_view config_json, const std::string& mesh,
                                                                const std::string& name);

// One page of the MES in /status.json (status_page.hpp): the items as the daemon wrote them
// and where the listing stands. The error says why the body is not such a page.
struct LiveMesPage {
    std::size_t total = 0;
    std::size_t page = 1;
    std::size_t pages = 1;
    std::vector<nlohmann::ordered_json> items;
};
std::expected<LiveMesPage, std::string> live_mes_page(std::string_view status_json);

// `mesctl get mes --admin`'s table: the store's columns, endpoints with their health, and
// connections open and carried.
std::vector<std::string> live_mes_header();
std::vector<std::string> live_mes_row(const nlohmann::ordered_json& item);
// An item as mesctl's output tree (-o json, -o yaml), keys in the daemon's order.
Value live_value(const nlohmann::ordered_json& item);

}  // namespace cmd
