#pragma once
// Errors. Every failure the user can cause (bad config, bad file, impossible layout) is an
// engram::Error whose message names the file, field or value and what was expected; launchers
// print it once and exit non-zero. EG_CHECK is for those; EG_ASSERT is for internal invariants.
#include <sstream>
#include <stdexcept>
#include <string>

namespace engram {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg, bool internal);
}  // namespace detail

}  // namespace engram

#define EG_CHECK(cond, ...)                                                                   \
  do {                                                                                        \
    if (!(cond)) ::engram::detail::throw_error(__FILE__, __LINE__,                            \
                                               ::engram::detail::concat(__VA_ARGS__), false); \
  } while (0)

#define EG_ASSERT(cond, ...)                                                                 \
  do {                                                                                       \
    if (!(cond)) ::engram::detail::throw_error(__FILE__, __LINE__,                           \
                                               ::engram::detail::concat("internal error: ", \
                                                                        #cond, " ",          \
                                                                        ##__VA_ARGS__),      \
                                               true);                                        \
  } while (0)

#define EG_FAIL(...) \
  ::engram::detail::throw_error(__FILE__, __LINE__, ::engram::detail::concat(__VA_ARGS__), false)
