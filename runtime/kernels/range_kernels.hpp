// opgraph range-partition kernel: the local step of the sample sort. Every row of a table
// gets the part (0..nsplit) of the key range it falls in, given nsplit splitter rows, and
// the rows' destinations in part order (a stable counting sort); the columns are then moved
// there by the hash shuffle's scatter kernels (hash_kernels.hpp: scatter_fixed /
// scatter_bits / scatter_var_*, through hashing.scatter_column), so the two shuffles share
// one scatter implementation.
//
// Order (Arrow's stable sort order, the one local_ops.sort produces): key columns compared
// lexicographically (first most significant), each in its own direction (ascending or
// descending), nulls last in both directions (nulls equal to each other), NaN after every
// number in both directions but before nulls (NaNs equal to each other), -0.0 == +0.0.
// Strings/binary compare bytewise (unsigned, a prefix first), which is UTF-8 code point
// order. A row goes to the first part s whose splitter s it sorts at or before (rows equal
// to a splitter go to that splitter's part, so equal keys share a part); rows after the
// last splitter go to part nsplit. The splitters must be sorted in this order.
//
// Fixed-width keys are compared through an order-preserving uint64 (the "radix key" of
// op_kernels.hpp: signed -> x ^ 2^63, unsigned as is, float/double -> IEEE bits with the
// sign flipped / every bit inverted for negatives, NaN -> ~0; descending -> ~key, NaN kept
// ~0), computed on the fly from the Arrow values buffer of any width (no converted copy).
//
// Layout: RangeCol describes one Arrow array (values/offsets, data, validity, offset).
// Fast path: one fixed-width key column -> the count of non-null splitters whose key is
// smaller (branch-free linear scan for few splitters, binary search otherwise). General
// path: per-row binary search with a column-by-column comparator.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "hash_kernels.hpp"
#include "kernel_common.hpp"

namespace opgraph {
namespace rangek {

enum RangeKind : int {
  RK_INT8 = 1,
  RK_INT16 = 2,
  RK_INT32 = 3,
  RK_INT64 = 4,
  RK_UINT8 = 5,
  RK_UINT16 = 6,
  RK_UINT32 = 7,
  RK_UINT64 = 8,
  RK_FLOAT32 = 9,
  RK_FLOAT64 = 10,
  RK_BOOL = 11,
  RK_STRING32 = 12,  // string/binary: int32 offsets
  RK_STRING64 = 13,  // large_string/large_binary: int64 offsets
};

struct RangeCol {
  int kind;
  int desc;                  // 1: descending
  const uint8_t* values;     // fixed width / bool bits: values; strings: offsets buffer
  const uint8_t* data;       // strings: data buffer (else unused)
  const uint8_t* validity;   // validity bitmap or nullptr (no nulls)
  int64_t offset;            // the array's offset (applies to values/offsets and validity)
};

constexpr uint64_t kSign = 0x8000000000000000ULL;
constexpr uint64_t kNaNKey = ~0ULL;

inline uint64_t float_key(double d, bool desc) {
  if (std::isnan(d)) return kNaNKey;  // after every number, both directions
  if (d == 0.0) d = 0.0;              // -0.0 == +0.0
  uint64_t b;
  std::memcpy(&b, &d, 8);
  const uint64_t k = (b & kSign) ? ~b : (b | kSign);
  return desc ? ~k : k;  // ~k is never ~0 for a number
}

template <typename T>
inline uint64_t fixed_key(const uint8_t* values, int64_t i, bool desc) {
  T v;
  std::memcpy(&v, values + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
  uint64_t k;
  if constexpr (std::is_floating_point<T>::value) {
    return float_key(static_cast<double>(v), desc);
  } else if constexpr (std::is_signed<T>::value) {
    k = static_cast<uint64_t>(static_cast<int64_t>(v)) ^ kSign;
  } else {
    k = static_cast<uint64_t>(v);
  }
  return desc ? ~k : k;
}

// Radix key of row i (absolute index, offset already added) of a fixed-width column.
inline uint64_t key_at(const RangeCol& c, int64_t i) {
  const bool d = c.desc != 0;
  switch (c.kind) {
    case RK_INT8: return fixed_key<int8_t>(c.values, i, d);
    case RK_INT16: return fixed_key<int16_t>(c.values, i, d);
    case RK_INT32: return fixed_key<int32_t>(c.values, i, d);
    case RK_INT64: return fixed_key<int64_t>(c.values, i, d);
    case RK_UINT8: return fixed_key<uint8_t>(c.values, i, d);
    case RK_UINT16: return fixed_key<uint16_t>(c.values, i, d);
    case RK_UINT32: return fixed_key<uint32_t>(c.values, i, d);
    case RK_UINT64: return fixed_key<uint64_t>(c.values, i, d);
    case RK_FLOAT32: return fixed_key<float>(c.values, i, d);
    case RK_FLOAT64: return fixed_key<double>(c.values, i, d);
    case RK_BOOL: {  // as int64 0/1
      const uint64_t k = static_cast<uint64_t>(get_bit(c.values, i)) ^ kSign;
      return d ? ~k : k;
    }
    default: return 0;
  }
}

inline bool is_string(int kind) { return kind == RK_STRING32 || kind == RK_STRING64; }

inline bool is_null(const RangeCol& c, int64_t i) { return c.validity && !get_bit(c.validity, i); }

// Bytes of row i (absolute index) of a string column.
inline void string_at(const RangeCol& c, int64_t i, const uint8_t** p, int64_t* len) {
  if (c.kind == RK_STRING32) {
    const int32_t* o = reinterpret_cast<const int32_t*>(c.values);
    *p = c.data + o[i];
    *len = o[i + 1] - o[i];
  } else {
    const int64_t* o = reinterpret_cast<const int64_t*>(c.values);
    *p = c.data + o[i];
    *len = o[i + 1] - o[i];
  }
}

inline int compare_bytes(const uint8_t* a, int64_t la, const uint8_t* b, int64_t lb) {
  const int64_t m = la < lb ? la : lb;
  if (m > 0) {
    const int r = std::memcmp(a, b, static_cast<size_t>(m));
    if (r != 0) return r < 0 ? -1 : 1;
  }
  return la == lb ? 0 : (la < lb ? -1 : 1);
}

// The splitters, prepared once: per fixed-width column their radix keys, per column null flags.
struct Splitters {
  int nkeys;
  int64_t nsplit;
  const RangeCol* cols;  // nkeys splitter columns
  std::vector<std::vector<uint64_t>> keys;
  std::vector<std::vector<uint8_t>> nulls;

  Splitters(const RangeCol* c, int nk, int64_t ns) : nkeys(nk), nsplit(ns), cols(c), keys(nk), nulls(nk) {
    for (int k = 0; k < nk; ++k) {
      nulls[k].resize(static_cast<size_t>(ns));
      if (!is_string(c[k].kind)) keys[k].resize(static_cast<size_t>(ns));
      for (int64_t s = 0; s < ns; ++s) {
        const int64_t i = c[k].offset + s;
        nulls[k][s] = is_null(c[k], i) ? 1 : 0;
        if (!is_string(c[k].kind) && !nulls[k][s]) keys[k][s] = key_at(c[k], i);
      }
    }
  }
};

// row (absolute indices per column: cols[k].offset + r) vs splitter s: -1, 0, 1
inline int compare_row(const RangeCol* cols, int64_t r, const Splitters& sp, int64_t s) {
  for (int k = 0; k < sp.nkeys; ++k) {
    const RangeCol& c = cols[k];
    const int64_t i = c.offset + r;
    const bool rn = is_null(c, i);
    const bool sn = sp.nulls[k][s] != 0;
    if (rn != sn) return rn ? 1 : -1;
    if (rn) continue;
    if (is_string(c.kind)) {
      const uint8_t *pa, *pb;
      int64_t la, lb;
      string_at(c, i, &pa, &la);
      string_at(sp.cols[k], sp.cols[k].offset + s, &pb, &lb);
      int r2 = compare_bytes(pa, la, pb, lb);
      if (r2 != 0) return c.desc ? -r2 : r2;
    } else {
      const uint64_t a = key_at(c, i), b = sp.keys[k][s];
      if (a != b) return a < b ? -1 : 1;
    }
  }
  return 0;
}

// Part ids, fast path: one fixed-width key of value type T; `nn` non-null splitters with
// ascending radix keys skeys[0..nn) (null splitters sort last).
template <typename T>
void part_ids_single(const RangeCol& c, int64_t lo, int64_t hi, const uint64_t* skeys, int64_t nn, int32_t* out) {
  const bool desc = c.desc != 0;
  const uint8_t* vals = c.values;
  const int64_t off = c.offset;
  auto key = [&](int64_t i) -> uint64_t {
    if constexpr (std::is_same<T, bool>::value) {
      const uint64_t k = static_cast<uint64_t>(get_bit(vals, i)) ^ kSign;
      return desc ? ~k : k;
    } else {
      return fixed_key<T>(vals, i, desc);
    }
  };
  if (nn <= 16) {  // count of splitters smaller than the key: branch-free
    for (int64_t r = lo; r < hi; ++r) {
      const uint64_t k = key(off + r);
      int32_t p = 0;
      for (int64_t s = 0; s < nn; ++s) p += skeys[s] < k;
      out[r] = p;
    }
  } else {
    for (int64_t r = lo; r < hi; ++r) {
      const uint64_t k = key(off + r);
      out[r] = static_cast<int32_t>(std::lower_bound(skeys, skeys + nn, k) - skeys);
    }
  }
  if (c.validity) {  // null rows: the first null splitter's part (or the last part)
    for (int64_t r = lo; r < hi; ++r)
      if (!get_bit(c.validity, off + r)) out[r] = static_cast<int32_t>(nn);
  }
}

inline void part_ids_general(const RangeCol* cols, const Splitters& sp, int64_t lo, int64_t hi, int32_t* out) {
  for (int64_t r = lo; r < hi; ++r) {
    int64_t a = 0, b = sp.nsplit;  // first splitter s with row <= splitter s
    while (a < b) {
      const int64_t mid = (a + b) >> 1;
      if (compare_row(cols, r, sp, mid) <= 0)
        b = mid;
      else
        a = mid + 1;
    }
    out[r] = static_cast<int32_t>(a);
  }
}

// Part of every row of cols[0..nkeys) (n rows) given nsplit splitter rows scols; out[n].
inline void range_part_ids(const RangeCol* cols, int nkeys, int64_t n, const RangeCol* scols, int64_t nsplit,
                           int32_t* out, int nthreads) {
  if (nsplit == 0 || n == 0) {
    std::fill(out, out + n, 0);
    return;
  }
  Splitters sp(scols, nkeys, nsplit);
  const int nt = clamp_threads(nthreads, n);
  if (nkeys == 1 && !is_string(cols[0].kind)) {
    int64_t nn = 0;
    while (nn < nsplit && !sp.nulls[0][nn]) ++nn;  // sorted: non-null splitters first
    const uint64_t* sk = sp.keys[0].data();
    const RangeCol& c = cols[0];
    parallel_for(nt, [&](int t) {
      const int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
      switch (c.kind) {
        case RK_INT8: part_ids_single<int8_t>(c, lo, hi, sk, nn, out); break;
        case RK_INT16: part_ids_single<int16_t>(c, lo, hi, sk, nn, out); break;
        case RK_INT32: part_ids_single<int32_t>(c, lo, hi, sk, nn, out); break;
        case RK_INT64: part_ids_single<int64_t>(c, lo, hi, sk, nn, out); break;
        case RK_UINT8: part_ids_single<uint8_t>(c, lo, hi, sk, nn, out); break;
        case RK_UINT16: part_ids_single<uint16_t>(c, lo, hi, sk, nn, out); break;
        case RK_UINT32: part_ids_single<uint32_t>(c, lo, hi, sk, nn, out); break;
        case RK_UINT64: part_ids_single<uint64_t>(c, lo, hi, sk, nn, out); break;
        case RK_FLOAT32: part_ids_single<float>(c, lo, hi, sk, nn, out); break;
        case RK_FLOAT64: part_ids_single<double>(c, lo, hi, sk, nn, out); break;
        case RK_BOOL: part_ids_single<bool>(c, lo, hi, sk, nn, out); break;
        default: part_ids_general(cols, sp, lo, hi, out);
      }
    });
    return;
  }
  parallel_for(nt, [&](int t) {
    const int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    part_ids_general(cols, sp, lo, hi, out);
  });
}

// Fused: part ids, then every row's destination in part order (stable, as the hash
// shuffle's counting sort hashk::partition_positions) and the parts' offsets[nsplit + 2].
// With int32 destinations the part ids are computed into `dest` itself and turned into
// positions in place (no scratch array); the counts and positions are per thread range
// (thread t's rows of part p follow those of threads < t: stable).
// dest: int32 (index_bytes 4) or int64 (8). Returns 0, or -1 on an internal error.
template <typename I>
int range_positions_t(const RangeCol* cols, int nkeys, int64_t n, const RangeCol* scols, int64_t nsplit,
                      int64_t* offsets, I* dest, int nthreads) {
  const int64_t nparts = nsplit + 1;
  int32_t* pids;
  std::vector<int32_t> scratch;
  if (sizeof(I) == sizeof(int32_t)) {
    pids = reinterpret_cast<int32_t*>(dest);
  } else {
    scratch.resize(static_cast<size_t>(n > 0 ? n : 1));
    pids = scratch.data();
  }
  range_part_ids(cols, nkeys, n, scols, nsplit, pids, nthreads);
  const int nt = clamp_threads(nthreads, n);
  std::vector<int64_t> counts(static_cast<size_t>(nt * nparts), 0);
  parallel_for(nt, [&](int t) {
    const int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    int64_t* c = counts.data() + t * nparts;
    for (int64_t i = lo; i < hi; ++i) ++c[pids[i]];
  });
  int64_t acc = 0;
  for (int64_t p = 0; p < nparts; ++p) {
    offsets[p] = acc;
    for (int t = 0; t < nt; ++t) {
      const int64_t c = counts[t * nparts + p];
      counts[t * nparts + p] = acc;  // thread t's first position in part p
      acc += c;
    }
  }
  offsets[nparts] = acc;
  if (acc != n) return -1;
  parallel_for(nt, [&](int t) {
    const int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    int64_t* cur = counts.data() + t * nparts;
    for (int64_t i = lo; i < hi; ++i) dest[i] = static_cast<I>(cur[pids[i]]++);
  });
  return 0;
}

inline int range_positions(const RangeCol* cols, int nkeys, int64_t n, const RangeCol* scols, int64_t nsplit,
                           int64_t* offsets, void* dest, int index_bytes, int nthreads) {
  if (index_bytes == 4)
    return range_positions_t<int32_t>(cols, nkeys, n, scols, nsplit, offsets, static_cast<int32_t*>(dest), nthreads);
  return range_positions_t<int64_t>(cols, nkeys, n, scols, nsplit, offsets, static_cast<int64_t*>(dest), nthreads);
}

}  // namespace rangek
}  // namespace opgraph
