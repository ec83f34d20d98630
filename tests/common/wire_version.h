// The wire version the tests' raw frames carry: the library's own, so a frame built by hand
// stays one the server reads when the version moves on.
#pragma once

#include <cstdint>

#include "backends/remote/wire/protocol.h"

namespace kvtier_test {

static_assert(kvtier::wire::kVersion < 256, "raw frames write the version as one low byte");
inline constexpr uint8_t kWireVersion = kvtier::wire::kVersion;

}  // namespace kvtier_test
