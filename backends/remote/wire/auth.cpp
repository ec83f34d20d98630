#include "backends/remote/wire/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>
#include <random>
#include <string_view>

namespace kvtier::wire {

namespace {

Proof mac(const std::string& token, std::string_view label, const Nonce& client,
          const Nonce& server, const uint8_t* extra, size_t extra_len) {
  std::string msg(label);
  msg.append(reinterpret_cast<const char*>(client.data()), client.size());
  msg.append(reinterpret_cast<const char*>(server.data()), server.size());
  msg.append(reinterpret_cast<const char*>(extra), extra_len);
  static const char kNoKey = 0;  // OpenSSL wants a pointer even for an empty key
  Proof out{};
  unsigned len = 0;
  HMAC(EVP_sha256(), token.empty() ? &kNoKey : token.data(), static_cast<int>(token.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out.data(), &len);
  return out;
}

}  // namespace

Nonce make_nonce() {
  Nonce n{};
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1) {
    // The CSPRNG failed (it does not on Linux with getrandom); the kernel's is next best.
    std::random_device rd;
    for (auto& b : n) b = static_cast<uint8_t>(rd());
  }
  return n;
}

Proof server_proof(const std::string& token, const Nonce& client, const Nonce& server,
                   uint64_t server_id) {
  uint8_t id[8];
  std::memcpy(id, &server_id, 8);
  return mac(token, "kvtier server", client, server, id, sizeof id);
}

Proof client_proof(const std::string& token, const Nonce& client, const Nonce& server) {
  return mac(token, "kvtier client", client, server, nullptr, 0);
}

bool same_proof(const Proof& a, const Proof& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace kvtier::wire
