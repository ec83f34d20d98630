// The HELLO handshake's proofs: each end shows it holds the cluster's token without sending it.
// The client sends a random nonce; the server answers with its own nonce, its id and
// HMAC-SHA256(token, "kvtier server" | client nonce | server nonce | server id); the client
// checks that before it sends anything else, then answers HMAC-SHA256(token, "kvtier client" |
// client nonce | server nonce), which the server checks before it serves a request. The labels
// keep a proof from being reflected back as the other end's. An empty token is a key too: two
// ends without one agree, an end with one never accepts an end without it.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace kvtier::wire {

constexpr size_t kNonceSize = 32;
constexpr size_t kProofSize = 32;  // HMAC-SHA256
using Nonce = std::array<uint8_t, kNonceSize>;
using Proof = std::array<uint8_t, kProofSize>;

// Fresh random bytes from the system's CSPRNG (OpenSSL's RAND_bytes).
Nonce make_nonce();
Proof server_proof(const std::string& token, const Nonce& client, const Nonce& server,
                   uint64_t server_id);
Proof client_proof(const std::string& token, const Nonce& client, const Nonce& server);
// Constant time: how much of a forged proof is right does not show in the time taken.
bool same_proof(const Proof& a, const Proof& b);

}  // namespace kvtier::wire
