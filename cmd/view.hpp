// How stored resources look to people: Kuma's YAML/JSON shape, table rows, summaries.
#pragma once

#include "cmd/output.hpp"
#include "store/store.hpp"

#include <string>
#include <vector>

namespace cmd {

// The resource in Kuma's Universal shape with its status. Secret values and inline client
// keys are never included.
Value resource_value(const store::Entry& entry);

std::vector<std::string> table_header(conf::Kind kind);
std::vector<std::string> table_row(const store::Entry& entry);

// "242.0.0.1", "242.0.0.1,fd00::1", or "<none>".
std::string vip_text(const store::MesStatus& status);
// "Generated", or the failing conditions, plus "NoVIP" when a pool gave none.
std::string condition_summary(const store::MesStatus& status);
std::string endpoint_text(const conf::Endpoint& e);
std::string tls_summary(const conf::MeshExternalService& mes);

}  // namespace cmd
