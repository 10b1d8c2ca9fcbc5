// parallel_for over [0, n): a few std::threads per call, each taking items from a shared
// counter. Ranks are themselves threads, so the count divides the cores among the callers
// that are inside a kernel at the same moment instead of oversubscribing them.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace ra::cpu {

inline int hardware_threads() {
  static const int n = [] {
    const int cores = std::max(1, int(std::thread::hardware_concurrency()));
    if (const char* env = std::getenv("RING_ATTENTION_NUM_THREADS")) {
      int v = std::atoi(env);
      if (v > 0) return std::min(v, 4 * cores);  // more than that only costs thread creation
    }
    return cores;
  }();
  return n;
}

// Callers inside parallel_for right now, across all kernels and ranks.
inline std::atomic<int> active_callers{0};

template <typename F>
void parallel_for(int64_t n, F&& fn) {
  int callers = ++active_callers;
  int threads = int(std::min<int64_t>(n, std::max(1, hardware_threads() / std::max(1, callers))));
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
  auto worker = [&] {
    try {
      for (int64_t i; (i = next.fetch_add(1)) < n;) fn(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      next.store(n);
    }
  };
  std::vector<std::thread> pool;
  try {
    pool.reserve(size_t(threads));
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  } catch (...) {
    // The system gave fewer threads than asked (std::system_error), or no memory for their
    // handles (std::bad_alloc, the vector left as it was): the ones we have share the work. Any
    // other escape would destroy joinable threads (std::terminate) and leave active_callers up.
  }
  worker();
  for (auto& t : pool) t.join();
  --active_callers;
  if (error) std::rethrow_exception(error);
}

}  // namespace ra::cpu
