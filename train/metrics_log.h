#pragma once
// <run_dir>/metrics.jsonl: one JSON object per line, appended and flushed line by line, so a run that
// dies leaves every finished step on disk. Training lines carry "type": "train", evaluation lines
// "type": "eval"; every line has a "step".
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace engram {

// Keeps only the lines whose "step" is <= `step` (rewritten atomically); a line that does not parse,
// such as a half-written last line of a killed run, is dropped. A missing file stays missing.
// Resuming from the checkpoint of step s calls this with s, so the file then reads as if the run had
// stopped right after step s.
void truncate_metrics(const std::string& path, int64_t step);

class MetricsLog {
 public:
  // Truncates the file to the lines of steps <= `resume_step` (0 for a fresh run: empty), then opens it
  // for appending. Errors name the path.
  MetricsLog(std::string path, int64_t resume_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  void write(const nlohmann::ordered_json& line);  // one line, flushed
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace engram
