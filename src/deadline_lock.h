// Waits for a lock with a deadline: lock_until() for any pthread mutex (the file tier's
// process-shared robust one), DeadlineLock for a mutex of the process that std::unique_lock's
// try_lock_until works on. Both wait in lock_until(), the one place that knows this: GCC 12's
// ThreadSanitizer does not intercept pthread_mutex_clocklock (what std::timed_mutex waits with),
// and its pthread_mutex_timedlock does not count a lock taken with EOWNERDEAD as held; either way
// it then reports the unlock as one of an unlocked mutex. Its trylock handles both, so under it a
// timed wait is a trylock loop to the same deadline.
#pragma once

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <thread>

namespace kvtier {

// The CLOCK_MONOTONIC instant `ns` nanoseconds from now.
inline timespec monotonic_after(int64_t ns) {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  const int64_t sum = t.tv_nsec + std::max<int64_t>(ns, 0);
  t.tv_sec += static_cast<time_t>(sum / 1'000'000'000);
  t.tv_nsec = static_cast<long>(sum % 1'000'000'000);
  return t;
}

// Locks `mu` (of any kind: process-shared, robust) unless `deadline` (CLOCK_MONOTONIC) passes
// first; a mutex that is free is taken even when the deadline has passed.
// @return : 0; EOWNERDEAD (taken, its last holder died holding it: see
//           pthread_mutex_consistent); ETIMEDOUT; or another error of pthread_mutex_clocklock.
inline int lock_until(pthread_mutex_t* mu, const timespec& deadline) {
#if defined(__SANITIZE_THREAD__)
  for (;;) {
    const int rc = pthread_mutex_trylock(mu);
    if (rc != EBUSY) return rc;
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec > deadline.tv_sec ||
        (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec))
      return ETIMEDOUT;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
#else
  return pthread_mutex_clocklock(mu, CLOCK_MONOTONIC, &deadline);
#endif
}

// A mutex whose waiters can give up at a deadline (of any clock): std::unique_lock's
// try_lock_until works on it as on std::timed_mutex.
class DeadlineLock {
 public:
  DeadlineLock() = default;
  ~DeadlineLock() { pthread_mutex_destroy(&mu_); }
  DeadlineLock(const DeadlineLock&) = delete;
  DeadlineLock& operator=(const DeadlineLock&) = delete;
  void lock() { pthread_mutex_lock(&mu_); }
  bool try_lock() { return pthread_mutex_trylock(&mu_) == 0; }
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - Clock::now());
    return lock_until(&mu_, monotonic_after(left.count())) == 0;
  }
  void unlock() { pthread_mutex_unlock(&mu_); }

 private:
  pthread_mutex_t mu_ = PTHREAD_MUTEX_INITIALIZER;
};

}  // namespace kvtier
