// Status: a code (the public KVTIER_* values, so there is one list of codes) plus a message.
#pragma once

#include <kvtier/kvtier.h>

#include <string>
#include <utility>

namespace kvtier {

class Status {
 public:
  Status() = default;  // OK; costs an int and an empty string
  Status(int code, std::string msg) : code_(code), msg_(std::move(msg)) {}

  static Status ok() { return {}; }
  bool is_ok() const { return code_ == KVTIER_OK; }
  int code() const { return code_; }
  const std::string& message() const { return msg_; }

 private:
  int code_ = KVTIER_OK;
  std::string msg_;
};

const char* code_name(int code);
const char* code_text(int code);

}  // namespace kvtier
