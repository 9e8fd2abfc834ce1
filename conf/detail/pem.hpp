// PEM checks for certificates and keys given inline or through Secrets, so that a bad
// certificate is a warning naming the field (and a TLSReady condition) rather than a runtime
// surprise. Not an error: Kuma does not read the PEM when it validates a MES.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace conf::detail {

struct PemCheck {
    std::optional<std::string> error;   // the bytes are unusable for their role
    std::vector<std::string> warnings;  // usable, but worth telling (expired, not yet valid)
};

// One or more PEM certificates (a CA bundle or a client chain).
PemCheck check_certificates(std::string_view pem, std::chrono::system_clock::time_point now);
// One PEM private key.
PemCheck check_private_key(std::string_view pem);
// Whether the first certificate of `cert_pem` belongs to `key_pem`; both already checked.
std::optional<std::string> check_key_pair(std::string_view cert_pem, std::string_view key_pem);

}  // namespace conf::detail
