// TLS origination for one MES: an OpenSSL client context built from the MES's `tls` block
// (trust, client certificate, version bounds, ALPN, renegotiation), the checks of its
// verification mode, and the sessions kept per endpoint for resumption. The bytes move
// through memory BIOs, driven by the proxy's libuv streams; nothing here blocks.
//
// Modes (DESIGN.md): Secured checks the chain and the names; SkipSAN the chain only; SkipCA
// the names only, whatever signed the certificate; SkipAll neither. Names: the certificate
// must match the SNI (else the endpoint's address) or one of `subjectAltNames` (Exact or
// Prefix, against DNS, IP and URI SANs). An Exact entry matches a wildcard DNS SAN the way
// Envoy's DNS SAN matcher does (`*.example.com` matches `api.example.com`, not
// `example.com` nor `a.b.example.com`); Prefix compares the SAN's text as it is written.
#pragma once

#include "conf/conf.hpp"

#include <openssl/ssl.h>

#include <expected>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace proxy::detail {

struct TlsMaterial {
    std::string ca_pem;    // empty: the system's trust store
    std::string cert_pem;  // client certificate (chain), with key_pem
    std::string key_pem;
    bool operator==(const TlsMaterial&) const = default;
};

// `name` (from the configuration) against one DNS SAN of a certificate: equal ignoring case
// and a final dot, or `san` is `*.` + the rest of `name` after its first label (RFC 6125
// 6.4.3: the wildcard is the whole left-most label and stands for exactly one label).
bool dns_san_matches(std::string_view name, std::string_view san);

class TlsContext {
public:
    static std::expected<std::shared_ptr<TlsContext>, std::string> make(const conf::Tls& tls, conf::Protocol protocol,
                                                                       const TlsMaterial& material);
    ~TlsContext();
    TlsContext(const TlsContext&) = delete;
    TlsContext& operator=(const TlsContext&) = delete;

    // A client session for one connection to `endpoint` (its address as configured, for
    // the name check when there is no SNI); `session_key` names the endpoint for resumption.
    SSL* start(const std::string& endpoint, bool endpoint_is_ip, const std::string& session_key);
    // After the handshake: "" when the peer passes this mode's name checks, else why not.
    std::string check_names(SSL* ssl, const std::string& endpoint, bool endpoint_is_ip) const;
    // Why a handshake failed, in OpenSSL's words ("certificate verify failed: unable to get
    // local issuer certificate").
    static std::string failure_reason(SSL* ssl, int ssl_error);

    const conf::Tls& settings() const { return tls_; }

private:
    TlsContext() = default;
    static int on_new_session(SSL* ssl, SSL_SESSION* session);

    SSL_CTX* ctx_ = nullptr;
    conf::Tls tls_;
    // By endpoint, for resumption. The context is shared by every loop's connections
    // (OpenSSL's SSL_CTX may be); the map is under the mutex, which also covers handing a
    // session to a new connection (SSL_set_session takes its reference then, before
    // another loop may replace and free the one held here).
    std::mutex sessions_mutex_;
    std::map<std::string, SSL_SESSION*> sessions_;
};

}  // namespace proxy::detail
