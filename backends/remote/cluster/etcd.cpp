// etcd's v3 JSON gateway: every call is a POST of a JSON body to /v3/<service>/<method>; keys
// and values travel base64-encoded and 64-bit integers as decimal strings.
#include "backends/remote/cluster/etcd.h"

#include <curl/curl.h>

#include <nlohmann/json.hpp>

namespace kvtier::etcd {

namespace {

using nlohmann::json;

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string b64_encode(const std::string& in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) out.push_back(kB64[(acc >> (bits -= 6)) & 63]);
  }
  if (bits) out.push_back(kB64[(acc << (6 - bits)) & 63]);
  while (out.size() % 4) out.push_back('=');
  return out;
}

bool b64_decode(const std::string& in, std::string* out) {
  out->clear();
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const char* p = std::char_traits<char>::find(kB64, 64, c);
    if (!p) return false;
    acc = (acc << 6) | static_cast<uint32_t>(p - kB64);
    bits += 6;
    if (bits >= 8) out->push_back(static_cast<char>((acc >> (bits -= 8)) & 0xFF));
  }
  return true;
}

// The gateway writes int64 fields as strings and leaves out fields that are zero.
int64_t int_field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return 0;
  if (it->is_string()) return std::stoll(it->get<std::string>());
  return it->is_number() ? it->get<int64_t>() : 0;
}

}  // namespace

std::string prefix_end(std::string prefix) {
  while (!prefix.empty()) {
    if (static_cast<unsigned char>(prefix.back()) != 0xFF) {
      ++prefix.back();
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // every key
}

namespace {

// A reply, cut off past kMaxReplyBytes.
struct Reply {
  std::string* text;
  bool over = false;
};

size_t append_reply(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<Reply*>(user);
  if (r->text->size() + size * n > kMaxReplyBytes) {
    r->over = true;
    return 0;  // ends the transfer
  }
  r->text->append(data, size * n);
  return size * n;
}

// Parses a reply; an {"error": ...} reply from etcd becomes INTERNAL with its message.
Status parse(const std::string& text, nlohmann::json* out) {
  *out = json::parse(text, nullptr, false);
  if (out->is_discarded() || !out->is_object())
    return {KVTIER_ERR_INTERNAL, "etcd: a reply that is not JSON"};
  if (out->contains("error"))
    return {KVTIER_ERR_INTERNAL, "etcd: " + out->value("message", out->value("error", ""))};
  return {};
}

}  // namespace

Client::Client(Settings settings, unsigned timeout_ms)
    : settings_(std::move(settings)), timeout_ms_(timeout_ms) {
  static std::once_flag once;  // curl's global state, before any thread makes a handle
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string Client::url(size_t e, const char* path) const {
  const std::string& ep = settings_.endpoints[e];
  return (ep.find("://") == std::string::npos ? "http://" + ep : ep) + path;
}

void Client::setup(void* curl, void* headers) const {
  CURL* h = static_cast<CURL*>(curl);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, static_cast<curl_slist*>(headers));
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);  // threads: no SIGALRM for timeouts
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  if (!settings_.ca_file.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, settings_.ca_file.c_str());
  if (!settings_.cert_file.empty())
    curl_easy_setopt(h, CURLOPT_SSLCERT, settings_.cert_file.c_str());
  if (!settings_.key_file.empty()) curl_easy_setopt(h, CURLOPT_SSLKEY, settings_.key_file.c_str());
}

namespace {

using Headers = std::unique_ptr<curl_slist, void (*)(curl_slist*)>;

// JSON, and etcd's auth token when there is one (the gateway takes it as is, no scheme).
Headers make_headers(const std::string& token) {
  curl_slist* l = curl_slist_append(nullptr, "Content-Type: application/json");
  if (l && !token.empty()) l = curl_slist_append(l, ("Authorization: " + token).c_str());
  return Headers(l, curl_slist_free_all);
}

}  // namespace

Status Client::post(const char* path, const std::string& body, std::string* reply) {
  if (settings_.endpoints.empty()) return {KVTIER_ERR_CONFIG, "etcd: no endpoints"};
  std::unique_ptr<CURL, void (*)(CURL*)> h(curl_easy_init(), curl_easy_cleanup);
  if (!h) return {KVTIER_ERR_NO_MEMORY, "etcd: curl_easy_init failed"};
  Headers headers = make_headers(token_);
  std::string last;
  for (size_t k = 0; k < settings_.endpoints.size(); ++k) {
    const size_t e = (current_ + k) % settings_.endpoints.size();
    const std::string to = url(e, path);
    reply->clear();
    Reply r{reply};
    curl_easy_setopt(h.get(), CURLOPT_URL, to.c_str());
    setup(h.get(), headers.get());
    curl_easy_setopt(h.get(), CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(h.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, append_reply);
    curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(h.get(), CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms_));
    const CURLcode rc = curl_easy_perform(h.get());
    if (r.over)
      return {KVTIER_ERR_INVALID_ARG, "etcd: a reply over " + std::to_string(kMaxReplyBytes) +
                                          " bytes from " + settings_.endpoints[e] + " (cut off)"};
    if (rc == CURLE_OK) {
      current_ = e;
      return {};
    }
    last = settings_.endpoints[e] + ": " + curl_easy_strerror(rc);
  }
  return {KVTIER_ERR_UNAVAILABLE, "etcd: no endpoint answers (" + last + ")"};
}

Status Client::call_once(const char* path, const nlohmann::json& request, nlohmann::json* reply) {
  std::string text;
  Status s = post(path, request.dump(), &text);
  return s.is_ok() ? parse(text, reply) : s;
}

Status Client::authenticate() {
  token_.clear();
  json rep;
  Status s = call_once("/v3/auth/authenticate",
                       {{"name", settings_.user}, {"password", settings_.password}}, &rep);
  if (!s.is_ok()) return {s.code(), "etcd: authenticating as " + settings_.user + ": " + s.message()};
  token_ = rep.value("token", "");
  if (token_.empty()) return {KVTIER_ERR_INTERNAL, "etcd: authentication gave no token"};
  return {};
}

Status Client::call(const char* path, const nlohmann::json& request, nlohmann::json* reply) {
  if (!settings_.user.empty() && token_.empty())
    if (Status s = authenticate(); !s.is_ok()) return s;
  Status s = call_once(path, request, reply);
  // Simple tokens run out (etcd's --auth-token-ttl): authenticate again, once.
  if (!s.is_ok() && !settings_.user.empty() && s.message().find("token") != std::string::npos) {
    if (Status a = authenticate(); !a.is_ok()) return a;
    s = call_once(path, request, reply);
  }
  return s;
}

Status Client::range_keys(const std::string& from, const std::string& end, int64_t limit,
                          int64_t revision, std::vector<KeyValue>* out, bool* more,
                          int64_t* read_at) {
  json req = {{"key", b64_encode(from)},
              {"range_end", b64_encode(end)},
              {"keys_only", true},
              {"limit", std::to_string(limit)}};
  if (revision) req["revision"] = std::to_string(revision);
  json rep;
  Status s = call("/v3/kv/range", req, &rep);
  if (!s.is_ok()) return s;
  *read_at = int_field(rep.value("header", json::object()), "revision");
  *more = rep.value("more", false);
  out->clear();
  for (const json& kv : rep.value("kvs", json::array())) {
    KeyValue item;
    if (!kv.is_object() || !b64_decode(kv.value("key", ""), &item.key))
      return {KVTIER_ERR_INTERNAL, "etcd: a key that is not base64"};
    item.create_revision = int_field(kv, "create_revision");
    item.lease = int_field(kv, "lease");
    out->push_back(std::move(item));
  }
  return {};
}

namespace {

// The watch stream: one JSON message per line, {"result": {...}} (or {"error": ...}).
struct WatchStream {
  std::string pending;  // bytes of a message not complete yet
  bool changed = false;
  Status failed;

  // One message; false once the stream has said what the watch waits for.
  bool take(const std::string& line) {
    json m = json::parse(line, nullptr, false);
    if (m.is_discarded() || !m.is_object()) {
      failed = {KVTIER_ERR_INTERNAL, "etcd: a watch message that is not JSON"};
      return false;
    }
    if (m.contains("error")) {
      failed = {KVTIER_ERR_INTERNAL, "etcd: watch: " + m.value("message", std::string())};
      return false;
    }
    const json result = m.value("result", json::object());
    if (result.value("canceled", false)) {
      failed = {KVTIER_ERR_INTERNAL,
                "etcd: watch canceled: " + result.value("cancel_reason", std::string())};
      return false;
    }
    changed = !result.value("events", json::array()).empty();
    return !changed;
  }
};

// A watch message's bytes kept at most: events carry values, which may be large; a message
// longer than this reports a change without being parsed (the set is read again by key).
constexpr size_t kMaxWatchMessage = 64u << 10;

size_t watch_chunk(char* data, size_t size, size_t n, void* user) {
  auto* w = static_cast<WatchStream*>(user);
  w->pending.append(data, size * n);
  for (size_t nl; (nl = w->pending.find('\n')) != std::string::npos;) {
    const std::string line = w->pending.substr(0, nl);
    w->pending.erase(0, nl + 1);
    if (line.find_first_not_of(" \r\t") != std::string::npos && !w->take(line))
      return 0;  // what was waited for came: end the transfer
  }
  if (w->pending.size() > kMaxWatchMessage) {  // curl hands over at most 16 KiB at a time
    w->changed = true;
    return 0;
  }
  return size * n;
}

}  // namespace

Status Client::watch_prefix(const std::string& prefix, int64_t from) {
  if (settings_.endpoints.empty()) return {KVTIER_ERR_CONFIG, "etcd: no endpoints"};
  if (!settings_.user.empty() && token_.empty())
    if (Status s = authenticate(); !s.is_ok()) return s;
  const std::string body = json{{"create_request",
                                 {{"key", b64_encode(prefix)},
                                  {"range_end", b64_encode(prefix_end(prefix))},
                                  {"start_revision", std::to_string(from)}}}}
                               .dump();
  return watch_at(url(current_, "/v3/watch"), body);
}

Status Client::watch_at(const std::string& to, const std::string& body) {
  std::unique_ptr<CURL, void (*)(CURL*)> h(curl_easy_init(), curl_easy_cleanup);
  std::unique_ptr<CURLM, CURLMcode (*)(CURLM*)> m(curl_multi_init(), curl_multi_cleanup);
  if (!h || !m) return {KVTIER_ERR_NO_MEMORY, "etcd: curl init failed"};
  Headers headers = make_headers(token_);
  WatchStream stream;
  curl_easy_setopt(h.get(), CURLOPT_URL, to.c_str());
  setup(h.get(), headers.get());
  curl_easy_setopt(h.get(), CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(h.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, watch_chunk);
  curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &stream);
  curl_easy_setopt(h.get(), CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout_ms_));
  curl_multi_add_handle(m.get(), h.get());
  {
    std::lock_guard lock(wake_mu_);
    watching_ = m.get();
  }
  int running = 1;
  while (running && !woken_.load() && !stream.changed && stream.failed.is_ok()) {
    curl_multi_perform(m.get(), &running);
    if (running) curl_multi_poll(m.get(), nullptr, 0, 1000, nullptr);  // wake() cuts it short
  }
  {
    std::lock_guard lock(wake_mu_);
    watching_ = nullptr;
  }
  curl_multi_remove_handle(m.get(), h.get());
  if (stream.changed || woken_.load()) return {};
  if (!stream.failed.is_ok()) return stream.failed;
  return {KVTIER_ERR_UNAVAILABLE, "etcd: the watch stream ended"};
}

void Client::wake() {
  woken_ = true;
  std::lock_guard lock(wake_mu_);
  if (watching_) curl_multi_wakeup(static_cast<CURLM*>(watching_));
}

Status Client::grant(int64_t ttl_s, int64_t* lease) {
  json rep;
  Status s = call("/v3/lease/grant", {{"TTL", std::to_string(ttl_s)}}, &rep);
  if (!s.is_ok()) return s;
  *lease = int_field(rep, "ID");
  return *lease ? Status{} : Status{KVTIER_ERR_INTERNAL, "etcd: lease grant without an ID"};
}

Status Client::keep_alive(int64_t lease, int64_t* ttl_s) {
  // A streaming call in gRPC; through the gateway one request gets one {"result": ...}.
  json rep;
  Status s = call("/v3/lease/keepalive", {{"ID", std::to_string(lease)}}, &rep);
  if (!s.is_ok()) return s;
  *ttl_s = int_field(rep.value("result", json::object()), "TTL");
  return {};
}

Status Client::put(const std::string& key, const std::string& value, int64_t lease) {
  json req = {{"key", b64_encode(key)}, {"value", b64_encode(value)}};
  if (lease) req["lease"] = std::to_string(lease);
  json rep;
  return call("/v3/kv/put", req, &rep);
}

Status Client::revoke(int64_t lease) {
  json rep;
  return call("/v3/lease/revoke", {{"ID", std::to_string(lease)}}, &rep);
}

}  // namespace kvtier::etcd
