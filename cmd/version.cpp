#include "cmd/version.hpp"

#include "cmd/git_version.hpp"

#include <ldns/ldns.h>
#include <lmdb.h>
#include <openssl/crypto.h>
#include <uv.h>

namespace cmd {

std::string version_text(std::string_view program)
{
    std::string out(program);
    out += " " MESD_VERSION;
    std::string_view commit = MESD_GIT_COMMIT;
    if (!commit.empty()) out += " (commit " + std::string(commit) + ")";
    out += "\n";
#if defined(__clang__)
    out += "compiler: clang " __clang_version__ "\n";
#elif defined(__GNUC__)
    out += "compiler: g++ " __VERSION__ "\n";
#endif
    // The libraries' versions as loaded, which a shared library upgrade changes.
    out += "ldns: " + std::string(ldns_version()) + "\n";
    out += "libuv: " + std::string(uv_version_string()) + "\n";
    out += "OpenSSL: " + std::string(OpenSSL_version(OPENSSL_VERSION)) + "\n";
    int major = 0, minor = 0, patch = 0;
    ::mdb_version(&major, &minor, &patch);
    out += "LMDB: " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch) + "\n";
    out += "yaml-cpp: " MESD_YAML_CPP_VERSION " (built with)\n";
    return out;
}

}  // namespace cmd
