#pragma once
// Atomic file output: write to `<path>.tmp.<pid>`, fsync, rename over `path`, fsync the
// directory. A reader never sees a partial file; an interrupted writer leaves only a temp
// file, which the next successful write of the same path replaces.
#include <cstdint>
#include <string>
#include <string_view>

namespace engram {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // opens the temp file; error names the path
  ~AtomicFile();                          // not committed: the temp file is removed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void write(std::string_view s) { write(s.data(), s.size()); }
  uint64_t bytes_written() const { return bytes_written_; }
  void commit();  // flush, fsync, rename, fsync the directory

 private:
  std::string path_, tmp_path_;
  int fd_ = -1;
  uint64_t bytes_written_ = 0;
  bool committed_ = false;
};

// Whole-file helpers.
void write_file_atomic(const std::string& path, std::string_view contents);
std::string read_file(const std::string& path);  // error names the path
// Creates `dir` (and parents) if needed and checks that files can be created in it.
void ensure_writable_dir(const std::string& dir);

}  // namespace engram
