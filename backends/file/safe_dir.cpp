#include "backends/file/safe_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "src/log.h"

namespace kvtier {

namespace {

Status io_error(const std::string& what, const std::string& path, int err) {
  return {KVTIER_ERR_IO, "file tier: cannot " + what + " " + path + ": " + std::strerror(err)};
}

Status unsafe(const std::string& path, const std::string& why) {
  return {KVTIER_ERR_DENIED, "file tier: refusing " + path + ": " + why +
                                 " (another user could plant links or read pages there)"};
}

// A folder on the way: root's or the caller's, and not writable by others unless sticky.
Status check_ancestor(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return io_error("stat", path, errno);
  if (st.st_uid != 0 && st.st_uid != ::geteuid())
    return unsafe(path, "it belongs to uid " + std::to_string(st.st_uid));
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))
    return unsafe(path, "others can write to it and it is not sticky");
  return {};
}

// A folder the tier keeps files in: the caller's, writable by the caller alone, and readable by
// it alone: one that others can read or enter (a restore, an older version) is made private.
Status check_private(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return io_error("stat", path, errno);
  if (st.st_uid != ::geteuid())
    return unsafe(path, "it belongs to uid " + std::to_string(st.st_uid) + ", not to uid " +
                            std::to_string(::geteuid()));
  if (st.st_mode & (S_IWGRP | S_IWOTH)) return unsafe(path, "group or others can write to it");
  if (st.st_mode & 077) {
    const int rd = ::openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);  // fd is O_PATH
    const bool made = rd >= 0 && ::fchmod(rd, st.st_mode & 07700) == 0;
    const int err = errno;
    if (rd >= 0) ::close(rd);
    if (!made) return io_error("make private", path, err);
    log().warn("file tier: {} was open to other users (mode {:o}); made {:o}", path,
               st.st_mode & 07777, st.st_mode & 07700);
  }
  return {};
}

// Opens the folder `name` in `parent`, creating it (0700) if missing. A link is followed only on
// the way (`follow_trusted`) and only if root or the caller made it.
Status open_component(int parent, const std::string& name, const std::string& path,
                      bool follow_trusted, int* out) {
  constexpr int kFlags = O_PATH | O_DIRECTORY | O_CLOEXEC;
  int fd = ::openat(parent, name.c_str(), kFlags | O_NOFOLLOW);
  if (fd < 0 && errno == ENOENT) {
    if (::mkdirat(parent, name.c_str(), 0700) != 0 && errno != EEXIST)
      return io_error("create", path, errno);
    fd = ::openat(parent, name.c_str(), kFlags | O_NOFOLLOW);
  }
  if (fd < 0 && (errno == ELOOP || errno == ENOTDIR)) {
    struct stat link {};
    if (::fstatat(parent, name.c_str(), &link, AT_SYMLINK_NOFOLLOW) != 0)
      return io_error("stat", path, errno);
    if (!S_ISLNK(link.st_mode)) return unsafe(path, "it is not a folder");
    if (!follow_trusted) return unsafe(path, "it is a symbolic link");
    if (link.st_uid != 0 && link.st_uid != ::geteuid())
      return unsafe(path, "it is a symbolic link of uid " + std::to_string(link.st_uid));
    fd = ::openat(parent, name.c_str(), kFlags);
  }
  if (fd < 0) return io_error("open", path, errno);
  *out = fd;
  return {};
}

}  // namespace

Status open_private_dir(const std::string& path, int* out) {
  if (path.empty()) return {KVTIER_ERR_CONFIG, "KVTIER_FILE_DIR is empty"};
  std::vector<std::string> parts;
  for (size_t at = 0; at <= path.size();) {
    size_t slash = path.find('/', at);
    if (slash == std::string::npos) slash = path.size();
    std::string part = path.substr(at, slash - at);
    if (!part.empty() && part != ".") parts.push_back(std::move(part));
    at = slash + 1;
  }
  std::string walked = path[0] == '/' ? "" : ".";
  int cur = ::open(path[0] == '/' ? "/" : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (cur < 0) return io_error("open", path[0] == '/' ? "/" : ".", errno);
  Status s = parts.empty() ? check_private(cur, path) : check_ancestor(cur, walked + "/");
  for (size_t i = 0; i < parts.size() && s.is_ok(); ++i) {
    const bool last = i + 1 == parts.size();
    walked += "/" + parts[i];
    int next = -1;
    s = open_component(cur, parts[i], walked, !last, &next);
    if (!s.is_ok()) break;
    ::close(cur);
    cur = next;
    s = last ? check_private(cur, walked) : check_ancestor(cur, walked);
  }
  if (!s.is_ok()) {
    ::close(cur);
    return s;
  }
  *out = cur;
  return {};
}

Status open_private_subdir(int parent, const std::string& parent_path, const std::string& name,
                           int* out) {
  const std::string path = parent_path + "/" + name;
  int fd = -1;
  Status s = open_component(parent, name, path, false, &fd);
  if (s.is_ok()) s = check_private(fd, path);
  if (!s.is_ok()) {
    if (fd >= 0) ::close(fd);
    return s;
  }
  *out = fd;
  return {};
}

int open_private_file(int dir, const std::string& name, int flags) {
  int fd = ::openat(dir, name.c_str(), flags | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid()) {
    ::close(fd);
    errno = EPERM;
    return -1;
  }
  if (st.st_mode & 077) {  // left open to others (a restore, an older version): made private
    char folder[PATH_MAX] = {};
    const std::string link = "/proc/self/fd/" + std::to_string(dir);
    if (::readlink(link.c_str(), folder, sizeof folder - 1) < 0) folder[0] = '\0';
    if (::fchmod(fd, st.st_mode & 07700) != 0) {
      const int err = errno;
      ::close(fd);
      errno = err;
      return -1;
    }
    log().warn("file tier: {}/{} was open to other users (mode {:o}); made {:o}", folder, name,
               st.st_mode & 07777, st.st_mode & 07700);
  }
  return fd;
}

}  // namespace kvtier
