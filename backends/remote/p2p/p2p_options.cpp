// The transfer endpoints' settings (KVTIER_P2P_*): p2p.h's Options, read by kvtier_endpoint_open.
#include "src/config.h"
#include "backends/remote/p2p/p2p.h"

namespace kvtier {

namespace {
using O = p2p::Options;
}  // namespace

KVTIER_REGISTER_OPTIONS(p2p, {host_port_option<O>("P2P_LISTEN", "", &O::listen),
                              token_option<O>("P2P_TOKEN", "", &O::token),
                              transport_option<O>("P2P_TRANSPORT", "", &O::transport),
                              millis_option<O>("P2P_TIMEOUT_MS", "", &O::timeout_ms),
                              millis_option<O>("P2P_IDLE_TIMEOUT_MS", "", &O::idle_timeout_ms),
                              integer_option<O>("P2P_MAX_PEERS", "", &O::max_peers, 1, 65536),
                              switch_option<O>("P2P_ALLOW_NO_TOKEN", "", &O::allow_no_token, "on",
                                               "off")});

}  // namespace kvtier
