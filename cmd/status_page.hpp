// The status page on the admin endpoint (GET /) and the JSON it is drawn from
// (GET /status.json).
//
// The daemon gathers what it serves into one JSON document (Daemon::status_json, shape
// below); the page is that document drawn as HTML, so that a script reading /status.json
// sees what a person sees. The page is one self-contained HTML document with inline CSS and
// no script: it reloads itself every status_refresh_seconds, and status_page_csp forbids
// every load from elsewhere (and every script). Everything drawn from the document is
// HTML-escaped: MES names, hostnames and failure reasons are user data.
//
// The document (keys absent when unknown):
//   {"node": {"ready": bool, "readiness": "ready", "workers": n, "generation": n,
//             "proxyMode": "bind", "meshes": ["default"]},
//    "cluster": {"node", "connected", "endpoint", "revision", "lastError"},   (cluster mode)
//    "counters": {"dnsQueries": n, "dnsAnswered": n, "dnsForwarded": n, "dnsServfail": n,
//                 "dnsDropped": n, "dnsUpstreamFailures": n, "proxyActive": n,
//                 "proxyConnections": n, "proxyRefused": n, "proxyFailed": n},
//    "mes": {"total": n, "page": n, "pages": n, "perPage": n,
//            "items": [{"mesh", "name", "vips": [..], "hostnames": [..], "port": n|null,
//                       "protocol", "conditions", "live": bool, "listeners": [..],
//                       "listenError", "tlsError", "active": n, "total": n,
//                       "endpoints": [{"address", "priority", "health",
//                                      "consecutiveFailures", "lastFailure",
//                                      "lastFailureReason"}]}]}}
// "live": the proxy holds the MES (bind mode: every one; redirect mode: once a connection
// needed it); otherwise the endpoints are the configured ones with health "unknown".
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <optional>
#include <string>

namespace cmd {

constexpr std::size_t status_page_size = 100;  // MES per page: a store of 100,000 draws 100
constexpr int status_refresh_seconds = 5;
// No script, no frame, no form; styles only inline; images only inline data.
constexpr const char* status_page_csp =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'";

// The page of a listing of `total` that `requested` (the query's `page`, 1-based) asks for:
// 1 when absent or not a number, the last when past it.
std::size_t status_page_number(const std::optional<std::string>& requested, std::size_t total);

// The HTML page drawing `status` (the document above). Keys it lacks are left out.
std::string status_html(const nlohmann::ordered_json& status);

}  // namespace cmd
