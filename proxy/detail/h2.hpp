// The client-to-endpoint half of an HTTP/2 connection for `protocol: http2` and `grpc`: the
// HTTP/2 counterpart of HostRewriter. Each request's `:authority` (and a `host` header, where
// a client sends one) becomes the endpoint's hostname, as Kuma's auto host rewrite does for
// HTTP/1, so that a DNS-named endpoint behind virtual hosting (an external gRPC service on a
// shared front end) sees its own name rather than the VIP the client dialled.
//
// The client's connection preface passes as it is; then every frame is parsed (RFC 9113 §4.1).
// Header blocks (HEADERS + CONTINUATION until END_HEADERS) are decoded with nghttp2's HPACK
// inflater, which follows the client's encoder for every block (changed or not: later blocks
// refer to the dynamic table the earlier ones filled), rewritten, encoded again with a
// deflater that keeps no dynamic table, and framed again in HEADERS + CONTINUATION frames of
// at most 16384 bytes, with END_STREAM and the priority fields kept and padding dropped. Every
// other frame passes byte for byte. The endpoint-to-client direction is not looked at.
//
// A plain CONNECT's `:authority` names the tunnel's destination, not a virtual host: such a
// request passes unchanged (extended CONNECT, with `:protocol`, is rewritten).
//
// The cost of keeping no table toward the endpoint: headers the client sends as references to
// its table (a large token on every request) go out in full each time, so one read from the
// client may grow many times over on its way out (it is written under the connection's usual
// backpressure: the client is not read while the endpoint's queue is above the watermark).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

struct nghttp2_hd_inflater;
struct nghttp2_hd_deflater;

namespace proxy::detail {

class AuthorityRewriter {
public:
    // `authority`: what requests carry as `:authority` from here on (the endpoint's host).
    explicit AuthorityRewriter(std::string authority);
    ~AuthorityRewriter();
    AuthorityRewriter(const AuthorityRewriter&) = delete;
    AuthorityRewriter& operator=(const AuthorityRewriter&) = delete;

    // Appends to `out` what goes to the endpoint for `data` from the client (any split of the
    // stream). False when the stream is not HTTP/2 as a client speaks it (a bad preface or
    // frame, a PUSH_PROMISE, a header block that does not decode or is too big): the
    // connection must end, and later calls return false too.
    bool feed(const char* data, std::size_t size, std::string& out);

    // Limits on what is held per connection.
    static constexpr std::size_t max_header_list = std::size_t{64} << 10;   // decoded, RFC 9113 §6.5.2 sizes
    static constexpr std::size_t max_encoded_block = std::size_t{128} << 10;  // fragments of one block
    static constexpr std::size_t max_dynamic_table = std::size_t{64} << 10;  // the client's encoder may use
    // What the header blocks decode to, over the connection, against what came in: with no
    // table toward the endpoint, every reference the client makes to its table goes out in
    // full, so a client that indexes one big header and refers to it with a byte per field
    // would turn one 64 KiB read into hundreds of MB. Real clients stay far below this ratio
    // (a repeated request of indexed headers is some tens of times its encoding).
    static constexpr std::uint64_t max_expansion = 128;
    static constexpr std::uint64_t expansion_allowance = std::uint64_t{1} << 20;

private:
    struct InflaterFree {
        void operator()(nghttp2_hd_inflater* p) const;
    };
    struct DeflaterFree {
        void operator()(nghttp2_hd_deflater* p) const;
    };
    enum class State { preface, frame_header, pass, collect };

    bool start_frame(std::string& out);
    bool end_fragment(std::string& out);
    bool rewrite_block(std::string& out);
    bool fail()
    {
        failed_ = true;
        return false;
    }

    std::string authority_;
    std::unique_ptr<nghttp2_hd_inflater, InflaterFree> inflater_;
    std::unique_ptr<nghttp2_hd_deflater, DeflaterFree> deflater_;
    State state_ = State::preface;
    bool failed_ = false;
    std::size_t preface_seen_ = 0;
    std::uint64_t encoded_total_ = 0;  // header block bytes from the client
    std::uint64_t decoded_total_ = 0;  // names and values they decoded to
    unsigned char header_[9]{};
    std::size_t header_have_ = 0;
    std::size_t remaining_ = 0;  // payload bytes of the current frame still to come
    std::uint8_t type_ = 0, flags_ = 0;
    std::uint32_t stream_ = 0;
    std::string payload_;  // a HEADERS or CONTINUATION frame's payload, being collected
    // The header block under way: from a HEADERS without END_HEADERS to its last CONTINUATION.
    bool in_block_ = false;
    std::uint32_t block_stream_ = 0;
    std::uint8_t block_flags_ = 0;  // the HEADERS frame's END_STREAM and PRIORITY
    std::string priority_;          // its 5 priority bytes, when PRIORITY
    std::string block_;             // the encoded fragments so far
};

}  // namespace proxy::detail
