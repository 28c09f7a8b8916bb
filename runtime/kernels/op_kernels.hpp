// opgraph operator kernels: radix sort indices, partitioned hash join (int64 keys),
// multithreaded gather ("take") and filter-to-indices, range partitioning by splitters.
//
// Why our own: on the 2-core reference machine pyarrow's sort_indices is ~3x slower than
// DuckDB's sort and Acero's hash join ~1.3x slower than DuckDB's; Arrow's take/filter run
// single-threaded per column. Everything here works on raw Arrow buffers (values, validity
// bitmaps) and never touches Python objects: the Cython layer (opkernels.pyx) releases the
// GIL around every call.
//
// Algorithms
// * sort_indices: every key column is mapped to an order-preserving uint64 ("radix key":
//   int64 -> x ^ 2^63; float64 -> IEEE bits with the sign flipped / all bits inverted for
//   negatives, -0.0 == +0.0, every NaN after +inf; descending = ~key with NaN kept last).
//   One stable MSD pass on the most significant byte that varies (parallel histogram and
//   scatter), then an LSD radix sort of every bucket in cache (buckets spread over
//   threads), skipping bytes that are constant within the bucket. Several keys: LSD over
//   the keys (last key first), each a stable sort of the current order. Nulls last: a
//   stable partition by the validity bit after each key's pass. The result is Arrow's
//   stable order (nulls last, NaN after numbers, before nulls).
// * hash_join_i64: radix-partitioned hash join. Both sides are scattered (parallel,
//   stable) into 2^b partitions by the top bits of a multiplicative hash, so that one
//   partition's build side fits in L2; then per partition (spread over threads) an
//   open-addressing table with chained duplicates is built on the right rows and probed
//   with the left rows. Null keys never match (emitted unmatched for outer kinds).
//   Output: (left index, right index) pairs, -1 for the missing side of an outer match,
//   ordered by partition (row order of a join result is unspecified, as in SQL).
// * take: gather of fixed-width values / bits / validity by int32/int64 indices (negative
//   index -> null), rows split over threads (bitmap ranges aligned to 64 rows).
// * mask_to_indices: positions of the true (and valid) bits of a boolean mask (parallel:
//   count per range, then write), the filter's selection vector.
// * range_partition: for sample sort, each row's part given n-1 splitter rows (radix keys
//   + null flags per key column, lexicographic, nulls last): binary search per row.
// * sort_carry: a 64-bit key and one narrow column sorted together as pairs (no gather).
// * node-shared sort (bucket_hist / bucket_scatter / sort_buckets): the sort of ranks that
//   share a machine's memory, (radix key, row) pairs bucketed into one shared array and
//   the buckets sorted by whichever rank takes them from a shared counter.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <numeric>
#include <thread>
#include <vector>

#include "kernel_common.hpp"

namespace opgraph {
namespace opk {

// Uninitialised scratch (std::vector would zero-fill hundreds of MB first).
template <class T>
struct RawBuf {
  T* p = nullptr;
  RawBuf() = default;
  explicit RawBuf(int64_t m) { resize(m); }
  RawBuf(const RawBuf&) = delete;
  RawBuf& operator=(const RawBuf&) = delete;
  size_t bytes = 0;
  ~RawBuf() { cached_free(p, bytes); }
  void resize(int64_t m) {
    cached_free(p, bytes);
    p = nullptr;
    bytes = static_cast<size_t>(m > 0 ? m : 1) * sizeof(T);
    p = static_cast<T*>(cached_alloc(bytes));
  }
  T* data() { return p; }
  T& operator[](int64_t i) { return p[i]; }
};

struct KeyRow {
  int64_t k;
  int64_t i;
};

// ------------------------------------------------------------------------ radix keys

enum KeyKind : int { KEY_INT64 = 1, KEY_UINT64 = 2, KEY_FLOAT64 = 3 };

constexpr uint64_t kSign = 0x8000000000000000ULL;

inline uint64_t radix_key(int kind, const void* values, int64_t i, bool desc) {
  uint64_t k;
  if (kind == KEY_INT64) {
    k = static_cast<uint64_t>(static_cast<const int64_t*>(values)[i]) ^ kSign;
  } else if (kind == KEY_UINT64) {
    k = static_cast<const uint64_t*>(values)[i];
  } else {
    double d = static_cast<const double*>(values)[i];
    if (std::isnan(d)) return ~0ULL;  // NaN after every number, both directions
    if (d == 0.0) d = 0.0;            // -0.0 sorts equal to +0.0
    uint64_t b;
    std::memcpy(&b, &d, 8);
    k = (b & kSign) ? ~b : (b | kSign);
    if (desc) {
      k = ~k;  // never ~0: ~k == ~0 only for k == 0, a NaN pattern
      return k;
    }
    return k;
  }
  return desc ? ~k : k;
}

// The radix key of a 64-bit integer key (KEY_INT64 / KEY_UINT64) is its value XOR this
// (the sign bit of signed storage; every bit when descending): the map is its own inverse.
inline uint64_t integer_radix_flip(int kind, bool desc) { return (kind == KEY_INT64 ? kSign : 0) ^ (desc ? ~0ULL : 0); }

// Integer key values back from (sorted) radix keys taken relative to base:
// out[i] = (keys[i] + base) ^ integer_radix_flip(kind, desc); out may be keys.
inline void unradix_keys(const uint64_t* keys, int64_t n, uint64_t base, int kind, bool desc, uint64_t* out, int nthreads) {
  const uint64_t flip = integer_radix_flip(kind, desc);
  const int nt = clamp_threads(nthreads, n);
  parallel_for(nt, [&](int t) {
    for (int64_t i = n * t / nt, e = n * (t + 1) / nt; i < e; ++i) out[i] = (keys[i] + base) ^ flip;
  });
}

struct SortKey {
  int kind;
  const void* values;  // already offset by the array's offset
  const uint8_t* validity;  // bitmap or null (no nulls)
  int64_t validity_offset;
  int desc;
};

// Stable LSD radix sort of (keys, idx)[0, n) on the given byte positions, ping-ponging
// with (tk, ti); the result ends in (keys, idx).
template <class IdxT>
void lsd_sort(uint64_t* keys, IdxT* idx, uint64_t* tk, IdxT* ti, int64_t n, const int* bytes, int nbytes) {
  uint64_t* sk = keys;
  IdxT* si = idx;
  uint64_t* dk = tk;
  IdxT* di = ti;
  int64_t cnt[256];
  for (int b = 0; b < nbytes; ++b) {
    const int shift = bytes[b] * 8;
    std::memset(cnt, 0, sizeof(cnt));
    for (int64_t i = 0; i < n; ++i) cnt[(sk[i] >> shift) & 0xff]++;
    int64_t s = 0;
    for (int d = 0; d < 256; ++d) {
      int64_t c = cnt[d];
      cnt[d] = s;
      s += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      int64_t p = cnt[(sk[i] >> shift) & 0xff]++;
      dk[p] = sk[i];
      di[p] = si[i];
    }
    std::swap(sk, dk);
    std::swap(si, di);
  }
  if (sk != keys) {
    std::memcpy(keys, sk, n * sizeof(uint64_t));
    std::memcpy(idx, si, n * sizeof(IdxT));
  }
}

// Stable sort of one bucket (bk, bi)[0, m) in place, by LSD on the bytes that vary within
// it (the bytes its keys share, e.g. the MSD digit, cost nothing); tk/ti: scratch of m.
template <class IdxT>
void sort_bucket(uint64_t* bk, IdxT* bi, uint64_t* tk, IdxT* ti, int64_t m) {
  if (m <= 1) return;
  uint64_t all_and = ~0ULL, all_or = 0;
  for (int64_t i = 0; i < m; ++i) {
    all_and &= bk[i];
    all_or |= bk[i];
  }
  const uint64_t diff = all_and ^ all_or;
  int bytes[8];
  int nb = 0;
  for (int b = 0; b < 8; ++b)
    if ((diff >> (b * 8)) & 0xff) bytes[nb++] = b;
  if (nb) lsd_sort(bk, bi, tk, ti, m, bytes, nb);
}

// Stable sort of (keys, idx)[0, n) by keys; tk/ti are scratch of n elements.
template <class IdxT>
void sort_pairs(uint64_t* keys, IdxT* idx, uint64_t* tk, IdxT* ti, int64_t n, int nthreads) {
  if (n <= 1) return;
  nthreads = clamp_threads(nthreads, n);
  // histograms of all 8 bytes (one read), per thread
  std::vector<int64_t> hist(static_cast<size_t>(nthreads) * 8 * 256, 0);
  parallel_for(nthreads, [&](int t) {
    int64_t lo = n * t / nthreads, hi = n * (t + 1) / nthreads;
    int64_t* h = &hist[static_cast<size_t>(t) * 8 * 256];
    for (int64_t i = lo; i < hi; ++i) {
      uint64_t k = keys[i];
      for (int b = 0; b < 8; ++b) h[b * 256 + ((k >> (b * 8)) & 0xff)]++;
    }
  });
  int varying[8];
  int nvar = 0;
  for (int b = 0; b < 8; ++b) {
    int nonzero = 0;
    for (int d = 0; d < 256 && nonzero < 2; ++d) {
      int64_t c = 0;
      for (int t = 0; t < nthreads; ++t) c += hist[(static_cast<size_t>(t) * 8 + b) * 256 + d];
      if (c) nonzero++;
    }
    if (nonzero > 1) varying[nvar++] = b;
  }
  if (nvar == 0) return;
  if (n < (1 << 15)) {
    lsd_sort(keys, idx, tk, ti, n, varying, nvar);
    return;
  }
  // MSD pass on the most significant varying byte: keys/idx -> tk/ti, stable
  const int msd = varying[nvar - 1];
  const int shift = msd * 8;
  std::vector<int64_t> off(static_cast<size_t>(nthreads) * 256);
  std::vector<int64_t> bstart(257, 0);
  {
    int64_t s = 0;
    for (int d = 0; d < 256; ++d) {
      bstart[d] = s;
      for (int t = 0; t < nthreads; ++t) {
        off[static_cast<size_t>(t) * 256 + d] = s;
        s += hist[(static_cast<size_t>(t) * 8 + msd) * 256 + d];
      }
    }
    bstart[256] = s;
  }
  parallel_for(nthreads, [&](int t) {
    int64_t lo = n * t / nthreads, hi = n * (t + 1) / nthreads;
    int64_t* o = &off[static_cast<size_t>(t) * 256];
    for (int64_t i = lo; i < hi; ++i) {
      uint64_t k = keys[i];
      int64_t p = o[(k >> shift) & 0xff]++;
      tk[p] = k;
      ti[p] = idx[i];
    }
  });
  // every bucket: LSD on its varying bytes in cache, in (tk, ti) with (keys, idx) as
  // scratch, then copied to (keys, idx)
  std::atomic<int> next(0);
  parallel_for(nthreads, [&](int) {
    for (;;) {
      int d = next.fetch_add(1);
      if (d >= 256) break;
      int64_t lo = bstart[d], m = bstart[d + 1] - bstart[d];
      if (m == 0) continue;
      sort_bucket(tk + lo, ti + lo, keys + lo, idx + lo, m);
      std::memcpy(keys + lo, tk + lo, m * sizeof(uint64_t));
      std::memcpy(idx + lo, ti + lo, m * sizeof(IdxT));
    }
  });
}

// Stable partition of idx[0, n): rows whose key k is valid first, nulls after.
template <class IdxT>
void partition_nulls(IdxT* idx, IdxT* tmp, int64_t n, const SortKey& k) {
  int64_t j = 0;
  int64_t nulls = 0;
  for (int64_t i = 0; i < n; ++i) {
    IdxT r = idx[i];
    if (get_bit(k.validity, k.validity_offset + static_cast<int64_t>(r))) {
      idx[j++] = r;
    } else {
      tmp[nulls++] = r;
    }
  }
  std::memcpy(idx + j, tmp, nulls * sizeof(IdxT));
}

// Stable sort order of n rows by the keys (first key most significant) into out[0, n).
// values_out (may be null): for one integer key without nulls (KEY_INT64/KEY_UINT64, whose
// radix keys map back to the values one to one), the key values in sorted order: the
// radix buffer already holds them, so the caller need not gather the key column by `out`
// (a random-access pass: ~15% of a 10M-row sort by one int64 key, measured).
template <class IdxT>
void k_sort_indices(const SortKey* ks, int nkeys, int64_t n, IdxT* out, int nthreads, uint64_t* values_out = nullptr) {
  if (n == 0) return;
  PhaseTimer timer("sort");
  RawBuf<uint64_t> keys(n), tk(n);
  RawBuf<IdxT> ti(n);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<IdxT>(i);
  int nt = clamp_threads(nthreads, n);
  for (int j = nkeys - 1; j >= 0; --j) {
    const SortKey& k = ks[j];
    const bool desc = k.desc != 0;
    bool first = (j == nkeys - 1);
    parallel_for(nt, [&](int t) {
      int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
      // null rows get one constant key, so the pass keeps their current (stable) order
      for (int64_t i = lo; i < hi; ++i) {
        int64_t r = first ? i : static_cast<int64_t>(out[i]);
        keys[i] = (k.validity && !get_bit(k.validity, k.validity_offset + r)) ? 0 : radix_key(k.kind, k.values, r, desc);
      }
    });
    timer.lap("keys");
    sort_pairs<IdxT>(keys.data(), out, tk.data(), ti.data(), n, nthreads);
    timer.lap("radix");
    if (k.validity) partition_nulls<IdxT>(out, ti.data(), n, k);
  }
  if (values_out != nullptr && nkeys == 1 && !ks[0].validity && ks[0].kind != KEY_FLOAT64)
    unradix_keys(keys.data(), n, 0, ks[0].kind, ks[0].desc != 0, values_out, nt);
}

// A table of one 64-bit integer key without nulls and one narrow column (4 or 8 bytes,
// no nulls): both sorted together as (radix key, value) pairs, so nothing is gathered
// afterwards (the gather of the column by the order is a random-access pass: on 10M rows,
// one thread, the pairs' sort took 0.40-0.43 s against 0.46-0.51 s for order + gather).
// keys_out: the sorted key values; pay_out: the column's values in that order.
template <class PayT>
void k_sort_carry(const SortKey& k, int64_t n, const PayT* payload, uint64_t* keys_out, PayT* pay_out, int nthreads) {
  if (n == 0) return;
  PhaseTimer timer("sort-carry");
  const uint64_t flip = integer_radix_flip(k.kind, k.desc != 0);
  const uint64_t* v = static_cast<const uint64_t*>(k.values);
  const int nt = clamp_threads(nthreads, n);
  parallel_for(nt, [&](int t) {
    for (int64_t i = n * t / nt, e = n * (t + 1) / nt; i < e; ++i) {
      keys_out[i] = v[i] ^ flip;
      pay_out[i] = payload[i];
    }
  });
  timer.lap("keys");
  RawBuf<uint64_t> tk(n);
  RawBuf<PayT> tp(n);
  sort_pairs<PayT>(keys_out, pay_out, tk.data(), tp.data(), n, nthreads);
  timer.lap("radix");
  unradix_keys(keys_out, n, 0, k.kind, k.desc != 0, keys_out, nthreads);
}

// ------------------------------------------------------------------ node-shared sort
// The sort of ranks that share one machine's memory (parallel_ops._node_shared_sort), in
// place of the sample sort's exchange: every rank scatters the (radix key, global row)
// pairs of its rows straight into one shared array, bucketed by the top bits of (radix key
// - the smallest key) (each bucket holds the ranks' rows in rank order, i.e. in global
// row order, so the sort stays stable); then every thread of every rank takes buckets from
// one shared counter and sorts them in place in cache (sort_bucket), so a rank slowed down
// by the machine gets fewer buckets; then each rank gathers its contiguous share of the
// order. Null keys form one last bucket, left in row order (nulls last).

inline bool sort_key_null(const SortKey& k, int64_t i) {
  return k.validity && !get_bit(k.validity, k.validity_offset + i);
}

// f(key_at, null_at) with key_at(i) = row i's radix key and null_at(i) = whether row i is
// null: a branch-free lambda for the common 64-bit integer key without nulls (bucket_hist
// of 5M int64 keys: 0.007 s, against 0.028 s through radix_key with a validity check per
// row, measured), else the generic.
template <class F>
void with_sort_key(const SortKey& k, F&& f) {
  const bool desc = k.desc != 0;
  auto never = [](int64_t) { return false; };
  if (!k.validity && (k.kind == KEY_INT64 || k.kind == KEY_UINT64)) {
    const uint64_t* v = static_cast<const uint64_t*>(k.values);
    const uint64_t flip = integer_radix_flip(k.kind, desc);
    f([=](int64_t i) { return v[i] ^ flip; }, never);
  } else if (!k.validity) {
    f([&](int64_t i) { return radix_key(k.kind, k.values, i, desc); }, never);
  } else {
    f([&](int64_t i) { return radix_key(k.kind, k.values, i, desc); }, [&](int64_t i) { return sort_key_null(k, i); });
  }
}

// Smallest and largest radix key of the valid rows (*any = 0 when no row is valid).
inline void k_sort_key_range(const SortKey& k, int64_t n, uint64_t* lo, uint64_t* hi, int* any, int nthreads) {
  const int nt = clamp_threads(nthreads, n);
  std::vector<uint64_t> tlo(nt, ~0ULL), thi(nt, 0);
  std::vector<char> seen(nt, 0);
  with_sort_key(k, [&](auto key_at, auto null_at) {
    parallel_for(nt, [&](int t) {
      uint64_t a = ~0ULL, b = 0;
      bool got = false;
      for (int64_t i = n * t / nt, e = n * (t + 1) / nt; i < e; ++i) {
        if (null_at(i)) continue;
        const uint64_t key = key_at(i);
        a = std::min(a, key);
        b = std::max(b, key);
        got = true;
      }
      tlo[t] = a, thi[t] = b, seen[t] = got;
    });
  });
  *lo = ~0ULL, *hi = 0, *any = 0;
  for (int t = 0; t < nt; ++t) {
    if (!seen[t]) continue;
    *lo = std::min(*lo, tlo[t]);
    *hi = std::max(*hi, thi[t]);
    *any = 1;
  }
}

inline int bucket_threads(int nthreads, int64_t n) { return clamp_threads(nthreads, n); }

// Rows per bucket, per thread: hist[t * (nb + 1) + d] for the rows of thread t's range
// (nt = bucket_threads(...) ranges); bucket = ((radix key - base) >> shift) & (nb - 1),
// null rows in bucket nb.
inline void k_bucket_hist(const SortKey& k, int64_t n, uint64_t base, int shift, int nb, int nt, int64_t* hist) {
  const uint64_t mask = static_cast<uint64_t>(nb - 1);
  std::fill(hist, hist + static_cast<int64_t>(nt) * (nb + 1), 0);
  with_sort_key(k, [&](auto key_at, auto null_at) {
    parallel_for(nt, [&](int t) {
      int64_t* h = hist + static_cast<int64_t>(t) * (nb + 1);
      for (int64_t i = n * t / nt, e = n * (t + 1) / nt; i < e; ++i)
        h[null_at(i) ? nb : static_cast<int>(((key_at(i) - base) >> shift) & mask)]++;
    });
  });
}

// Every row's (radix key - base, row0 + row) to position off[t * (nb + 1) + bucket]++ of
// (keys, rows), t the thread whose range holds the row (the same ranges as k_bucket_hist's;
// off: the caller's first position per thread and bucket). Null rows get key 0. Keys are
// stored relative to base, so a bucket's LSD passes skip the high bytes all its keys share
// (keys either side of 2^63, e.g. small negative and positive ints, share none absolutely).
// False (and that row and the rest of its range not written) when a position falls
// outside [0, limit).
// carry (may be null): rows[p] = carry[row] instead of the row number (a narrow column
// sorted along with the key, so nothing is gathered afterwards).
template <class IdxT>
bool k_bucket_scatter(const SortKey& k, int64_t n, uint64_t base, int shift, int nb, int nt, int64_t* off, uint64_t* keys,
                      IdxT* rows, int64_t row0, int64_t limit, const IdxT* carry) {
  const uint64_t mask = static_cast<uint64_t>(nb - 1);
  std::atomic<bool> ok(true);
  with_sort_key(k, [&](auto key_at, auto null_at) {
    parallel_for(nt, [&](int t) {
      int64_t* o = off + static_cast<int64_t>(t) * (nb + 1);
      for (int64_t i = n * t / nt, e = n * (t + 1) / nt; i < e; ++i) {
        const bool null = null_at(i);
        const uint64_t key = null ? 0 : key_at(i) - base;
        const int64_t p = o[null ? nb : static_cast<int>((key >> shift) & mask)]++;
        if (static_cast<uint64_t>(p) >= static_cast<uint64_t>(limit)) {  // (offsets not from this column)
          ok = false;
          return;
        }
        keys[p] = key;
        rows[p] = carry ? carry[i] : static_cast<IdxT>(row0 + i);
      }
    });
  });
  return ok;
}

// Sorts the buckets [bstart[d], bstart[d + 1]) of (keys, rows), d < nbuckets, taking them
// from *next (in shared memory: zero before the first rank starts; every thread of every
// rank takes from it) until none is left.
template <class IdxT>
void k_sort_buckets(uint64_t* keys, IdxT* rows, const int64_t* bstart, int nbuckets, int64_t* next, int nthreads) {
  static_assert(std::atomic<int64_t>::is_always_lock_free, "a lock-free counter works across processes");
  auto* counter = reinterpret_cast<std::atomic<int64_t>*>(next);
  int64_t largest = 0;
  for (int d = 0; d < nbuckets; ++d) largest = std::max(largest, bstart[d + 1] - bstart[d]);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // (the caller's barrier orders the scatter)
  parallel_for(std::max(1, std::min(nthreads, nbuckets)), [&](int) {
    RawBuf<uint64_t> tk(largest);
    RawBuf<IdxT> ti(largest);
    for (;;) {
      const int64_t d = counter->fetch_add(1, std::memory_order_relaxed);
      if (d >= nbuckets) break;
      sort_bucket(keys + bstart[d], rows + bstart[d], tk.data(), ti.data(), bstart[d + 1] - bstart[d]);
    }
  });
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

// ---------------------------------------------------------------------------- join

enum JoinHow : int { JOIN_INNER = 0, JOIN_LEFT = 1, JOIN_RIGHT = 2, JOIN_OUTER = 3 };

constexpr uint64_t kMul = 0x9e3779b97f4a7c15ULL;

struct JoinResult {
  std::vector<cvector<int64_t>> li, ri;  // per partition / left row block (+1 for the rest)
  int64_t total = 0;
  int ordered = 0;  // 1: inner/left matches in left-row order (the sequential probe)
  JoinResult* finish() {
    total = 0;
    for (auto& v : li) total += static_cast<int64_t>(v.size());
    return this;
  }
};

// Scatter the valid rows of keys into nparts partitions (stable); returns the partition
// starts (nparts+1). Null-key rows go to `nulls` (ascending).
inline std::vector<int64_t> partition_side(const int64_t* k, const uint8_t* valid, int64_t voff, int64_t n, int bits,
                                           int nthreads, RawBuf<KeyRow>& rows,
                                           std::vector<int64_t>& nulls) {
  const int64_t nparts = int64_t(1) << bits;
  const int sh = 64 - bits;
  auto part_of = [&](int64_t key) -> int64_t {
    return bits ? static_cast<int64_t>((static_cast<uint64_t>(key) * kMul) >> sh) : 0;
  };
  int nt = clamp_threads(nthreads, n);
  std::vector<int64_t> hist(static_cast<size_t>(nt) * (nparts + 1), 0);  // [.., nulls]
  parallel_for(nt, [&](int t) {
    int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    int64_t* h = &hist[static_cast<size_t>(t) * (nparts + 1)];
    if (valid) {
      for (int64_t i = lo; i < hi; ++i) {
        if (get_bit(valid, voff + i))
          h[part_of(k[i])]++;
        else
          h[nparts]++;
      }
    } else {
      for (int64_t i = lo; i < hi; ++i) h[part_of(k[i])]++;
    }
  });
  std::vector<int64_t> starts(nparts + 1, 0);
  std::vector<int64_t> off(static_cast<size_t>(nt) * (nparts + 1));
  int64_t s = 0;
  for (int64_t p = 0; p < nparts; ++p) {
    starts[p] = s;
    for (int t = 0; t < nt; ++t) {
      off[static_cast<size_t>(t) * (nparts + 1) + p] = s;
      s += hist[static_cast<size_t>(t) * (nparts + 1) + p];
    }
  }
  starts[nparts] = s;
  int64_t ns = 0;
  for (int t = 0; t < nt; ++t) {
    off[static_cast<size_t>(t) * (nparts + 1) + nparts] = ns;
    ns += hist[static_cast<size_t>(t) * (nparts + 1) + nparts];
  }
  rows.resize(s);
  nulls.resize(ns);
  parallel_for(nt, [&](int t) {
    int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    int64_t* o = &off[static_cast<size_t>(t) * (nparts + 1)];
    for (int64_t i = lo; i < hi; ++i) {
      if (valid && !get_bit(valid, voff + i)) {
        nulls[o[nparts]++] = i;
        continue;
      }
      int64_t key = k[i];
      int64_t p = o[part_of(key)]++;
      rows[p].k = key;
      rows[p].i = i;
    }
  });
  return starts;
}

// A thread's output vectors, built locally and moved into res->li/ri[slot] when the scope
// ends: push_back straight on res->li[slot] would write vector headers that share cache
// lines with other threads' (false sharing: 2 threads were slower than 1).
struct MoveOut {
  JoinResult* r;
  int slot;
  cvector<int64_t>& a;
  cvector<int64_t>& b;
  ~MoveOut() {
    r->li[slot] = std::move(a);
    r->ri[slot] = std::move(b);
  }
};

// The probe of a table built on the right rows (head/chain, looked up by `first(key)`):
// left row blocks spread over nt threads, results in left-row order (res->li/ri[t] per
// block). `matched` (or null) flags the right rows that matched (right/outer kinds);
// `dense_head` (or null): the direct-addressed table (key - mn, cap slots), whose unique-key
// inner/left case needs one load per row.
template <class First>
inline void probe_in_order(JoinResult* res, int nt, const int64_t* lk, const uint8_t* lvalid, int64_t lvoff,
                           int64_t nl, First first, const int32_t* chain, bool unique, bool keep_left,
                           uint8_t* matched, const int32_t* dense_head, int64_t mn, int64_t cap) {
  res->li.resize(nt + 1);
  res->ri.resize(nt + 1);
  parallel_for(nt, [&](int t) {
    const int64_t lo = nl * t / nt, hi = nl * (t + 1) / nt;
    cvector<int64_t> oli, ori;
    MoveOut done{res, t, oli, ori};
    oli.reserve(hi - lo);
    ori.reserve(hi - lo);
    if (unique && dense_head && !matched) {  // the common dimension-table case: one load per row
      const int32_t* hd = dense_head;
      constexpr int64_t kAhead = 16;  // prefetch distance: the table is often beyond L2
      for (int64_t i = lo; i < hi; ++i) {
        if (i + kAhead < hi) {
          const uint64_t ka = static_cast<uint64_t>(lk[i + kAhead]) - static_cast<uint64_t>(mn);
          if (ka < static_cast<uint64_t>(cap)) __builtin_prefetch(hd + ka);
        }
        const uint64_t ka = static_cast<uint64_t>(lk[i]) - static_cast<uint64_t>(mn);
        int32_t h = (ka >= static_cast<uint64_t>(cap) || (lvalid && !get_bit(lvalid, lvoff + i))) ? -1 : hd[ka];
        if (h >= 0 || keep_left) {
          oli.push_back(i);
          ori.push_back(h);
        }
      }
      return;
    }
    for (int64_t i = lo; i < hi; ++i) {
      int32_t h = -1;
      if (!lvalid || get_bit(lvalid, lvoff + i)) h = first(lk[i]);
      if (h < 0) {
        if (keep_left) {
          oli.push_back(i);
          ori.push_back(-1);
        }
        continue;
      }
      for (int32_t j = h; j >= 0; j = unique ? -1 : chain[j]) {
        oli.push_back(i);
        ori.push_back(j);
        if (matched) __atomic_store_n(&matched[j], static_cast<uint8_t>(1), __ATOMIC_RELAXED);
      }
    }
  });
}

// The build of a direct-addressed table (head[key - mn] = first row of the key, chain[row]
// = next row of the same key), restricted to the slots [slot_lo, slot_hi): several builders
// (threads, or ranks sharing memory) fill disjoint slot ranges from the same rows at once
// with plain stores. Rows: keys[starts[r] .. starts[r] + lens[r]) for each region r (row
// numbers count from keys; valid: their validity bits, or null where null rows hold a key
// outside the table). chain must hold -1 for every row beforehand (written only for a
// repeated key: no stores to lines another builder writes). Rows are visited last to
// first, so chains list rows ascending. Returns whether a key came twice in these slots.
inline bool dense_build_slots(const int64_t* keys, const uint8_t* valid, int64_t voff, const int64_t* starts,
                              const int64_t* lens, int nregions, int64_t mn, int64_t slot_lo, int64_t slot_hi,
                              int32_t* head, int32_t* chain) {
  std::fill(head + slot_lo, head + slot_hi, -1);
  const uint64_t lo = static_cast<uint64_t>(slot_lo), width = static_cast<uint64_t>(slot_hi - slot_lo);
  int32_t* own = head + slot_lo;
  bool dup = false;
  // per block of rows: first the rows of these slots, branch-free (about half the rows with
  // two builders: an if per row would be mispredicted every other row), then their
  // inserts, the random slot writes prefetched ahead
  constexpr int64_t kBlock = 2048, kAhead = 16;
  uint64_t slots[kBlock];
  int32_t rows[kBlock];
  for (int r = nregions - 1; r >= 0; --r) {
    const int64_t* k = keys + starts[r];
    for (int64_t end = lens[r]; end > 0; end -= kBlock) {
      const int64_t begin = std::max<int64_t>(0, end - kBlock);
      int64_t m = 0;
      for (int64_t j = end - 1; j >= begin; --j) {
        const uint64_t s = static_cast<uint64_t>(k[j]) - static_cast<uint64_t>(mn) - lo;
        const int64_t row = starts[r] + j;
        slots[m] = s;
        rows[m] = static_cast<int32_t>(row);
        m += (s < width) & (valid ? get_bit(valid, voff + row) : true);
      }
      for (int64_t i = 0; i < m; ++i) {
        if (i + kAhead < m) __builtin_prefetch(own + slots[i + kAhead], 1);
        const int32_t prev = own[slots[i]];
        if (prev >= 0) {
          chain[rows[i]] = prev;
          dup = true;
        }
        own[slots[i]] = rows[i];
      }
    }
  }
  return dup;
}

// The optimistic build of a direct-addressed table by several builders at once (threads,
// or ranks sharing memory), each storing only its own rows: row numbers row0 + j of keys[j]
// (j < n; null rows skipped) at slot key - mn. head must hold -1 in every slot before any
// builder starts. Two rows of one key race for its slot and one of them is lost, so the
// table is right exactly when no key came twice: when the filled slots (count_filled_slots,
// summed over the builders' slot ranges) number the stored rows. Otherwise the caller
// builds again with dense_build_slots. Cheaper than dense_build_slots when the keys are
// unique (the usual dimension table): each builder reads only its own keys, and the keys
// need not be copied where the others can read them. Returns the rows stored (-1: a valid
// key outside the cap slots; no store made for it).
inline int64_t dense_store_rows(const int64_t* keys, const uint8_t* valid, int64_t voff, int64_t n, int64_t row0,
                                int64_t mn, int64_t cap, int32_t* head) {
  constexpr int64_t kAhead = 16;  // prefetch distance of the random slot writes
  int64_t stored = 0;
  bool outside = false;
  for (int64_t j = 0; j < n; ++j) {
    // (a null row's key is arbitrary: its prefetch is harmless)
    if (j + kAhead < n) __builtin_prefetch(head + (static_cast<uint64_t>(keys[j + kAhead]) - static_cast<uint64_t>(mn)), 1);
    if (valid && !get_bit(valid, voff + j)) continue;
    const uint64_t slot = static_cast<uint64_t>(keys[j]) - static_cast<uint64_t>(mn);
    if (slot >= static_cast<uint64_t>(cap)) {
      outside = true;
      continue;
    }
    // relaxed atomic: a plain store on x86; builders may race for one slot
    __atomic_store_n(head + slot, static_cast<int32_t>(row0 + j), __ATOMIC_RELAXED);
    ++stored;
  }
  return outside ? -1 : stored;
}

inline int64_t count_filled_slots(const int32_t* head, int64_t lo, int64_t hi) {
  int64_t filled = 0;
  for (int64_t s = lo; s < hi; ++s) filled += __atomic_load_n(head + s, __ATOMIC_RELAXED) >= 0;
  return filled;
}

// Right keys whose range is at most kDenseFactor * (right rows) (e.g. a dimension table's
// 0..n-1 ids) or at most kSmallBuild right rows: no partitioning; one table on the right rows
// (direct-addressed by key - min, or open addressing) is probed by the left rows in order,
// left row blocks spread over threads. The result's inner/left rows then come in left-row
// order (each left row's matches in right-row order), so that gathering the left columns -
// usually the wide, big side - reads memory sequentially. Right/outer kinds append the
// unmatched (and null-key) right rows in right-row order.
constexpr int64_t kDenseFactor = 4;
constexpr int64_t kSmallBuild = 16384;
// right rows per thread of a parallel direct-addressed build (each thread stores its own
// rows; in the slot-range build after a repeated key each thread scans all rows)
constexpr int64_t kParallelBuildRows = int64_t(1) << 18;

inline JoinResult* join_sequential_probe(const int64_t* lk, const uint8_t* lvalid, int64_t lvoff, int64_t nl,
                                         const int64_t* rk, const uint8_t* rvalid, int64_t rvoff, int64_t nr, int how,
                                         int nthreads, bool dense, int64_t mn, int64_t mx) {
  auto* res = new JoinResult();
  res->ordered = 1;
  const bool keep_left = how == JOIN_LEFT || how == JOIN_OUTER;
  const bool keep_right = how == JOIN_RIGHT || how == JOIN_OUTER;
  PhaseTimer timer("join-seq");
  // build: head[slot] = first right row of the key, chain[j] = next right row of the same key
  int64_t cap;
  int sbits = 0;
  if (dense) {
    cap = mx - mn + 1;
  } else {
    sbits = 1;
    while ((int64_t(1) << sbits) < 2 * nr) ++sbits;
    cap = int64_t(1) << sbits;
  }
  const uint64_t mask = static_cast<uint64_t>(cap - 1);
  RawBuf<int32_t> head(cap), chain(nr);
  RawBuf<int64_t> tkey(dense ? 0 : cap);
  auto hslot = [&](int64_t key) -> uint64_t { return (static_cast<uint64_t>(key) * kMul) >> (64 - sbits); };
  bool unique = true;  // no key twice: the probe never reads chain (one cache miss less per row)
  if (dense) {
    const int bt = clamp_threads(nthreads, nr, kParallelBuildRows);
    // first as if no key came twice: every thread stores its own rows (dense_store_rows:
    // stores only; measured, 10M unique keys, one thread: local join 0.26-0.31 s against
    // 0.34-0.38 s with dense_build_slots alone)
    parallel_for(bt, [&](int t) { std::fill(head.data() + cap * t / bt, head.data() + cap * (t + 1) / bt, -1); });
    std::vector<int64_t> stored(bt), filled(bt);
    parallel_for(bt, [&](int t) {
      const int64_t lo = nr * t / bt, hi = nr * (t + 1) / bt;
      stored[t] = dense_store_rows(rk + lo, rvalid, rvoff + lo, hi - lo, lo, mn, cap, head.data());
    });
    parallel_for(bt, [&](int t) { filled[t] = count_filled_slots(head.data(), cap * t / bt, cap * (t + 1) / bt); });
    const bool built = std::accumulate(stored.begin(), stored.end(), int64_t(0)) ==
                       std::accumulate(filled.begin(), filled.end(), int64_t(0));
    // a repeated key: threads fill disjoint slot ranges, each from all rows, chaining the
    // rows of a key in order (dense_build_slots; measured, 10M unique keys: 2 threads
    // 0.09-0.13 s against 0.18 s for the one-thread row-by-row loop)
    if (!built) {
      parallel_for(bt, [&](int t) { std::fill(chain.data() + nr * t / bt, chain.data() + nr * (t + 1) / bt, -1); });
      std::vector<uint8_t> dups(bt, 0);
      const int64_t zero = 0;
      parallel_for(bt, [&](int t) {
        dups[t] = dense_build_slots(rk, rvalid, rvoff, &zero, &nr, 1, mn, cap * t / bt, cap * (t + 1) / bt, head.data(),
                                    chain.data());
      });
      unique = std::find(dups.begin(), dups.end(), 1) == dups.end();
    }
  } else {  // open addressing (at most kSmallBuild rows, or keys too spread for a direct table)
    std::memset(head.data(), 0xff, static_cast<size_t>(cap) * sizeof(int32_t));
    constexpr int64_t kBuildAhead = 16;  // prefetch distance of the build's random slot writes
    for (int64_t j = nr - 1; j >= 0; --j) {  // reverse: chains list rows ascending
      if (j >= kBuildAhead) {  // (a null row's value is arbitrary: its prefetch is harmless)
        const uint64_t sa = hslot(rk[j - kBuildAhead]);
        __builtin_prefetch(head.data() + sa, 1);
        __builtin_prefetch(tkey.data() + sa, 1);
      }
      if (rvalid && !get_bit(rvalid, rvoff + j)) continue;
      const int64_t key = rk[j];
      uint64_t s = hslot(key);
      for (;;) {
        if (head[s] < 0) {
          tkey[s] = key;
          chain[j] = -1;
          head[s] = static_cast<int32_t>(j);
          break;
        }
        if (tkey[s] == key) {
          chain[j] = head[s];
          head[s] = static_cast<int32_t>(j);
          unique = false;
          break;
        }
        s = (s + 1) & mask;
      }
    }
  }
  timer.lap("build");
  auto first = [&](int64_t key) -> int32_t {
    if (dense) return (key < mn || key > mx) ? -1 : head[key - mn];
    uint64_t s = hslot(key);
    for (;;) {
      const int32_t hd = head[s];
      if (hd < 0 || tkey[s] == key) return hd;
      s = (s + 1) & mask;
    }
  };
  std::vector<uint8_t> matched(keep_right ? nr : 0, 0);
  const int nt = clamp_threads(nthreads, nl);
  probe_in_order(res, nt, lk, lvalid, lvoff, nl, first, chain.data(), unique, keep_left,
                 keep_right ? matched.data() : nullptr, dense ? head.data() : nullptr, mn, cap);
  timer.lap("probe");
  if (keep_right) {
    cvector<int64_t>& nli = res->li[nt];
    cvector<int64_t>& nri = res->ri[nt];
    for (int64_t j = 0; j < nr; ++j) {
      if (!matched[j]) {  // unmatched or a null key
        nli.push_back(-1);
        nri.push_back(j);
      }
    }
  }
  return res->finish();
}

// ---------------------------------------------------- node-shared direct-addressed join
// For ranks that share one node's memory (parallel_ops.join with dense right keys): every
// rank inserts its own right rows into one direct-addressed table in a shared segment
// (head[key - mn] = first right row of the key, chain[row] = next row of the same key;
// rows numbered globally; each rank fills its own range of slots), then - after a barrier -
// probes it with its own left rows. Neither side is shuffled.

// Node-shared: the rows of every rank (keys[starts[r] .. starts[r] + lens[r]), global row
// numbers; null rows hold a key outside the table; chain holds -1 for every row, each rank
// having filled its own rows'); this rank fills slots [slot_lo, slot_hi).
inline bool k_shared_dense_build(const int64_t* keys, const int64_t* starts, const int64_t* lens, int nregions,
                                 int64_t mn, int64_t slot_lo, int64_t slot_hi, int32_t* head, int32_t* chain) {
  const bool dup = dense_build_slots(keys, nullptr, 0, starts, lens, nregions, mn, slot_lo, slot_hi, head, chain);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);  // (the caller's collective orders it for the other ranks)
  return dup;
}

// This rank's left rows against the shared table: (left row, global right row) pairs in
// left-row order, -1 for the right side of an unmatched left row (keep_left).
inline JoinResult* k_shared_dense_probe(const int64_t* lk, const uint8_t* lvalid, int64_t lvoff, int64_t nl,
                                        int64_t mn, int64_t cap, const int32_t* head, const int32_t* chain,
                                        bool unique, bool keep_left, int nthreads) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  auto* res = new JoinResult();
  res->ordered = 1;
  auto first = [&](int64_t key) -> int32_t {
    const uint64_t s = static_cast<uint64_t>(key) - static_cast<uint64_t>(mn);
    return s < static_cast<uint64_t>(cap) ? head[s] : -1;
  };
  probe_in_order(res, clamp_threads(nthreads, nl), lk, lvalid, lvoff, nl, first, chain, unique, keep_left, nullptr,
                 head, mn, cap);
  return res->finish();
}

inline JoinResult* k_hash_join_i64(const int64_t* lk, const uint8_t* lvalid, int64_t lvoff, int64_t nl, const int64_t* rk,
                                 const uint8_t* rvalid, int64_t rvoff, int64_t nr, int how, int nthreads) {
  if (nr > 0 && nr < (int64_t(1) << 31) - 1) {
    int64_t mn = INT64_MAX, mx = INT64_MIN;
    {
      const int nt = clamp_threads(nthreads, nr);
      std::vector<int64_t> tmn(nt, INT64_MAX), tmx(nt, INT64_MIN);
      parallel_for(nt, [&](int t) {
        int64_t a = INT64_MAX, b = INT64_MIN;
        for (int64_t j = nr * t / nt, e = nr * (t + 1) / nt; j < e; ++j) {
          if (rvalid && !get_bit(rvalid, rvoff + j)) continue;
          a = std::min(a, rk[j]);
          b = std::max(b, rk[j]);
        }
        tmn[t] = a;
        tmx[t] = b;
      });
      for (int t = 0; t < nt; ++t) {
        mn = std::min(mn, tmn[t]);
        mx = std::max(mx, tmx[t]);
      }
    }
    // range in uint64 (no signed overflow); all-null right keys: an empty dense table
    const bool any_valid = mn <= mx;
    const uint64_t range = any_valid ? static_cast<uint64_t>(mx) - static_cast<uint64_t>(mn) : 0;
    const bool dense = any_valid && range < static_cast<uint64_t>(kDenseFactor * nr);
    if (dense || nr <= kSmallBuild || !any_valid) {
      if (!any_valid) mn = 0, mx = 0;
      return join_sequential_probe(lk, lvalid, lvoff, nl, rk, rvalid, rvoff, nr, how, nthreads, dense || !any_valid, mn, mx);
    }
  }
  auto* res = new JoinResult();
  int bits = 0;
  while (bits < 12 && (nr >> bits) > 16384) ++bits;
  const int64_t nparts = int64_t(1) << bits;
  RawBuf<KeyRow> lrows, rrows;
  std::vector<int64_t> lnull, rnull;
  PhaseTimer timer("join");
  std::vector<int64_t> ls = partition_side(lk, lvalid, lvoff, nl, bits, nthreads, lrows, lnull);
  timer.lap("partition-left");
  std::vector<int64_t> rs = partition_side(rk, rvalid, rvoff, nr, bits, nthreads, rrows, rnull);
  timer.lap("partition-right");
  res->li.resize(nparts + 1);
  res->ri.resize(nparts + 1);
  const bool keep_left = how == JOIN_LEFT || how == JOIN_OUTER;
  const bool keep_right = how == JOIN_RIGHT || how == JOIN_OUTER;
  const int sbits_base = bits;
  std::atomic<int64_t> next(0);
  int nt = clamp_threads(nthreads, std::max(nl, nr));
  parallel_for(nt, [&](int) {
    std::vector<int64_t> tkey;
    std::vector<int32_t> thead, chain;
    std::vector<uint8_t> matched;
    for (;;) {
      int64_t p = next.fetch_add(1);
      if (p >= nparts) break;
      const int64_t r0 = rs[p], m = rs[p + 1] - rs[p];
      const int64_t l0 = ls[p], ml = ls[p + 1] - ls[p];
      cvector<int64_t> oli, ori;  // moved into res at the end (no false sharing of headers)
      MoveOut done{res, static_cast<int>(p), oli, ori};
      if (m == 0) {
        if (keep_left) {
          oli.resize(ml);
          for (int64_t i = 0; i < ml; ++i) oli[i] = lrows[l0 + i].i;
          ori.assign(ml, -1);
        }
        continue;
      }
      int sbits = 1;
      while ((int64_t(1) << sbits) < 2 * m) ++sbits;
      const int64_t cap = int64_t(1) << sbits;
      const uint64_t mask = cap - 1;
      const int sh = 64 - sbits - sbits_base;  // slot bits right below the partition bits
      tkey.resize(cap);
      thead.assign(cap, -1);
      chain.resize(m);
      auto slot_of = [&](int64_t key) -> uint64_t {
        uint64_t h = static_cast<uint64_t>(key) * kMul;
        return sh >= 0 ? (h >> sh) & mask : h & mask;
      };
      const KeyRow* br = rrows.data() + r0;
      for (int64_t j = m - 1; j >= 0; --j) {  // reverse: chains list rows ascending
        int64_t key = br[j].k;
        uint64_t s = slot_of(key);
        for (;;) {
          if (thead[s] < 0) {
            tkey[s] = key;
            thead[s] = static_cast<int32_t>(j);
            chain[j] = -1;
            break;
          }
          if (tkey[s] == key) {
            chain[j] = thead[s];
            thead[s] = static_cast<int32_t>(j);
            break;
          }
          s = (s + 1) & mask;
        }
      }
      if (keep_right) matched.assign(m, 0);
      oli.reserve(ml + (ml >> 3));
      ori.reserve(ml + (ml >> 3));
      const KeyRow* pr = lrows.data() + l0;
      for (int64_t i = 0; i < ml; ++i) {
        int64_t key = pr[i].k;
        uint64_t s = slot_of(key);
        int32_t h = -1;
        for (;;) {
          int32_t hd = thead[s];
          if (hd < 0) break;
          if (tkey[s] == key) {
            h = hd;
            break;
          }
          s = (s + 1) & mask;
        }
        if (h < 0) {
          if (keep_left) {
            oli.push_back(pr[i].i);
            ori.push_back(-1);
          }
          continue;
        }
        for (int32_t j = h; j >= 0; j = chain[j]) {
          oli.push_back(pr[i].i);
          ori.push_back(br[j].i);
          if (keep_right) matched[j] = 1;
        }
      }
      if (keep_right) {
        for (int64_t j = 0; j < m; ++j) {
          if (!matched[j]) {
            oli.push_back(-1);
            ori.push_back(br[j].i);
          }
        }
      }
    }
  });
  timer.lap("build+probe");
  // null keys never match
  cvector<int64_t>& nli = res->li[nparts];
  cvector<int64_t>& nri = res->ri[nparts];
  if (keep_left) {
    for (int64_t i : lnull) {
      nli.push_back(i);
      nri.push_back(-1);
    }
  }
  if (keep_right) {
    for (int64_t j : rnull) {
      nli.push_back(-1);
      nri.push_back(j);
    }
  }
  return res->finish();
}

inline void join_copy_out(JoinResult* res, int64_t* li, int64_t* ri, int nthreads) {
  const int64_t np = static_cast<int64_t>(res->li.size());
  std::vector<int64_t> start(np + 1, 0);
  for (int64_t p = 0; p < np; ++p) start[p + 1] = start[p] + static_cast<int64_t>(res->li[p].size());
  std::atomic<int64_t> next(0);
  parallel_for(clamp_threads(nthreads, res->total), [&](int) {
    for (;;) {
      int64_t p = next.fetch_add(1);
      if (p >= np) break;
      size_t m = res->li[p].size();
      if (m) {
        std::memcpy(li + start[p], res->li[p].data(), m * sizeof(int64_t));
        std::memcpy(ri + start[p], res->ri[p].data(), m * sizeof(int64_t));
      }
      cvector<int64_t>().swap(res->li[p]);
      cvector<int64_t>().swap(res->ri[p]);
    }
  });
}

// ---------------------------------------------------------------------------- gather

// out[i] = src[idx[i]] for fixed-width values (width bytes; width 0 = bit-packed bools);
// out_valid (if not null) gets src validity (src_valid null = all valid) and idx < 0 -> 0.
// Returns the number of nulls written.
template <class IdxT>
int64_t take_fixed(int width, const uint8_t* src, int64_t src_off, const uint8_t* src_valid, int64_t src_voff,
                   const IdxT* idx, int64_t n, uint8_t* out, uint8_t* out_valid, int nthreads) {
  int nt = clamp_threads(nthreads, n);
  std::vector<int64_t> nulls(nt, 0);
  parallel_for(nt, [&](int t) {
    // ranges aligned to 64 rows so that no two threads write one bitmap byte
    int64_t lo = (n * t / nt) & ~int64_t(63), hi = t + 1 == nt ? n : ((n * (t + 1) / nt) & ~int64_t(63));
    if (hi <= lo) return;
    int64_t nn = 0;
    switch (width) {
      case 8: {
        const uint64_t* s = reinterpret_cast<const uint64_t*>(src) + src_off;
        uint64_t* o = reinterpret_cast<uint64_t*>(out);
        for (int64_t i = lo; i < hi; ++i) {
          int64_t j = static_cast<int64_t>(idx[i]);
          o[i] = j >= 0 ? s[j] : 0;
        }
        break;
      }
      case 4: {
        const uint32_t* s = reinterpret_cast<const uint32_t*>(src) + src_off;
        uint32_t* o = reinterpret_cast<uint32_t*>(out);
        for (int64_t i = lo; i < hi; ++i) {
          int64_t j = static_cast<int64_t>(idx[i]);
          o[i] = j >= 0 ? s[j] : 0;
        }
        break;
      }
      case 2: {
        const uint16_t* s = reinterpret_cast<const uint16_t*>(src) + src_off;
        uint16_t* o = reinterpret_cast<uint16_t*>(out);
        for (int64_t i = lo; i < hi; ++i) {
          int64_t j = static_cast<int64_t>(idx[i]);
          o[i] = j >= 0 ? s[j] : 0;
        }
        break;
      }
      case 1: {
        const uint8_t* s = src + src_off;
        for (int64_t i = lo; i < hi; ++i) {
          int64_t j = static_cast<int64_t>(idx[i]);
          out[i] = j >= 0 ? s[j] : 0;
        }
        break;
      }
      case 0: {
        for (int64_t w = lo; w < hi; w += 8) {
          uint8_t byte = 0;
          int64_t e = std::min<int64_t>(8, hi - w);
          for (int64_t b = 0; b < e; ++b) {
            int64_t j = static_cast<int64_t>(idx[w + b]);
            if (j >= 0 && get_bit(src, src_off + j)) byte |= uint8_t(1) << b;
          }
          out[w >> 3] = byte;
        }
        break;
      }
      default: {
        const uint8_t* s = src + src_off * width;
        for (int64_t i = lo; i < hi; ++i) {
          int64_t j = static_cast<int64_t>(idx[i]);
          if (j >= 0)
            std::memcpy(out + i * width, s + j * width, width);
          else
            std::memset(out + i * width, 0, width);
        }
      }
    }
    if (out_valid) {
      for (int64_t w = lo; w < hi; w += 8) {
        uint8_t byte = 0;
        int64_t e = std::min<int64_t>(8, hi - w);
        for (int64_t b = 0; b < e; ++b) {
          int64_t j = static_cast<int64_t>(idx[w + b]);
          bool v = j >= 0 && (src_valid == nullptr || get_bit(src_valid, src_voff + j));
          if (v)
            byte |= uint8_t(1) << b;
          else
            ++nn;
        }
        out_valid[w >> 3] = byte;
      }
    }
    nulls[t] = nn;
  });
  int64_t total = 0;
  for (int64_t c : nulls) total += c;
  return total;
}

// Positions of rows whose mask bit is set and valid -> out (sized for n); returns count.
// 64 rows at a time (word of mask & validity, then its set bits), ranges split over threads.

template <class IdxT>
int64_t k_mask_to_indices(const uint8_t* mask, int64_t moff, const uint8_t* mvalid, int64_t mvoff, int64_t n, IdxT* out,
                          int nthreads) {
  int nt = clamp_threads(nthreads, n, 1 << 18);
  std::vector<int64_t> counts(nt + 1, 0);
  auto word = [&](int64_t i, int64_t len) -> uint64_t {
    uint64_t w = load_bits(mask, moff + i, len);
    if (mvalid) w &= load_bits(mvalid, mvoff + i, len);
    return w;
  };
  auto range = [&](int t, int64_t& lo, int64_t& hi) {
    lo = (n * t / nt) & ~int64_t(63);
    hi = t + 1 == nt ? n : ((n * (t + 1) / nt) & ~int64_t(63));
  };
  parallel_for(nt, [&](int t) {
    int64_t lo, hi, c = 0;
    range(t, lo, hi);
    for (int64_t i = lo; i < hi; i += 64) c += __builtin_popcountll(word(i, std::min<int64_t>(64, hi - i)));
    counts[t + 1] = c;
  });
  for (int t = 0; t < nt; ++t) counts[t + 1] += counts[t];
  parallel_for(nt, [&](int t) {
    int64_t lo, hi, j = counts[t];
    range(t, lo, hi);
    for (int64_t i = lo; i < hi; i += 64) {
      uint64_t w = word(i, std::min<int64_t>(64, hi - i));
      while (w) {
        out[j++] = static_cast<IdxT>(i + __builtin_ctzll(w));
        w &= w - 1;
      }
    }
  });
  return counts[nt];
}

// ------------------------------------------------------------------- range partition

// Part of every row (sorted or not) for sample sort: rows with (key tuple) <= splitter s
// (and > splitter s-1) go to part s; nkeys columns as radix keys + null flags (nulls last,
// compared equal to each other). keys: nkeys arrays of n radix keys (already direction
// adjusted), nulls: nkeys arrays of n bytes (1 = null) or null pointers; splitters the
// same layout with nsplit rows. out: int32 part per row.
inline void k_range_partition(const uint64_t* const* keys, const uint8_t* const* nulls, int nkeys, int64_t n,
                            const uint64_t* const* skeys, const uint8_t* const* snulls, int64_t nsplit, int32_t* out,
                            int nthreads) {
  auto cmp = [&](int64_t row, int64_t s) -> int {  // row vs splitter s
    for (int c = 0; c < nkeys; ++c) {
      bool rn = nulls[c] && nulls[c][row];
      bool sn = snulls[c] && snulls[c][s];
      if (rn != sn) return rn ? 1 : -1;
      if (rn) continue;
      uint64_t a = keys[c][row], b = skeys[c][s];
      if (a != b) return a < b ? -1 : 1;
    }
    return 0;
  };
  int nt = clamp_threads(nthreads, n);
  parallel_for(nt, [&](int t) {
    int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    for (int64_t i = lo; i < hi; ++i) {
      // first splitter s with row <= splitter s
      int64_t a = 0, b = nsplit;
      while (a < b) {
        int64_t mid = (a + b) >> 1;
        if (cmp(i, mid) <= 0)
          b = mid;
        else
          a = mid + 1;
      }
      out[i] = static_cast<int32_t>(a);
    }
  });
}

}  // namespace opk
}  // namespace opgraph
