// Certificates made in the test process, so tests need no files and no clock luck.
#pragma once

#include <string>

namespace test_support {

struct KeyPair {
    std::string cert_pem;
    std::string key_pem;
};

// A self-signed P-256 certificate for `common_name`, valid from now + `from_days` to
// now + `to_days` (negative numbers lie in the past).
KeyPair make_self_signed(const std::string& common_name, long from_days = -1, long to_days = 365);

}  // namespace test_support
