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
// * cached_alloc / cached_free, CachedAllocator, cvector: big temporary buffers (>= 1 MiB)
//   from a cache of anonymous mappings kept after use (up to OPGRAPH_KERNEL_CACHE_MB idle,
//   default 1024, per extension module; 0: none) instead of malloc, which maps and unmaps
//   them afresh each call: on this project's VM a fresh page costs 0.11-1.2 ms per MB
//   (measured, 500 MB at a time) against 0.06 ms per MB to rewrite a kept one, and a 10M
//   join's temporaries are ~0.5 GB.
#pragma once

#include <sys/mman.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <new>
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

namespace block_cache_detail {
constexpr size_t kMinBytes = size_t(1) << 20;  // smaller: malloc's own free lists do well
constexpr size_t kRound = size_t(2) << 20;     // a huge page
constexpr size_t kHeader = 64;                 // the mapping's size, in front of the block

struct Cache {
  std::mutex mu;
  std::multimap<size_t, char*> idle;  // mapping size -> mapping
  size_t idle_bytes = 0;
  size_t budget;
  Cache() {
    const char* v = std::getenv("OPGRAPH_KERNEL_CACHE_MB");
    budget = (v && *v) ? static_cast<size_t>(std::strtoull(v, nullptr, 10)) << 20 : size_t(1) << 30;
  }
};

inline Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: blocks may come back during exit
  return *c;
}
}  // namespace block_cache_detail

inline void* cached_alloc(size_t n) {
  namespace d = block_cache_detail;
  if (n < d::kMinBytes) {
    void* p = std::malloc(n ? n : 1);
    if (!p) throw std::bad_alloc();
    return p;
  }
  const size_t want = (n + d::kHeader + d::kRound - 1) / d::kRound * d::kRound;
  d::Cache& c = d::cache();
  char* base = nullptr;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.idle.lower_bound(want);
    if (it != c.idle.end() && it->first <= 2 * want) {  // not much bigger: no waste kept busy
      base = it->second;
      c.idle_bytes -= it->first;
      c.idle.erase(it);
    }
  }
  if (!base) {
    void* m = mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    madvise(m, want, MADV_HUGEPAGE);
#endif
    base = static_cast<char*>(m);
    *reinterpret_cast<size_t*>(base) = want;
  }
  return base + d::kHeader;
}

// n: the size given to cached_alloc (it says which way the block came)
inline void cached_free(void* p, size_t n) {
  namespace d = block_cache_detail;
  if (!p) return;
  if (n < d::kMinBytes) {
    std::free(p);
    return;
  }
  char* base = static_cast<char*>(p) - d::kHeader;
  const size_t size = *reinterpret_cast<size_t*>(base);
  d::Cache& c = d::cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.idle_bytes + size <= c.budget) {
      c.idle.emplace(size, base);
      c.idle_bytes += size;
      return;
    }
  }
  munmap(base, size);
}

// (idle bytes, budget) of the cache (tests, diagnostics)
inline void cached_stats(size_t* idle, size_t* budget) {
  block_cache_detail::Cache& c = block_cache_detail::cache();
  std::lock_guard<std::mutex> lock(c.mu);
  *idle = c.idle_bytes;
  *budget = c.budget;
}

template <class T>
struct CachedAllocator {
  using value_type = T;
  CachedAllocator() = default;
  template <class U>
  CachedAllocator(const CachedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(cached_alloc(n * sizeof(T))); }
  void deallocate(T* p, size_t n) { cached_free(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const CachedAllocator<U>&) const { return true; }
  template <class U>
  bool operator!=(const CachedAllocator<U>&) const { return false; }
};

template <class T>
using cvector = std::vector<T, CachedAllocator<T>>;

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
