// The transfer endpoints' settings (KVTIER_P2P_*), read by kvtier_endpoint_open into
// p2p::Options.
#include "config.h"

namespace kvtier {

KVTIER_REGISTER_OPTIONS(p2p, {host_port_option<Config>("P2P_LISTEN", "", &Config::p2p_listen),
                              token_option<Config>("P2P_TOKEN", "", &Config::p2p_token),
                              transport_option<Config>("P2P_TRANSPORT", "", &Config::p2p_transport),
                              millis_option<Config>("P2P_TIMEOUT_MS", "", &Config::p2p_timeout_ms),
                              millis_option<Config>("P2P_IDLE_TIMEOUT_MS", "",
                                                    &Config::p2p_idle_timeout_ms),
                              integer_option<Config>("P2P_MAX_PEERS", "", &Config::p2p_max_peers, 1,
                                                     65536),
                              switch_option<Config>("P2P_ALLOW_NO_TOKEN", "",
                                                    &Config::p2p_allow_no_token, "on", "off")});

}  // namespace kvtier
