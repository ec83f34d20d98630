// The C ABI's common calls: version, error names and the last error, kvtier_free; layouts.
#include "capi/kvtier_c.h"

#include <kvtier/kvtier.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

namespace kvtier::capi {

namespace {

thread_local std::string t_last_error;

}  // namespace

int fail(const Status& s) {
  t_last_error = std::string(kvtier::code_name(s.code())) + ": " + s.message();
  return s.code();
}

int fail(int code, const std::string& msg) {
  return fail(Status(code, msg));
}

void clear_last_error() {
  t_last_error.clear();
}

void set_last_error(std::string detail) {
  t_last_error = std::move(detail);
}

int note(const Status& s) {
  if (!s.is_ok()) fail(s);
  return KVTIER_OK;
}

std::string check_batch(const char* const* keys, size_t n, const void* results) {
  if (!keys) return "keys is NULL";
  if (!results) return "results is NULL";
  if (n == 0) return "n is 0";
  if (n > kMaxBatch) return "n is larger than " + std::to_string(kMaxBatch);
  return {};
}

std::string check_v1(void* const* ptrs, const size_t* sizes, size_t n_frags, size_t n) {
  if (!ptrs || !sizes) return "fragment pointer or size array is NULL";
  if (n_frags > kMaxFrags)
    return std::to_string(n_frags) + " fragments is more than " + std::to_string(kMaxFrags);
  if (n_frags == 0 || n_frags % n)
    return std::to_string(n_frags) + " fragments do not split evenly over " + std::to_string(n) +
           " keys";
  return {};
}

Status to_layout(const kvtier_pool_layout_t* layout, PoolLayout* out) {
  // 0.1's struct ended at pool_tokens; later fields are read only when the caller has them.
  const size_t size = layout->struct_size;
  if (size < offsetof(kvtier_pool_layout_t, dtype_name) || size > (size_t{1} << 16))
    return {KVTIER_ERR_INVALID_ARG, "layout->struct_size is " + std::to_string(size) +
                                        "; set it to sizeof(kvtier_pool_layout_t)"};
  PoolLayout& l = *out;
  l.base = static_cast<std::byte*>(layout->base);
  l.kind = static_cast<PoolKind>(layout->pool_kind);
  l.order = static_cast<PoolOrder>(layout->layout);
  l.page_size = layout->page_size;
  l.layer_num = layout->layer_num;
  l.head_num = layout->head_num;
  l.head_dim = layout->head_dim;
  l.kv_cache_dim = layout->kv_cache_dim;
  l.dtype_size = layout->dtype_size;
  l.pool_tokens = layout->pool_tokens;
  if (size >= offsetof(kvtier_pool_layout_t, dtype_name) + sizeof(char*) && layout->dtype_name) {
    const size_t len = strnlen(layout->dtype_name, 257);
    if (len > 256) return {KVTIER_ERR_INVALID_ARG, "dtype_name is over 256 bytes"};
    l.dtype_name.assign(layout->dtype_name, len);
  }
  return l.validate();
}

}  // namespace kvtier::capi

extern "C" {

unsigned kvtier_version_number(void) {
  return KVTIER_VERSION_NUMBER;
}

const char* kvtier_version_string(void) {
#define KVTIER_STR2(x) #x
#define KVTIER_STR(x) KVTIER_STR2(x)
  return KVTIER_STR(KVTIER_VERSION_MAJOR) "." KVTIER_STR(KVTIER_VERSION_MINOR) "." KVTIER_STR(
      KVTIER_VERSION_PATCH);
}

const char* kvtier_error_name(int code) {
  return kvtier::code_name(code);
}
const char* kvtier_strerror(int code) {
  return kvtier::code_text(code);
}
const char* kvtier_last_error(void) {
  return kvtier::capi::t_last_error.c_str();
}
void kvtier_free(void* ptr) {
  std::free(ptr);
}

}  // extern "C"
