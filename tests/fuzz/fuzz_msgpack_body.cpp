// libFuzzer target: the msgpack body decoder of every request a server reads and every reply a
// client reads (comm/wire_codec.h, comm/wire_weights.h). The first byte picks the decoder, the rest
// is the body. Whatever the bytes, a decoder returns a value or an error: never a crash, a hang or
// an unbounded allocation (BodyLimits), and a decoded body re-encodes to bytes that decode and
// re-encode to the same bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "comm/wire_codec.h"
#include "comm/wire_weights.h"

using namespace zr;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t which = data[0];
  std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  (void)wire::peek_req_id(body);
  switch (which % 12) {
    case 0:
      (void)wire::decode_generate(body);
      break;
    case 1:
      (void)wire::decode_score(body);
      break;
    case 2:
      (void)wire::decode_abort(body);
      break;
    case 3:
      (void)wire::decode_open_session(body);
      break;
    case 4:
      (void)wire::decode_close_session(body);
      break;
    case 5:
      (void)wire::decode_req_id_only(body);
      break;
    case 6:
      (void)wire::decode_tokenize(body);
      break;
    case 7:
      (void)wire::decode_detokenize(body);
      break;
    case 8:
      (void)wire::decode_update_weights(body);
      break;
    default: {  // the client side: a reply body
      auto j = wire::unpack_body(body);
      if (!j.ok()) break;
      // Round trip: what decoded packs, decodes and packs to the same bytes (bytes, not json ==:
      // a NaN is not equal to itself).
      const std::string packed = wire::pack_body(*j);
      auto again = wire::unpack_body(packed);
      if (!again.ok() || wire::pack_body(*again) != packed) __builtin_trap();
      if (which % 12 == 9) (void)wire::generate_reply_from_json(*j);
      else if (which % 12 == 10) (void)wire::stream_chunk_from_json(*j);
      else (void)wire::status_from_error_json(*j), (void)wire::score_reply_from_json(*j);
    }
  }
  return 0;
}
