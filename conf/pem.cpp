#include "conf/detail/pem.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <ctime>
#include <memory>

namespace conf::detail {

namespace {

struct BioFree { void operator()(BIO* b) const { BIO_free(b); } };
struct X509Free { void operator()(X509* x) const { X509_free(x); } };
struct PkeyFree { void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); } };
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

// The one place OpenSSL's error queue becomes text; clears the queue.
std::string from_ssl(std::string_view fallback)
{
    unsigned long code = ERR_peek_last_error();
    std::string text;
    if (code != 0) {
        const char* reason = ERR_reason_error_string(code);
        text = reason ? reason : "error " + std::to_string(code);
    } else {
        text = std::string(fallback);
    }
    ERR_clear_error();
    return text;
}

BioPtr memory_bio(std::string_view bytes)
{
    return BioPtr(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
}

std::string format_time(const ASN1_TIME* t)
{
    struct tm tm {};
    if (ASN1_TIME_to_tm(t, &tm) != 1) return "an unreadable date";
    char buf[64];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
    return buf;
}

bool looks_like_pem(std::string_view bytes) { return bytes.find("-----BEGIN ") != std::string_view::npos; }

}  // namespace

PemCheck check_certificates(std::string_view pem, std::chrono::system_clock::time_point now)
{
    PemCheck result;
    if (!looks_like_pem(pem)) {
        result.error = "not a PEM certificate (no \"-----BEGIN CERTIFICATE-----\" block)";
        return result;
    }
    auto bio = memory_bio(pem);
    std::time_t now_t = std::chrono::system_clock::to_time_t(now);
    int count = 0;
    while (true) {
        X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
        if (!cert) break;
        ++count;
        std::string which = count == 1 ? "certificate" : "certificate " + std::to_string(count);
        if (X509_cmp_time(X509_get0_notAfter(cert.get()), &now_t) < 0)
            result.warnings.push_back(which + " expired on " + format_time(X509_get0_notAfter(cert.get())));
        else if (X509_cmp_time(X509_get0_notBefore(cert.get()), &now_t) > 0)
            result.warnings.push_back(which + " is not valid before " +
                                      format_time(X509_get0_notBefore(cert.get())));
    }
    // Reading stops with "no start line" at the end of the data; anything else is damage.
    unsigned long code = ERR_peek_last_error();
    bool clean_end = code == 0 || (ERR_GET_LIB(code) == ERR_LIB_PEM &&
                                   ERR_GET_REASON(code) == PEM_R_NO_START_LINE);
    if (!clean_end || count == 0) {
        result.error = "not a valid PEM certificate: " + from_ssl("no certificate found");
        result.warnings.clear();
    }
    ERR_clear_error();
    return result;
}

PemCheck check_private_key(std::string_view pem)
{
    PemCheck result;
    if (pem.find("PRIVATE KEY-----") == std::string_view::npos) {
        result.error = "not a PEM private key (no \"-----BEGIN ... PRIVATE KEY-----\" block)";
        return result;
    }
    auto bio = memory_bio(pem);
    PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    if (!key) result.error = "not a valid PEM private key: " + from_ssl("unreadable key");
    ERR_clear_error();
    return result;
}

std::optional<std::string> check_key_pair(std::string_view cert_pem, std::string_view key_pem)
{
    auto cert_bio = memory_bio(cert_pem);
    auto key_bio = memory_bio(key_pem);
    X509Ptr cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
    PkeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
    std::optional<std::string> error;
    if (cert && key && X509_check_private_key(cert.get(), key.get()) != 1)
        error = "private key does not match the client certificate";
    ERR_clear_error();
    return error;
}

}  // namespace conf::detail
