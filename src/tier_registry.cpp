#include <map>

#include "src/tier.h"

namespace kvtier {

namespace {
std::map<std::string, TierFactory>& factories() {
  static std::map<std::string, TierFactory> map;
  return map;
}
}  // namespace

bool register_tier(std::string name, TierFactory factory) {
  factories()[std::move(name)] = std::move(factory);
  return true;
}

std::string tier_names() {
  std::string names;
  for (const auto& [name, f] : factories()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

Status make_tier(const std::string& name, const Config& config, std::unique_ptr<Tier>* out) {
  auto it = factories().find(name);
  if (it == factories().end())
    return {KVTIER_ERR_CONFIG, "KVTIER_TIERS names tier '" + name +
                                   "', which this build does not have (it has: " + tier_names() +
                                   ")"};
  return it->second(config, out);
}

}  // namespace kvtier
