#include "runtime/error.h"

namespace engram::detail {

void throw_error(const char* file, int line, const std::string& msg, bool internal) {
  // Internal errors carry the source location (they are bugs); user errors read as plain text.
  if (internal) throw Error(msg + " (" + file + ":" + std::to_string(line) + ")");
  throw Error(msg);
}

}  // namespace engram::detail
