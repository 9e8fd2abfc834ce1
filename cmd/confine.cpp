// The daemon's confinement step: privileges, then the sandbox (privilege.hpp, sandbox.hpp).
#include "cmd/log.hpp"
#include "cmd/privilege.hpp"
#include "cmd/sandbox.hpp"

#include <unistd.h>

namespace cmd {

std::expected<void, std::string> confine(const conf::Config& config)
{
    auto dropped = privilege::drop(config);
    if (!dropped) return std::unexpected(dropped.error());
    if (dropped->as_root_without_user)
        log::warn("daemon", "running as root: set `user` to run as an unprivileged user once bound",
                  {{"uid", "0"}});
    else
        log::info("daemon", "privileges dropped",
                  {{"user", dropped->user},
                   {"uid", std::to_string(::getuid())},
                   {"gid", std::to_string(::getgid())},
                   {"capabilities", privilege::capability_names(dropped->kept)},
                   {"bounding_set", dropped->bounding_cut ? "cut" : "as inherited"}});
    if (config.sandbox) {
        if (auto entered = sandbox::enter(); !entered) return std::unexpected("sandbox: " + entered.error());
        log::info("daemon", "sandbox entered", {{"seccomp", "allow-list"}, {"no_new_privs", "1"}});
    }
    return {};
}

}  // namespace cmd
