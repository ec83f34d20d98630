#include "tests/core/test_tier.h"

namespace kvtier_test {

RotTier* RotTier::last = nullptr;

namespace {
kvtier::Status make_rot_tier(const kvtier::Config&, std::unique_ptr<kvtier::Tier>* out) {
  *out = std::make_unique<RotTier>();
  return {};
}
}  // namespace

KVTIER_REGISTER_TIER("test_rot", make_rot_tier);

}  // namespace kvtier_test
