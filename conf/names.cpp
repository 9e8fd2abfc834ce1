#include "conf/conf.hpp"

#include <arpa/inet.h>

#include <algorithm>

namespace conf {

const std::string_view rfc1035_label_message =
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
    "an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

const std::string_view rfc1123_subdomain_message =
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

namespace {

bool is_lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// One label of a lowercase RFC 1123 name: [a-z0-9]([-a-z0-9]*[a-z0-9])?
bool is_rfc1123_label(std::string_view s)
{
    if (s.empty() || s.size() > 63) return false;
    if (!is_lower_alnum(s.front()) || !is_lower_alnum(s.back())) return false;
    for (char c : s)
        if (!is_lower_alnum(c) && c != '-') return false;
    return true;
}

}  // namespace

std::vector<std::string> dns1123_subdomain_violations(std::string_view s)
{
    // Kubernetes' IsDNS1123Subdomain: the length, then the pattern (which bounds no label).
    std::vector<std::string> out;
    if (s.size() > 253) out.emplace_back("must be no more than 253 characters");
    bool matches = !s.empty();
    bool long_label = false;
    for (std::string_view rest = s; matches;) {
        auto dot = rest.find('.');
        auto label = rest.substr(0, dot);
        matches = !label.empty() && is_lower_alnum(label.front()) && is_lower_alnum(label.back()) &&
                  std::ranges::all_of(label, [](char c) { return is_lower_alnum(c) || c == '-'; });
        long_label = long_label || label.size() > 63;
        if (dot == std::string_view::npos) break;
        rest.remove_prefix(dot + 1);
    }
    if (!matches) out.emplace_back(rfc1123_subdomain_message);
    // Not Kubernetes' to check, but a DNS label holds at most 63 bytes (RFC 1035 section
    // 2.3.4): such a name could never be answered.
    else if (long_label) out.emplace_back("each label must be no more than 63 characters");
    return out;
}

std::string join_violations(const std::vector<std::string>& violations)
{
    std::string out;
    for (const auto& v : violations) out += (out.empty() ? "" : ", ") + v;
    return out;
}

bool is_rfc1035_label(std::string_view s)
{
    if (s.empty() || s.size() > 63) return false;
    if (!(s.front() >= 'a' && s.front() <= 'z')) return false;
    return is_rfc1123_label(s);
}

bool is_rfc1123_subdomain(std::string_view s)
{
    if (s.empty() || s.size() > 253) return false;
    while (true) {
        auto dot = s.find('.');
        if (!is_rfc1123_label(s.substr(0, dot))) return false;
        if (dot == std::string_view::npos) return true;
        s.remove_prefix(dot + 1);
    }
}

bool is_dns_name(std::string_view s)
{
    if (!s.empty() && s.back() == '.') s.remove_suffix(1);
    if (s.empty() || s.size() > 253) return false;
    // A name made only of digits and dots is a malformed IP address, not a host name.
    bool only_digits_and_dots = true;
    while (true) {
        auto dot = s.find('.');
        auto label = s.substr(0, dot);
        if (label.empty() || label.size() > 63) return false;
        if (label.front() == '-' || label.back() == '-') return false;
        for (char c : label) {
            if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '_') return false;
            if (!is_digit(c)) only_digits_and_dots = false;
        }
        if (dot == std::string_view::npos) break;
        s.remove_prefix(dot + 1);
    }
    return !only_digits_and_dots;
}

std::optional<AddressKind> ip_literal_kind(std::string_view s)
{
    if (s.size() >= INET6_ADDRSTRLEN) return std::nullopt;
    std::string text(s);
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, text.c_str(), buf) == 1) return AddressKind::ipv4;
    if (inet_pton(AF_INET6, text.c_str(), buf) == 1) return AddressKind::ipv6;
    return std::nullopt;
}

}  // namespace conf
