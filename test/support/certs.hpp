// Certificates made in the test process, so tests need no files and no clock luck.
#pragma once

#include <string>
#include <vector>

namespace test_support {

struct KeyPair {
    std::string cert_pem;
    std::string key_pem;
};

// A self-signed P-256 certificate for `common_name`, valid from now + `from_days` to
// now + `to_days` (negative numbers lie in the past).
KeyPair make_self_signed(const std::string& common_name, long from_days = -1, long to_days = 365);

// A private CA (P-256, basicConstraints CA:TRUE), and leaves it signs with the given
// subjectAltName entries ("DNS:api.example", "IP:127.0.0.1", "URI:spiffe://mesh/web").
KeyPair make_ca(const std::string& common_name);
KeyPair make_leaf(const KeyPair& ca, const std::string& common_name, const std::vector<std::string>& sans,
                  long from_days = -1, long to_days = 365, bool client = false);
// A leaf for both ends of TLS (extendedKeyUsage serverAuth and clientAuth), for a server that
// also dials with its own certificate: etcd's JSON gateway reaches its gRPC port so.
KeyPair make_server_and_client_leaf(const KeyPair& ca, const std::string& common_name,
                                    const std::vector<std::string>& sans);

}  // namespace test_support
