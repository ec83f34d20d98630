// Folders another local user cannot have prepared: the file tier's folder is walked from the
// root one component at a time (as systemd's chase() does), each component opened relative to
// its parent without following a planted link, and each checked the way OpenSSH's safe_path
// checks a home: owned by root or the caller, and writable by nobody else (or sticky, as /tmp
// and /var/tmp are, where others cannot rename or remove what is not theirs). The folders the
// tier keeps its files in must be the caller's own and writable by it alone.
#pragma once

#include <string>

#include "src/status.h"

namespace kvtier {

// Opens `path` as a folder only the caller controls, creating what is missing (mode 0700), and
// making private (with a log line naming it) one that others can read or enter;
// *fd is an O_PATH descriptor to open files relative to. KVTIER_ERR_DENIED, naming the path and
// what is wrong, for a folder that is not safe; KVTIER_ERR_IO when it cannot be created or read.
Status open_private_dir(const std::string& path, int* fd);
// The same for `name`, one component, inside the private folder `parent`.
Status open_private_subdir(int parent, const std::string& parent_path, const std::string& name,
                           int* fd);
// Opens (creating, mode 0600) the regular file `name` in the private folder `dir`, never
// through a link, making it private (with a log line) if others could read it; -1 with errno
// set on failure (ELOOP for a link).
int open_private_file(int dir, const std::string& name, int flags);

}  // namespace kvtier
