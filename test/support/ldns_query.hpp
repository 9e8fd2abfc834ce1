// A query in wire form built by ldns, for the tests that compare answers byte for byte.
#pragma once

#include <catch2/catch.hpp>
#include <ldns/ldns.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace test_support {

struct QueryOptions {
    std::uint16_t edns_size = 0;  // 0: no OPT record
    std::uint8_t edns_version = 0;
    bool do_bit = false;
    std::uint16_t id = 0xbeef;
};

// `name` (with or without the final dot) and `type`, class IN, RD set.
inline std::vector<std::uint8_t> ldns_query(const std::string& name, ldns_rr_type type, QueryOptions o = {})
{
    ldns_pkt* q = nullptr;
    REQUIRE(ldns_pkt_query_new_frm_str(&q, name.c_str(), type, LDNS_RR_CLASS_IN, LDNS_RD) == LDNS_STATUS_OK);
    ldns_pkt_set_id(q, o.id);
    if (o.edns_size) {
        ldns_pkt_set_edns_udp_size(q, o.edns_size);
        ldns_pkt_set_edns_version(q, o.edns_version);
        ldns_pkt_set_edns_do(q, o.do_bit);
    }
    std::uint8_t* buf = nullptr;
    std::size_t size = 0;
    REQUIRE(ldns_pkt2wire(&buf, q, &size) == LDNS_STATUS_OK);
    std::vector<std::uint8_t> out(buf, buf + size);
    std::free(buf);
    ldns_pkt_free(q);
    return out;
}

}  // namespace test_support
