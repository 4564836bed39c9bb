#include "train/metrics_log.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "runtime/atomic_file.h"
#include "runtime/error.h"

namespace engram {

void truncate_metrics(const std::string& path, int64_t step) {
  if (!std::filesystem::exists(path)) return;
  std::istringstream in(read_file(path));
  std::string kept, line;
  while (std::getline(in, line)) {
    const nlohmann::json parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!parsed.is_object() || !parsed.contains("step") || !parsed["step"].is_number_integer()) continue;
    if (parsed["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

MetricsLog::MetricsLog(std::string path, int64_t resume_step) : path_(std::move(path)) {
  truncate_metrics(path_, resume_step);
  file_ = std::fopen(path_.c_str(), "a");
  EG_CHECK(file_ != nullptr, path_, ": cannot open for appending (", std::strerror(errno), ")");
}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::write(const nlohmann::ordered_json& line) {
  const std::string text = line.dump() + "\n";
  EG_CHECK(std::fputs(text.c_str(), file_) >= 0 && std::fflush(file_) == 0, path_, ": write failed (",
           std::strerror(errno), ")");
}

}  // namespace engram
