#include "runtime/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/error.h"

namespace engram {

namespace fs = std::filesystem;

namespace {
std::string errno_text() { return std::strerror(errno); }

void fsync_directory(const std::string& path) {
  const fs::path dir = fs::path(path).parent_path().empty() ? fs::path(".") : fs::path(path).parent_path();
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: the rename itself is already atomic
  ::fsync(fd);
  ::close(fd);
}
}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_path_ = path_ + ".tmp." + std::to_string(::getpid());
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  EG_CHECK(fd_ >= 0, path_, ": cannot create file for writing (", errno_text(), ")");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  EG_ASSERT(!committed_, "write after commit to ", path_);
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    EG_CHECK(n > 0, path_, ": write failed (", errno_text(), ")");
    p += n;
    bytes -= static_cast<size_t>(n);
    bytes_written_ += static_cast<uint64_t>(n);
  }
}

void AtomicFile::commit() {
  EG_ASSERT(!committed_, "double commit of ", path_);
  EG_CHECK(::fsync(fd_) == 0, path_, ": fsync failed (", errno_text(), ")");
  EG_CHECK(::close(fd_) == 0, path_, ": close failed (", errno_text(), ")");
  fd_ = -1;
  EG_CHECK(::rename(tmp_path_.c_str(), path_.c_str()) == 0, path_, ": rename from ", tmp_path_, " failed (",
           errno_text(), ")");
  committed_ = true;
  fsync_directory(path_);
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  AtomicFile f(path);
  f.write(contents);
  f.commit();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EG_CHECK(in.good(), path, ": cannot open file for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  EG_CHECK(!in.bad(), path, ": read failed");
  return ss.str();
}

void ensure_writable_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  EG_CHECK(!ec, dir, ": cannot create directory (", ec.message(), ")");
  EG_CHECK(fs::is_directory(dir), dir, ": exists but is not a directory");
  const std::string probe = (fs::path(dir) / (".write_test." + std::to_string(::getpid()))).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  EG_CHECK(fd >= 0, dir, ": directory is not writable (", errno_text(), ")");
  ::close(fd);
  ::unlink(probe.c_str());
}

}  // namespace engram
