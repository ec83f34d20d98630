// libFuzzer target for the remote tier's frame parser (clang -fsanitize=fuzzer; CMake option
// KVTIER_BUILD_FUZZ). Run: ./fuzz_frames -max_total_time=60
#include "tests/remote/frame_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier_test::parse_frame(data, size);
  return 0;
}
