#include "test/support/certs.hpp"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <stdexcept>

namespace test_support {

namespace {

std::string bio_text(BIO* bio)
{
    char* data = nullptr;
    long len = BIO_get_mem_data(bio, &data);
    std::string out(data, static_cast<std::size_t>(len));
    BIO_free(bio);
    return out;
}

KeyPair to_pair(X509* cert, EVP_PKEY* key)
{
    KeyPair out;
    BIO* cb = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(cb, cert);
    out.cert_pem = bio_text(cb);
    BIO* kb = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(kb, key, nullptr, nullptr, 0, nullptr, nullptr);
    out.key_pem = bio_text(kb);
    return out;
}

void add_ext(X509* cert, X509* issuer, int nid, const std::string& value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    if (!ext) throw std::runtime_error("openssl: bad extension " + value);
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
}

long next_serial()
{
    static long serial = 1000;
    return ++serial;
}

}  // namespace

KeyPair make_ca(const std::string& common_name)
{
    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    X509* cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), next_serial());
    X509_gmtime_adj(X509_getm_notBefore(cert), -86400);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3650L * 86400);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    add_ext(cert, cert, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(cert, cert, NID_subject_key_identifier, "hash");
    X509_sign(cert, key, EVP_sha256());
    auto out = to_pair(cert, key);
    X509_free(cert);
    EVP_PKEY_free(key);
    return out;
}

namespace {

KeyPair make_leaf_for(const KeyPair& ca, const std::string& common_name, const std::vector<std::string>& sans,
                      long from_days, long to_days, const std::string& usage)
{
    BIO* cb = BIO_new_mem_buf(ca.cert_pem.data(), static_cast<int>(ca.cert_pem.size()));
    X509* ca_cert = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
    BIO_free(cb);
    BIO* kb = BIO_new_mem_buf(ca.key_pem.data(), static_cast<int>(ca.key_pem.size()));
    EVP_PKEY* ca_key = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
    BIO_free(kb);
    if (!ca_cert || !ca_key) throw std::runtime_error("openssl: bad CA");

    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    X509* cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), next_serial());
    X509_gmtime_adj(X509_getm_notBefore(cert), from_days * 86400);
    X509_gmtime_adj(X509_getm_notAfter(cert), to_days * 86400);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0);
    X509_set_issuer_name(cert, X509_get_subject_name(ca_cert));
    add_ext(cert, ca_cert, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(cert, ca_cert, NID_ext_key_usage, usage);
    add_ext(cert, ca_cert, NID_authority_key_identifier, "keyid");
    if (!sans.empty()) {
        std::string list;
        for (const auto& s : sans) list += (list.empty() ? "" : ",") + s;
        add_ext(cert, ca_cert, NID_subject_alt_name, list);
    }
    X509_sign(cert, ca_key, EVP_sha256());
    auto out = to_pair(cert, key);
    X509_free(cert);
    EVP_PKEY_free(key);
    X509_free(ca_cert);
    EVP_PKEY_free(ca_key);
    return out;
}

}  // namespace

KeyPair make_leaf(const KeyPair& ca, const std::string& common_name, const std::vector<std::string>& sans, long from_days,
                  long to_days, bool client)
{
    return make_leaf_for(ca, common_name, sans, from_days, to_days, client ? "clientAuth" : "serverAuth");
}

KeyPair make_server_and_client_leaf(const KeyPair& ca, const std::string& common_name, const std::vector<std::string>& sans)
{
    return make_leaf_for(ca, common_name, sans, -1, 365, "serverAuth,clientAuth");
}

KeyPair make_self_signed(const std::string& common_name, long from_days, long to_days)
{
    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    X509* cert = X509_new();
    if (!key || !cert) throw std::runtime_error("openssl: cannot make a key");
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), from_days * 86400);
    X509_gmtime_adj(X509_getm_notAfter(cert), to_days * 86400);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509_sign(cert, key, EVP_sha256());
    auto out = to_pair(cert, key);
    X509_free(cert);
    EVP_PKEY_free(key);
    return out;
}

}  // namespace test_support
