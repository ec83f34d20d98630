// This process's place in a fork() tree, for objects that hold what a parent's threads, rings
// and locks are made of: a child inherits them half-alive (no threads, shared kernel objects),
// and must neither use nor tear them down.
#pragma once

#include <cstdint>

namespace kvtier {

// Counts the fork()s between the process's start and this process: a child reads one more than
// its parent read at the fork. Objects record it when made and compare it before use.
uint64_t fork_generation();

}  // namespace kvtier
