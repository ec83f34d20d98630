#include "src/status.h"

namespace kvtier {

namespace {
struct CodeInfo {
  int code;
  const char* name;
  const char* text;
};

constexpr CodeInfo kCodes[] = {
    {KVTIER_OK, "KVTIER_OK", "success"},
    {KVTIER_ERR_NOT_FOUND, "KVTIER_ERR_NOT_FOUND", "key not found"},
    {KVTIER_ERR_INVALID_ARG, "KVTIER_ERR_INVALID_ARG", "invalid argument"},
    {KVTIER_ERR_KEY_TOO_LONG, "KVTIER_ERR_KEY_TOO_LONG", "key empty or too long"},
    {KVTIER_ERR_NOT_REGISTERED, "KVTIER_ERR_NOT_REGISTERED", "fragment outside registered memory"},
    {KVTIER_ERR_BUFFER_TOO_SMALL, "KVTIER_ERR_BUFFER_TOO_SMALL", "buffer too small for the value"},
    {KVTIER_ERR_SIZE_MISMATCH, "KVTIER_ERR_SIZE_MISMATCH",
     "stored value size differs from the fragments' total"},
    {KVTIER_ERR_CONFIG, "KVTIER_ERR_CONFIG", "invalid configuration"},
    {KVTIER_ERR_NO_SPACE, "KVTIER_ERR_NO_SPACE", "no space left in any tier"},
    {KVTIER_ERR_IO, "KVTIER_ERR_IO", "I/O error"},
    {KVTIER_ERR_CORRUPT, "KVTIER_ERR_CORRUPT", "stored bytes failed their checksum"},
    {KVTIER_ERR_UNAVAILABLE, "KVTIER_ERR_UNAVAILABLE", "remote server unavailable"},
    {KVTIER_ERR_TIMEOUT, "KVTIER_ERR_TIMEOUT",
     "timed out (a remote server, or another process on the file tier)"},
    {KVTIER_ERR_NO_MEMORY, "KVTIER_ERR_NO_MEMORY", "out of memory"},
    {KVTIER_ERR_UNSUPPORTED, "KVTIER_ERR_UNSUPPORTED", "not supported"},
    {KVTIER_ERR_NO_LAYOUT, "KVTIER_ERR_NO_LAYOUT", "no pool layout registered"},
    {KVTIER_ERR_OUT_OF_RANGE, "KVTIER_ERR_OUT_OF_RANGE",
     "token slot outside the pool or off a page boundary"},
    {KVTIER_ERR_BUSY, "KVTIER_ERR_BUSY",
     "a server at its connection or lease limit"},
    {KVTIER_ERR_INTERNAL, "KVTIER_ERR_INTERNAL", "internal error"},
    {KVTIER_ERR_DENIED, "KVTIER_ERR_DENIED",
     "refused: by a remote server (token, protocol) or a folder another user could tamper with"},
    {KVTIER_ERR_CLOSED, "KVTIER_ERR_CLOSED",
     "closed: the handle, or the endpoint of a peer; or a handle opened before fork()"},
    {KVTIER_ERR_CANCELLED, "KVTIER_ERR_CANCELLED", "the asynchronous request was cancelled"},
};

const CodeInfo* find(int code) {
  for (const auto& c : kCodes)
    if (c.code == code) return &c;
  return nullptr;
}
}  // namespace

const char* code_name(int code) {
  const CodeInfo* c = find(code);
  return c ? c->name : "KVTIER_ERR_UNKNOWN";
}

const char* code_text(int code) {
  const CodeInfo* c = find(code);
  return c ? c->text : "unknown code";
}

}  // namespace kvtier
