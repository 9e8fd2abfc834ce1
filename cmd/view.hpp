// How stored resources look to people: Kuma's YAML/JSON shape, table rows, summaries.
#pragma once

#include "cmd/output.hpp"
#include "store/store.hpp"

#include <string>
#include <vector>

namespace cmd {

// A MES's TLS condition (conf::tls_condition) read through `snapshot`; nullopt for other
// kinds and when TLS is off. A Secret that cannot be read counts as missing.
std::optional<conf::Condition> tls_condition(const store::Snapshot& snapshot, const store::Entry& entry);

// The resource in Kuma's Universal shape with its status (and `tls`, the MES's TLS condition,
// under status.conditions). Secret values and inline client keys are never included; data
// sources are shown in the shape they were written in.
Value resource_value(const store::Entry& entry, const std::optional<conf::Condition>& tls = std::nullopt);

std::vector<std::string> table_header(conf::Kind kind);
std::vector<std::string> table_row(const store::Entry& entry, const std::optional<conf::Condition>& tls = std::nullopt);

// "242.0.0.1", "242.0.0.1,fd00::1", or "<none>".
std::string vip_text(const store::MesStatus& status);
// "Generated", or the failing conditions, plus "NoVIP" when a pool gave none and
// "REASON(tls)" when the TLS condition is False.
std::string condition_summary(const store::MesStatus& status,
                              const std::optional<conf::Condition>& tls = std::nullopt);
std::string endpoint_text(const conf::Endpoint& e);
std::string tls_summary(const conf::MeshExternalService& mes);

}  // namespace cmd
