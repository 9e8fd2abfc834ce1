// Whether a MES's TLS can be used with what is stored now: the condition mesctl shows and the
// reason the proxy refuses its connections, worked out on reading rather than kept, so that
// it can never lag behind a Secret that arrived or went.
#include "conf/conf.hpp"
#include "conf/detail/pem.hpp"

namespace conf {

std::optional<Condition> tls_condition(const MeshExternalService& mes, const SecretBytes& secret,
                                       std::chrono::system_clock::time_point now)
{
    if (!mes.tls || !mes.tls->enabled) return std::nullopt;
    const auto& tls = *mes.tls;
    Condition out;
    out.type = std::string(tls_condition_type);
    std::string reason;
    std::string message;
    auto problem = [&](std::string_view why, std::string text) {
        if (reason.empty()) reason = why;
        message += (message.empty() ? "" : "; ") + std::move(text);
    };
    // The bytes of one data source, or nullopt after reporting why there are none.
    auto bytes_of = [&](const std::optional<DataSource>& src, std::string_view field) -> std::optional<std::string> {
        if (!src) return std::nullopt;
        if (src->type != DataSource::Type::secret) return src->value;
        auto found = secret ? secret(src->value) : std::nullopt;
        if (!found) problem("SecretNotFound", std::string(field) + ": secret " + excerpt(src->value) + " not found");
        return found;
    };
    auto source_word = [](const std::optional<DataSource>& src) {
        return src->type == DataSource::Type::secret ? "secret " + excerpt(src->value) + ": " : std::string();
    };

    if (auto ca = bytes_of(tls.ca_cert, "caCert")) {
        if (auto err = detail::check_certificates(*ca, now).error)
            problem("InvalidCertificate", "caCert: " + source_word(tls.ca_cert) + *err);
    }
    auto cert = bytes_of(tls.client_cert, "clientCert");
    auto key = bytes_of(tls.client_key, "clientKey");
    bool pair_usable = cert && key;
    if (cert) {
        if (auto err = detail::check_certificates(*cert, now).error) {
            problem("InvalidCertificate", "clientCert: " + source_word(tls.client_cert) + *err);
            pair_usable = false;
        }
    }
    if (key) {
        if (auto err = detail::check_private_key(*key).error) {
            problem("InvalidPrivateKey", "clientKey: " + source_word(tls.client_key) + *err);
            pair_usable = false;
        }
    }
    if (pair_usable)
        if (auto mismatch = detail::check_key_pair(*cert, *key)) problem("KeyMismatch", "clientKey: " + *mismatch);

    if (reason.empty()) {
        out.status = "True";
        out.reason = "Ready";
    } else {
        out.status = "False";
        out.reason = std::move(reason);
        out.message = std::move(message);
    }
    return out;
}

}  // namespace conf
