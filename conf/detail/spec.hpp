// Decoding and validation of each kind's `spec` (and a Secret's `data`).
#pragma once

#include "conf/detail/reader.hpp"

#include <chrono>

namespace conf::detail {

// A `secret:` data source, checked once the whole input (and the store) is known.
struct SecretRef {
    std::string name;
    std::string path;
    Mark mark;
    enum class Role { ca_cert, client_cert, client_key } role;
    bool tls_enabled = false;  // whether the MES reads it (tls.enabled)
};

void decode_mes(Reporter& r, const YAML::Node& spec, MeshExternalService& out,
                std::vector<SecretRef>& secret_refs, std::chrono::system_clock::time_point now);
void decode_hostname_generator(Reporter& r, const YAML::Node& spec, HostnameGenerator& out);

// Checks bytes meant for `role` (PEM certificate or key); reports at `path`, as warnings: a
// PEM that does not parse is not a validation error (Kuma accepts it), it makes the MES's
// TLS unusable.
void check_pem_role(Reporter& r, const Mark& at, const std::string& path, std::string_view bytes,
                    SecretRef::Role role, bool tls_enabled, std::chrono::system_clock::time_point now);
// "; TLS connections ... refused until this is fixed" when the MES uses its TLS, else "".
std::string_view refused_until(bool tls_enabled);

}  // namespace conf::detail
