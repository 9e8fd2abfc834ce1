#include "proxy/detail/tls.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>

#include <algorithm>

namespace proxy::detail {

namespace {

int protocol_version(conf::TlsVersion v)
{
    switch (v) {
    case conf::TlsVersion::tls10: return TLS1_VERSION;
    case conf::TlsVersion::tls11: return TLS1_1_VERSION;
    case conf::TlsVersion::tls12: return TLS1_2_VERSION;
    case conf::TlsVersion::tls13: return TLS1_3_VERSION;
    case conf::TlsVersion::tls_auto: return 0;
    }
    return 0;
}

std::string openssl_error(std::string_view what)
{
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e == 0) return std::string(what);
    const char* reason = ERR_reason_error_string(e);
    return std::string(what) + ": " + (reason ? reason : "unknown error");
}

struct BioFree {
    void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;

BioPtr memory(const std::string& pem) { return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()))); }

// The session key of an SSL, freed with it.
int session_key_index()
{
    static int index = SSL_get_ex_new_index(
        0, nullptr, nullptr, nullptr,
        [](void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<std::string*>(ptr); });
    return index;
}

// SkipCA and SkipAll: any chain is accepted (the names are checked after the handshake).
int accept_any_chain(int, X509_STORE_CTX*) { return 1; }

std::string ip_text(const ASN1_OCTET_STRING* ip)
{
    char text[INET6_ADDRSTRLEN] = "";
    int len = ASN1_STRING_length(ip);
    const unsigned char* data = ASN1_STRING_get0_data(ip);
    if (len == 4) inet_ntop(AF_INET, data, text, sizeof text);
    else if (len == 16) inet_ntop(AF_INET6, data, text, sizeof text);
    return text;
}

std::string lower(std::string s)
{
    for (auto& c : s)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return s;
}

}  // namespace

bool dns_san_matches(std::string_view name, std::string_view san)
{
    std::string n = lower(std::string(name)), p = lower(std::string(san));
    if (n.ends_with('.')) n.pop_back();  // an absolute name is the same name
    if (p.ends_with('.')) p.pop_back();
    if (n.empty() || p.empty()) return false;
    if (n == p) return true;
    // RFC 6125 6.4.3: `*` only as the whole left-most label, standing for exactly one
    // non-empty label; never for a name with fewer labels than the pattern.
    if (!p.starts_with("*.") || p.size() < 3) return false;
    std::string_view suffix = std::string_view(p).substr(1);  // ".example.com"
    if (suffix.find('*') != std::string_view::npos) return false;
    if (n.size() <= suffix.size() || !std::string_view(n).ends_with(suffix)) return false;
    std::string_view first = std::string_view(n).substr(0, n.size() - suffix.size());
    return first.find('.') == std::string_view::npos;
}

std::expected<std::shared_ptr<TlsContext>, std::string> TlsContext::make(const conf::Tls& tls, conf::Protocol protocol,
                                                                        const TlsMaterial& material)
{
    std::shared_ptr<TlsContext> c(new TlsContext);
    c->tls_ = tls;
    c->ctx_ = SSL_CTX_new(TLS_client_method());
    if (!c->ctx_) return std::unexpected(openssl_error("cannot create a TLS context"));
    SSL_CTX* ctx = c->ctx_;
    SSL_CTX_set_app_data(ctx, c.get());

    int min = protocol_version(tls.min), max = protocol_version(tls.max);
    // Debian's OpenSSL refuses TLS 1.0 and 1.1 at its default security level; asking for
    // them by name means wanting them.
    if ((min && min < TLS1_2_VERSION) || (max && max < TLS1_2_VERSION)) SSL_CTX_set_security_level(ctx, 0);
    if (min && !SSL_CTX_set_min_proto_version(ctx, min)) return std::unexpected(openssl_error("tls.version.min"));
    if (max && !SSL_CTX_set_max_proto_version(ctx, max)) return std::unexpected(openssl_error("tls.version.max"));
    if (!tls.allow_renegotiation) SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);

    if (!material.ca_pem.empty()) {
        X509_STORE* store = SSL_CTX_get_cert_store(ctx);
        auto bio = memory(material.ca_pem);
        int added = 0;
        while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
            if (X509_STORE_add_cert(store, cert) == 1) ++added;
            X509_free(cert);
        }
        ERR_clear_error();  // the read that ends the loop leaves "no start line"
        if (added == 0) return std::unexpected("caCert: no certificate in it");
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        return std::unexpected(openssl_error("cannot load the system's trust store"));
    }
    bool check_chain = tls.mode == conf::VerificationMode::secured || tls.mode == conf::VerificationMode::skip_san;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, check_chain ? nullptr : accept_any_chain);

    if (!material.cert_pem.empty()) {
        auto bio = memory(material.cert_pem);
        X509* leaf = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
        if (!leaf || SSL_CTX_use_certificate(ctx, leaf) != 1) {
            X509_free(leaf);
            return std::unexpected(openssl_error("clientCert"));
        }
        X509_free(leaf);
        while (X509* extra = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr))
            if (SSL_CTX_add_extra_chain_cert(ctx, extra) != 1) X509_free(extra);
        ERR_clear_error();
        auto key_bio = memory(material.key_pem);
        EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr);
        if (!key || SSL_CTX_use_PrivateKey(ctx, key) != 1) {
            EVP_PKEY_free(key);
            return std::unexpected(openssl_error("clientKey"));
        }
        EVP_PKEY_free(key);
        if (SSL_CTX_check_private_key(ctx) != 1) return std::unexpected(openssl_error("clientKey does not match clientCert"));
    }

    static constexpr unsigned char h2[] = {2, 'h', '2'};
    static constexpr unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    if (protocol == conf::Protocol::http2 || protocol == conf::Protocol::grpc) SSL_CTX_set_alpn_protos(ctx, h2, sizeof h2);
    else if (protocol == conf::Protocol::http) SSL_CTX_set_alpn_protos(ctx, http11, sizeof http11);

    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    return c;
}

TlsContext::~TlsContext()
{
    for (auto& [key, session] : sessions_) SSL_SESSION_free(session);
    SSL_CTX_free(ctx_);
}

int TlsContext::on_new_session(SSL* ssl, SSL_SESSION* session)
{
    auto* self = static_cast<TlsContext*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
    auto* key = static_cast<std::string*>(SSL_get_ex_data(ssl, session_key_index()));
    if (!self || !key) return 0;
    std::lock_guard lock(self->sessions_mutex_);
    auto& slot = self->sessions_[*key];
    if (slot) SSL_SESSION_free(slot);
    slot = session;
    return 1;  // the reference is ours now
}

SSL* TlsContext::start(const std::string& endpoint, bool endpoint_is_ip, const std::string& session_key)
{
    SSL* ssl = SSL_new(ctx_);
    if (!ssl) return nullptr;
    // SNI: serverName, else the endpoint's hostname; none for an IP (RFC 6066 forbids it).
    std::string sni = !tls_.server_name.empty() ? tls_.server_name : (endpoint_is_ip ? std::string() : endpoint);
    if (!sni.empty()) SSL_set_tlsext_host_name(ssl, sni.c_str());
    SSL_set_ex_data(ssl, session_key_index(), new std::string(session_key));
    {
        std::lock_guard lock(sessions_mutex_);
        if (auto it = sessions_.find(session_key); it != sessions_.end()) SSL_set_session(ssl, it->second);
    }
    SSL_set_bio(ssl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
    SSL_set_connect_state(ssl);
    return ssl;
}

std::string TlsContext::check_names(SSL* ssl, const std::string& endpoint, bool endpoint_is_ip) const
{
    if (tls_.mode == conf::VerificationMode::skip_san || tls_.mode == conf::VerificationMode::skip_all) return {};
    X509* cert = SSL_get0_peer_certificate(ssl);
    if (!cert) return "the server sent no certificate";
    std::string expected = !tls_.server_name.empty() ? tls_.server_name : endpoint;
    bool is_ip = tls_.server_name.empty() && endpoint_is_ip;
    // Names are SANs only: OpenSSL would otherwise take the subject's CN when the
    // certificate has no DNS SAN, which Envoy's SAN matchers (hence Kuma) never do, so a
    // certificate naming the host only in its CN (beside a URI SAN, say) would pass here alone.
    if (is_ip ? X509_check_ip_asc(cert, expected.c_str(), 0) == 1
              : X509_check_host(cert, expected.c_str(), expected.size(), X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, nullptr) == 1)
        return {};

    struct San {
        int type;
        std::string text;
    };
    std::vector<San> sans;
    auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
        const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
        if (n->type == GEN_DNS || n->type == GEN_URI) {
            const ASN1_IA5STRING* s = n->type == GEN_DNS ? n->d.dNSName : n->d.uniformResourceIdentifier;
            sans.push_back({n->type, std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                                 static_cast<std::size_t>(ASN1_STRING_length(s)))});
        } else if (n->type == GEN_IPADD) {
            sans.push_back({n->type, ip_text(n->d.iPAddress)});
        }
    }
    GENERAL_NAMES_free(names);
    for (const auto& want : tls_.subject_alt_names)
        for (const auto& have : sans) {
            // An Exact entry against a DNS SAN follows DNS matching, wildcards included (as
            // Envoy's SAN matcher does, which Kuma configures); Prefix compares the SAN's
            // text, so `*.example.com` is only matched by a prefix of those very characters.
            if (want.type == conf::SanMatch::exact && have.type == GEN_DNS) {
                if (dns_san_matches(want.value, have.text)) return {};
                continue;
            }
            bool dns_like = have.text.find("://") == std::string::npos;  // DNS names compare case-insensitively
            std::string a = dns_like ? lower(have.text) : have.text, b = dns_like ? lower(want.value) : want.value;
            if (want.type == conf::SanMatch::exact ? a == b : a.starts_with(b)) return {};
        }
    std::string listed;
    for (const auto& h : sans) listed += (listed.empty() ? "" : ", ") + h.text;
    return "certificate name mismatch: " + expected + " is not among [" + listed + "]" +
           (tls_.subject_alt_names.empty() ? "" : " and no subjectAltNames entry matches");
}

std::string TlsContext::failure_reason(SSL* ssl, int ssl_error)
{
    long verify = SSL_get_verify_result(ssl);
    unsigned long e = ERR_peek_error();
    if (verify != X509_V_OK && e != 0 && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        ERR_clear_error();
        return std::string("certificate verify failed: ") + X509_verify_cert_error_string(verify);
    }
    if (e != 0) {
        const char* reason = ERR_reason_error_string(e);
        ERR_clear_error();
        return reason ? reason : "TLS error";
    }
    if (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN) return "the server closed the connection during the handshake";
    return "TLS error " + std::to_string(ssl_error);
}

}  // namespace proxy::detail
