// opgraph kernels: helpers shared by op_kernels.hpp, filter_kernels.hpp and
// group_kernels.hpp (included by each; namespace opgraph, so that the kernels' own
// namespaces opgraph::opk / filt / grp see them unqualified).
//
// * clamp_threads: how many threads a pass over n rows uses (at least min_per_thread rows
//   each, at least one thread).
// * parallel_for: f(0..nthreads-1) on threads (the caller runs f(0)); the first exception
//   (e.g. bad_alloc) is rethrown after every thread has finished, so that it reaches Python
//   instead of terminating the process.
// * PhaseTimer: OPGRAPH_KERNEL_TRACE=1 prints phase times (seconds) on stderr.
// * get_bit / load_bits: Arrow bitmaps (LSB first).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace opgraph {

inline int clamp_threads(int nthreads, int64_t n, int64_t min_per_thread = 1 << 16) {
  if (nthreads < 1) nthreads = 1;
  int64_t most = n / min_per_thread;
  if (most < 1) most = 1;
  if (nthreads > most) nthreads = static_cast<int>(most);
  return nthreads;
}

template <class F>
void parallel_for(int nthreads, F&& f) {
  if (nthreads <= 1) {
    f(0);
    return;
  }
  std::exception_ptr err;
  std::mutex mu;
  auto run = [&](int t) {
    try {
      f(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  };
  std::vector<std::thread> ts;
  ts.reserve(nthreads - 1);
  for (int t = 1; t < nthreads; ++t) ts.emplace_back([&run, t] { run(t); });
  run(0);
  for (auto& th : ts) th.join();
  if (err) std::rethrow_exception(err);
}

struct PhaseTimer {
  bool on;
  std::chrono::steady_clock::time_point t0;
  const char* what;
  const char* tag;
  explicit PhaseTimer(const char* w, const char* tg = "opk")
      : on(std::getenv("OPGRAPH_KERNEL_TRACE") != nullptr), t0(std::chrono::steady_clock::now()), what(w), tag(tg) {}
  void lap(const char* phase) {
    if (!on) return;
    auto t1 = std::chrono::steady_clock::now();
    std::fprintf(stderr, "[%s] %s %s %.4f\n", tag, what, phase, std::chrono::duration<double>(t1 - t0).count());
    t0 = t1;
  }
};

inline bool get_bit(const uint8_t* bits, int64_t i) { return (bits[i >> 3] >> (i & 7)) & 1; }

// nbits (<= 64) bits starting at bit_off, as the low bits of a word
inline uint64_t load_bits(const uint8_t* bits, int64_t bit_off, int64_t nbits) {
  const int64_t byte0 = bit_off >> 3;
  const int sh = static_cast<int>(bit_off & 7);
  const int64_t nbytes = (sh + nbits + 7) >> 3;
  uint8_t buf[16] = {0};
  std::memcpy(buf, bits + byte0, static_cast<size_t>(nbytes));
  uint64_t lo, hi;
  std::memcpy(&lo, buf, 8);
  std::memcpy(&hi, buf + 8, 8);
  uint64_t w = sh ? ((lo >> sh) | (hi << (64 - sh))) : lo;
  if (nbits < 64) w &= (uint64_t(1) << nbits) - 1;
  return w;
}

}  // namespace opgraph
