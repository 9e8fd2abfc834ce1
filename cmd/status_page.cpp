#include "cmd/status_page.hpp"
#include "cmd/admin.hpp"

#include <charconv>

namespace cmd {

namespace {

using json = nlohmann::ordered_json;

// A scalar as text (strings as they are, numbers as JSON writes them), escaped for HTML.
std::string text(const json& j, const char* key, const std::string& otherwise = "")
{
    if (!j.is_object()) return html_escape(otherwise);
    auto it = j.find(key);
    if (it == j.end() || it->is_null() || it->is_object() || it->is_array()) return html_escape(otherwise);
    if (it->is_string()) return html_escape(it->get<std::string>());
    return html_escape(it->dump());
}

std::uint64_t number(const json& j, const char* key)
{
    if (!j.is_object()) return 0;
    auto it = j.find(key);
    return it != j.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

// The strings of list `key`, escaped, one element each.
std::string list(const json& j, const char* key, const char* element, const std::string& none)
{
    std::string out;
    if (j.is_object())
        if (auto it = j.find(key); it != j.end() && it->is_array())
            for (const auto& v : *it)
                if (v.is_string())
                    out += std::string("<") + element + ">" + html_escape(v.get<std::string>()) + "</" + element + ">";
    return out.empty() ? "<span class=\"none\">" + html_escape(none) + "</span>" : out;
}

// Health words the stylesheet colours; anything else is drawn plain.
std::string health_class(const std::string& health)
{
    for (const char* known : {"healthy", "failing", "ejected", "unhealthy", "unresolved", "unknown"})
        if (health == known) return known;
    return "other";
}

constexpr const char* style = R"(
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:12px 20px;display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:20px;margin:0}
main{padding:12px 20px}
h2{font-size:16px;margin:18px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #d9dde5;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eceff4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ready{font-weight:bold;padding:2px 8px;border-radius:4px}
.ready.ok{background:#2e7d32}.ready.bad{background:#c62828}
.none,.note{color:#6b7280}
ul{margin:0;padding-left:16px}
.healthy{color:#2e7d32}.failing,.unresolved{color:#b26a00}.ejected,.unhealthy{color:#c62828;font-weight:bold}
.unknown{color:#6b7280}
.failure{color:#c62828;font-size:12px}
code{font-family:ui-monospace,monospace}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:0}
dt{color:#6b7280}dd{margin:0}
nav a{margin-right:12px}
)";

}  // namespace

std::size_t status_page_number(const std::optional<std::string>& requested, std::size_t total)
{
    std::size_t pages = total == 0 ? 1 : (total + status_page_size - 1) / status_page_size;
    std::size_t page = 1;
    if (requested) {
        std::size_t n = 0;
        auto [end, ec] = std::from_chars(requested->data(), requested->data() + requested->size(), n);
        if (ec == std::errc{} && end == requested->data() + requested->size() && n >= 1) page = n;
    }
    return std::min(page, pages);
}

std::string status_html(const json& status)
{
    const json empty = json::object();
    const json& node = status.contains("node") ? status["node"] : empty;
    const json& counters = status.contains("counters") ? status["counters"] : empty;
    const json& mes = status.contains("mes") ? status["mes"] : empty;
    bool ready = node.is_object() && node.value("ready", false);

    std::string out;
    out.reserve(64 * 1024);
    out += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
    out += "<meta http-equiv=\"refresh\" content=\"" + std::to_string(status_refresh_seconds) + "\">\n";
    out += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
    out += "<title>mesd status</title>\n<style>";
    out += style;
    out += "</style></head>\n<body>\n<header><h1>mesd</h1>";
    out += std::string("<span id=\"ready\" class=\"ready ") + (ready ? "ok" : "bad") + "\">" +
           text(node, "readiness", ready ? "ready" : "not ready") + "</span>";
    out += "<span>generation " + text(node, "generation", "?") + "</span>";
    out += "<span>workers " + text(node, "workers", "?") + "</span>";
    out += "<span>proxy " + text(node, "proxyMode", "off") + "</span>";
    out += "<span>meshes " + list(node, "meshes", "code", "none") + "</span>";
    out += "</header>\n<main>\n";

    if (status.contains("cluster") && status["cluster"].is_object()) {
        const json& c = status["cluster"];
        out += "<section id=\"cluster\"><h2>Cluster</h2><dl>";
        out += "<dt>node</dt><dd>" + text(c, "node") + "</dd>";
        out += std::string("<dt>etcd</dt><dd>") + (c.value("connected", false) ? "connected" : "not connected") +
               (c.contains("endpoint") ? " to <code>" + text(c, "endpoint") + "</code>" : "") + "</dd>";
        out += "<dt>revision</dt><dd>" + text(c, "revision") + "</dd>";
        if (c.contains("lastError")) out += "<dt>last error</dt><dd class=\"failure\">" + text(c, "lastError") + "</dd>";
        out += "</dl></section>\n";
    }

    out += "<section id=\"counters\"><h2>Counters</h2><table><tr>";
    static const std::pair<const char*, const char*> shown[] = {
        {"dnsQueries", "DNS queries"},          {"dnsAnswered", "answered"},         {"dnsForwarded", "forwarded"},
        {"dnsServfail", "SERVFAIL"},            {"dnsDropped", "dropped"},           {"dnsUpstreamFailures", "upstream failures"},
        {"proxyActive", "proxy connections open"}, {"proxyConnections", "proxy connections"}, {"proxyRefused", "refused"},
        {"proxyFailed", "failed"}};
    std::string values;
    for (const auto& [key, label] : shown) {
        if (!counters.is_object() || !counters.contains(key)) continue;
        out += std::string("<th>") + label + "</th>";
        values += std::string("<td class=\"num\" id=\"") + key + "\">" + text(counters, key) + "</td>";
    }
    out += "</tr><tr>" + values + "</tr></table></section>\n";

    std::uint64_t total = number(mes, "total"), page = number(mes, "page"), pages = number(mes, "pages"),
                  per_page = number(mes, "perPage");
    out += "<section id=\"mes\"><h2>MeshExternalServices (" + std::to_string(total) + ")</h2>\n";
    const json* items = mes.is_object() && mes.contains("items") && mes["items"].is_array() ? &mes["items"] : nullptr;
    if (!items || items->empty()) {
        out += "<p class=\"note\" id=\"no-mes\">No MeshExternalService in the served meshes.</p>\n";
    } else {
        if (pages > 1) {
            std::uint64_t first = (page - 1) * per_page + 1;
            out += "<nav class=\"note\" id=\"pages\">Showing " + std::to_string(first) + "&ndash;" +
                   std::to_string(first + items->size() - 1) + " of " + std::to_string(total) + " (page " +
                   std::to_string(page) + " of " + std::to_string(pages) + "). ";
            if (page > 1) out += "<a href=\"/?page=" + std::to_string(page - 1) + "\">previous</a>";
            if (page < pages) out += "<a href=\"/?page=" + std::to_string(page + 1) + "\">next</a>";
            out += "</nav>\n";
        }
        out += "<table><thead><tr><th>Mesh</th><th>Name</th><th>VIPs</th><th>Hostnames</th><th>Port</th>"
               "<th>Endpoints</th><th>Connections</th><th>Status</th></tr></thead><tbody>\n";
        for (const auto& m : *items) {
            out += "<tr class=\"mes\"><td>" + text(m, "mesh") + "</td><td class=\"name\">" + text(m, "name") + "</td>";
            out += "<td class=\"vips\">" + list(m, "vips", "div", "none") + "</td>";
            out += "<td class=\"hostnames\">" + list(m, "hostnames", "div", "none") + "</td>";
            out += "<td>" + text(m, "port", "any") + " " + text(m, "protocol") + "</td><td><ul>";
            if (m.contains("endpoints") && m["endpoints"].is_array()) {
                for (const auto& e : m["endpoints"]) {
                    std::string health = e.is_object() && e.contains("health") && e["health"].is_string()
                                             ? e["health"].get<std::string>()
                                             : "unknown";
                    out += "<li><code>" + text(e, "address") + "</code>";
                    if (number(e, "priority")) out += " (p" + text(e, "priority") + ")";
                    out += " <span class=\"" + health_class(health) + "\">" + html_escape(health) + "</span>";
                    if (number(e, "consecutiveFailures"))
                        out += " <span class=\"note\">" + text(e, "consecutiveFailures") + " failures in a row</span>";
                    if (e.contains("lastFailure") || e.contains("lastFailureReason"))
                        out += "<div class=\"failure\">last failure " + text(e, "lastFailure") + ": " +
                               text(e, "lastFailureReason") + "</div>";
                    out += "</li>";
                }
            }
            out += "</ul></td><td class=\"num\">";
            if (m.value("live", false)) out += text(m, "active") + " open / " + text(m, "total");
            else out += "<span class=\"none\">not held by the proxy</span>";
            out += "</td><td>" + text(m, "conditions");
            if (m.contains("listenError")) out += "<div class=\"failure\">not listening: " + text(m, "listenError") + "</div>";
            if (m.contains("tlsError")) out += "<div class=\"failure\">TLS: " + text(m, "tlsError") + "</div>";
            out += "</td></tr>\n";
        }
        out += "</tbody></table>\n";
    }
    out += "</section>\n</main>\n<footer class=\"note\" style=\"padding:8px 20px\">Refreshes every " +
           std::to_string(status_refresh_seconds) +
           " s. The same as JSON: <a href=\"/status.json\">/status.json</a>; also <a href=\"/metrics\">/metrics</a>, "
           "<a href=\"/ready\">/ready</a>, <a href=\"/config\">/config</a>.</footer>\n</body></html>\n";
    return out;
}

}  // namespace cmd
