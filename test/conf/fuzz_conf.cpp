// libFuzzer target: any bytes as a file of resources (`make fuzz-conf`). The properties it
// holds them to are in fuzz_conf_checks.hpp; a failure aborts, leaving the input behind.
#include "test/conf/fuzz_conf_checks.hpp"

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    test_support::check_conf_input(std::string_view(reinterpret_cast<const char*>(data), size),
                                   [](bool ok, const char*) {
                                       if (!ok) std::abort();
                                   });
    return 0;
}
