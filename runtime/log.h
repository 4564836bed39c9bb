#pragma once
// Minimal leveled logging to stderr. Only rank 0 logs in multi-rank runs (set_log_rank).
#include <string>

#include "runtime/error.h"

namespace engram {

enum class LogLevel { Info = 0, Warn = 1, Error = 2 };

void set_log_rank(int rank);  // messages below Error are printed on rank 0 only
void log_message(LogLevel level, const std::string& msg);

}  // namespace engram

#define EG_LOG_INFO(...) ::engram::log_message(::engram::LogLevel::Info, ::engram::detail::concat(__VA_ARGS__))
#define EG_LOG_WARN(...) ::engram::log_message(::engram::LogLevel::Warn, ::engram::detail::concat(__VA_ARGS__))
