// The file tier's name in builds without liburing: KVTIER_TIERS=file then fails with
// KVTIER_ERR_UNSUPPORTED ("not built in"), as an RDMA transport does in a build without verbs,
// so callers and tests can tell a missing tier from a misspelt one (KVTIER_ERR_CONFIG).
#include "src/tier.h"

namespace kvtier {

namespace {
Status make_no_file_tier(const Config&, std::unique_ptr<Tier>*) {
  return {KVTIER_ERR_UNSUPPORTED, "this build of kvtier has no file tier (built without liburing)"};
}
}  // namespace

KVTIER_REGISTER_TIER("file", make_no_file_tier);

}  // namespace kvtier
