// Window kernels for opgraph (bound by windowing.pyx): halo packing and rolling windows.
//
// Rows of a window op are the global row order of a row-partitioned table: a rank holds
// `mid` (its partition) and receives `pre` (the rows just before it, at most `before`) and
// `post` (the rows just after it) from other ranks. The kernels read the three segments in
// place -- no concatenated copy of the partition is ever built.
//
// Semantics (the same as DuckDB's `ROWS BETWEEN k-1 PRECEDING AND CURRENT ROW` wrapped in
// `CASE WHEN count(x) = k`, i.e. pandas' rolling(k) with min_periods = k):
//   * rolling_{sum,mean,min,max}(k): row g of the global order gets a value only when rows
//     g-k+1 .. g all exist and are all non-null; otherwise null.
//   * sum of integers is int64 (two's complement wrap-around on overflow); sum of floats and
//     every mean are float64 (integers converted to float64 element by element).
//   * NaN is a value, not a null: sums propagate it; min/max order it above every number
//     (as DuckDB and our sort do): max of a window holding NaN is NaN, min ignores NaN
//     unless every value is NaN.
//   * diff(n): x[g] - x[g-n] (n < 0: x[g] - x[g+|n|]) in the result type R (float64 for
//     integers, the float type for floats); null when either side is null or missing.
//
// Algorithm for rolling windows: van Herk / Gil-Werman. The row axis is cut into blocks of
// k rows; a window ending at row i of block b is (suffix of block b-1 from i-k+1) op
// (prefix of block b up to i). Each output costs O(1) whatever k is, min/max need no deque,
// and float sums add at most k values in sequence (no running add/subtract, so no
// cancellation drift and NaN/inf never poison later windows).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace opgraph {
namespace wink {

enum Kind {
  KIND_INT8 = 1, KIND_INT16, KIND_INT32, KIND_INT64,
  KIND_UINT8, KIND_UINT16, KIND_UINT32, KIND_UINT64,
  KIND_FLOAT32, KIND_FLOAT64
};
enum Op { OP_SUM = 1, OP_MEAN, OP_MIN, OP_MAX };

// A segment of an Arrow fixed-width array: values already advanced to the array offset,
// validity bitmap (nullptr = all valid) read at bit `voff + i`.
struct Seg {
  const void* values;
  const uint8_t* validity;
  int64_t voff;
  int64_t n;
};

inline bool bit(const uint8_t* bm, int64_t i) { return (bm[i >> 3] >> (i & 7)) & 1; }
inline void set_bit(uint8_t* bm, int64_t i, bool v) {
  if (v) bm[i >> 3] |= uint8_t(1u << (i & 7));
  else bm[i >> 3] &= uint8_t(~(1u << (i & 7)));
}

// ---------------------------------------------------------------- ops (identity, combine)

template <class A> struct SumOp {
  static A identity() { return A(0); }
  static A apply(A a, A b) {
    if constexpr (std::is_integral_v<A>)
      return A(uint64_t(a) + uint64_t(b));  // wrap-around, no UB
    else
      return a + b;
  }
};
template <class A> struct MinOp {
  static A identity() {
    if constexpr (std::is_floating_point_v<A>) return std::numeric_limits<A>::quiet_NaN();
    else return std::numeric_limits<A>::max();
  }
  static A apply(A a, A b) {
    if constexpr (std::is_floating_point_v<A>) return (b < a || a != a) ? b : a;  // NaN largest
    else return b < a ? b : a;
  }
};
template <class A> struct MaxOp {
  static A identity() {
    if constexpr (std::is_floating_point_v<A>) return -std::numeric_limits<A>::infinity();
    else return std::numeric_limits<A>::lowest();
  }
  static A apply(A a, A b) {
    if constexpr (std::is_floating_point_v<A>) return (a != a) ? a : ((b > a || b != b) ? b : a);
    else return b > a ? b : a;
  }
};

// out[i] (for lo <= i < L, lo >= k-1) = op over x[i-k+1 .. i] of the contiguous array x.
// Values of null slots are never looked at by windows that do not contain them.
template <class T, class A, class O>
void herk(const T* x, int64_t L, int64_t k, int64_t lo, A* out) {
  if (lo >= L) return;
  std::vector<A> suf(static_cast<size_t>(k) + 1);
  std::vector<A> pre(static_cast<size_t>(k));
  suf[size_t(k)] = O::identity();
  const int64_t b0 = (lo - (k - 1)) / k;
  for (int64_t b = b0; b * k < L; ++b) {
    const int64_t s = b * k;
    const int64_t len = (L - s < k) ? (L - s) : k;
    // prefix of this block
    A p = A(x[s]);
    pre[0] = p;
    for (int64_t j = 1; j < len; ++j) { p = O::apply(p, A(x[s + j])); pre[size_t(j)] = p; }
    // outputs: window of row s+j = suf_{b-1}[j+1] op pre[j] (suf[k] = identity: full block)
    int64_t j0 = lo > s ? lo - s : 0;
    if (b == b0) {
      // suf of block b-1 not computed: only the full-block output (j = k-1) can be >= lo
      j0 = (len == k && s + k - 1 >= lo) ? k - 1 : len;
    }
    A* o = out + s;
    const A* sf = suf.data() + 1;
    for (int64_t j = j0; j < len; ++j) o[j] = O::apply(sf[j], pre[size_t(j)]);
    // suffix of this block for the next one
    if (len == k && s + k < L) {
      A q = O::identity();
      for (int64_t j = k - 1; j >= 0; --j) { q = O::apply(A(x[s + j]), q); suf[size_t(j)] = q; }
      // identity at suf[k] stays; O::apply(x, identity) == x for every op here
    }
  }
}

// Rolling window over [pre ; mid] (post is never needed: windows look backwards), writing
// m = mid.n outputs. out_valid: bitmap of m bits (written fully). Returns the null count.
template <class T, class A, class O>
int64_t rolling_typed(const Seg& pre, const Seg& mid, int64_t k, A* out, uint8_t* out_valid) {
  const int64_t np_ = pre.n, m = mid.n;
  const T* pv = static_cast<const T*>(pre.values);
  const T* mv = static_cast<const T*>(mid.values);
  // validity: window of global row g = np_ + j valid iff g >= k-1 and no null in it
  int64_t last_null = -1;  // global index of the last null seen
  if (pre.validity)
    for (int64_t i = 0; i < np_; ++i)
      if (!bit(pre.validity, pre.voff + i)) last_null = i;
  int64_t nulls = 0;
  if (m) std::memset(out_valid, 0, size_t((m + 7) / 8));
  for (int64_t j = 0; j < m; ++j) {
    const int64_t g = np_ + j;
    if (mid.validity && !bit(mid.validity, mid.voff + j)) last_null = g;
    const bool ok = g >= k - 1 && g - k + 1 > last_null;
    if (ok) out_valid[j >> 3] |= uint8_t(1u << (j & 7));
    else ++nulls;
  }
  if (nulls == m) return nulls;
  // head rows (windows reaching into pre): a small scratch of <= 2(k-1) values
  const int64_t h = m < k - 1 ? m : k - 1;
  if (h > 0 && np_ > 0) {
    const int64_t take = np_ < k - 1 ? np_ : k - 1;
    std::vector<T> sc(size_t(take + h));
    std::memcpy(sc.data(), pv + (np_ - take), size_t(take) * sizeof(T));
    std::memcpy(sc.data() + take, mv, size_t(h) * sizeof(T));
    std::vector<A> so(size_t(take + h));
    const int64_t lo = take > k - 1 ? take : k - 1;
    herk<T, A, O>(sc.data(), take + h, k, lo, so.data());
    for (int64_t i = lo; i < take + h; ++i) out[i - take] = so[size_t(i)];
  }
  // rows whose window lies inside mid
  herk<T, A, O>(mv, m, k, k - 1, out);
  return nulls;
}

template <class T>
int64_t rolling_kind(int op, const Seg& pre, const Seg& mid, int64_t k, void* out, uint8_t* out_valid) {
  if (op == OP_MIN) return rolling_typed<T, T, MinOp<T>>(pre, mid, k, static_cast<T*>(out), out_valid);
  if (op == OP_MAX) return rolling_typed<T, T, MaxOp<T>>(pre, mid, k, static_cast<T*>(out), out_valid);
  if (op == OP_MEAN || std::is_floating_point_v<T>) {
    // float sums and all means accumulate in float64 (out is double*)
    double* o = static_cast<double*>(out);
    const int64_t nulls = rolling_typed<T, double, SumOp<double>>(pre, mid, k, o, out_valid);
    if (op == OP_MEAN) {
      const double dk = double(k);
      for (int64_t j = 0; j < mid.n; ++j) o[j] /= dk;
    }
    return nulls;
  }
  if (op != OP_SUM) return -1;
  return rolling_typed<T, int64_t, SumOp<int64_t>>(pre, mid, k, static_cast<int64_t*>(out), out_valid);
}

// Returns the null count of the output, or -1 for a bad kind/op.
inline int64_t rolling(int kind, int op, Seg pre, Seg mid, int64_t k, void* out, uint8_t* out_valid) {
  if (k < 1) return -1;
  switch (kind) {
    case KIND_INT8: return rolling_kind<int8_t>(op, pre, mid, k, out, out_valid);
    case KIND_INT16: return rolling_kind<int16_t>(op, pre, mid, k, out, out_valid);
    case KIND_INT32: return rolling_kind<int32_t>(op, pre, mid, k, out, out_valid);
    case KIND_INT64: return rolling_kind<int64_t>(op, pre, mid, k, out, out_valid);
    case KIND_UINT8: return rolling_kind<uint8_t>(op, pre, mid, k, out, out_valid);
    case KIND_UINT16: return rolling_kind<uint16_t>(op, pre, mid, k, out, out_valid);
    case KIND_UINT32: return rolling_kind<uint32_t>(op, pre, mid, k, out, out_valid);
    case KIND_UINT64: return rolling_kind<uint64_t>(op, pre, mid, k, out, out_valid);
    case KIND_FLOAT32: return rolling_kind<float>(op, pre, mid, k, out, out_valid);
    case KIND_FLOAT64: return rolling_kind<double>(op, pre, mid, k, out, out_valid);
    default: return -1;
  }
}

// ---------------------------------------------------------------- diff

template <class T, class R>
int64_t diff_typed(const Seg& pre, const Seg& mid, const Seg& post, int64_t n, R* out, uint8_t* out_valid) {
  const int64_t m = mid.n;
  const T* pv = static_cast<const T*>(pre.values);
  const T* mv = static_cast<const T*>(mid.values);
  const T* qv = static_cast<const T*>(post.values);
  int64_t nulls = 0;
  if (m) std::memset(out_valid, 0, size_t((m + 7) / 8));
  for (int64_t j = 0; j < m; ++j) {
    const int64_t s = j - n;  // source row in mid coordinates
    bool ok = !mid.validity || bit(mid.validity, mid.voff + j);
    T other{};
    if (s >= 0 && s < m) {
      ok = ok && (!mid.validity || bit(mid.validity, mid.voff + s));
      other = mv[s];
    } else if (s < 0) {
      const int64_t p = pre.n + s;
      ok = ok && p >= 0 && (!pre.validity || bit(pre.validity, pre.voff + p));
      if (p >= 0) other = pv[p];
    } else {
      const int64_t p = s - m;
      ok = ok && p < post.n && (!post.validity || bit(post.validity, post.voff + p));
      if (p < post.n) other = qv[p];
    }
    if (ok) {
      out[j] = R(mv[j]) - R(other);
      out_valid[j >> 3] |= uint8_t(1u << (j & 7));
    } else {
      out[j] = R(0);
      ++nulls;
    }
  }
  return nulls;
}

// out: float (KIND_FLOAT32 input) or double (everything else).
inline int64_t diff(int kind, Seg pre, Seg mid, Seg post, int64_t n, void* out, uint8_t* out_valid) {
  double* d = static_cast<double*>(out);
  switch (kind) {
    case KIND_INT8: return diff_typed<int8_t, double>(pre, mid, post, n, d, out_valid);
    case KIND_INT16: return diff_typed<int16_t, double>(pre, mid, post, n, d, out_valid);
    case KIND_INT32: return diff_typed<int32_t, double>(pre, mid, post, n, d, out_valid);
    case KIND_INT64: return diff_typed<int64_t, double>(pre, mid, post, n, d, out_valid);
    case KIND_UINT8: return diff_typed<uint8_t, double>(pre, mid, post, n, d, out_valid);
    case KIND_UINT16: return diff_typed<uint16_t, double>(pre, mid, post, n, d, out_valid);
    case KIND_UINT32: return diff_typed<uint32_t, double>(pre, mid, post, n, d, out_valid);
    case KIND_UINT64: return diff_typed<uint64_t, double>(pre, mid, post, n, d, out_valid);
    case KIND_FLOAT32: return diff_typed<float, float>(pre, mid, post, n, static_cast<float*>(out), out_valid);
    case KIND_FLOAT64: return diff_typed<double, double>(pre, mid, post, n, d, out_valid);
    default: return -1;
  }
}

// ---------------------------------------------------------------- halo plan and packing

// For every rank q of n (counts[q] rows each, global order = rank order): the rows of rank
// `me` that q needs, as local row ranges [lo[q], hi[q]): the up to `before` rows preceding
// q's first row and the up to `after` rows following its last (nothing for an empty q, and
// nothing for q == me). Returns 1 when every rank's needs are met by its direct neighbours
// alone (then point-to-point send/recv suffices), else 0.
inline int halo_plan(const int64_t* counts, int n, int me, int64_t before, int64_t after, int64_t* lo,
                     int64_t* hi) {
  std::vector<int64_t> st(size_t(n) + 1, 0);
  for (int q = 0; q < n; ++q) st[size_t(q) + 1] = st[size_t(q)] + counts[q];
  const int64_t total = st[size_t(n)];
  auto need_before = [&](int q) -> int64_t {
    return counts[q] ? (before < st[size_t(q)] ? before : st[size_t(q)]) : 0;
  };
  auto need_after = [&](int q) -> int64_t {
    const int64_t rest = total - st[size_t(q) + 1];
    return counts[q] ? (after < rest ? after : rest) : 0;
  };
  int neighbours = 1;
  for (int q = 0; q < n; ++q) {
    if (need_before(q) > (q ? counts[q - 1] : 0)) neighbours = 0;
    if (need_after(q) > (q + 1 < n ? counts[q + 1] : 0)) neighbours = 0;
  }
  const int64_t lo_me = st[size_t(me)], hi_me = st[size_t(me) + 1];
  for (int q = 0; q < n; ++q) {
    lo[q] = hi[q] = 0;
    if (q == me || !counts[q]) continue;
    int64_t a, b;
    if (q > me) { a = st[size_t(q)] - need_before(q); b = st[size_t(q)]; }
    else { a = st[size_t(q) + 1]; b = st[size_t(q) + 1] + need_after(q); }
    if (a < lo_me) a = lo_me;
    if (b > hi_me) b = hi_me;
    if (b > a) { lo[q] = a - lo_me; hi[q] = b - lo_me; }
  }
  return neighbours;
}

// Copies bits [src_off, src_off + n) of src to bits [0, n) of dst (dst zero-padded to bytes).
inline void copy_bits(const uint8_t* src, int64_t src_off, int64_t n, uint8_t* dst) {
  if (n <= 0) return;
  const int64_t nbytes = (n + 7) / 8;
  if ((src_off & 7) == 0) {
    std::memcpy(dst, src + (src_off >> 3), size_t(nbytes));
  } else {
    const int sh = int(src_off & 7);
    const uint8_t* s = src + (src_off >> 3);
    const int64_t avail = (src_off + n + 7) / 8 - (src_off >> 3);  // bytes readable from s
    for (int64_t i = 0; i < nbytes; ++i) {
      const unsigned lo_b = s[i];
      const unsigned hi_b = (i + 1 < avail) ? s[i + 1] : 0u;
      dst[i] = uint8_t((lo_b >> sh) | (hi_b << (8 - sh)));
    }
  }
  if (n & 7) dst[nbytes - 1] &= uint8_t((1u << (n & 7)) - 1);
}

// Packing of a row range of one column into `dst` (one contiguous send buffer holds all
// the columns of one destination; the caller lays out 64-byte aligned sections).
inline void pack_fixed(int width, const uint8_t* values, int64_t row0, int64_t n, uint8_t* dst) {
  if (n > 0) std::memcpy(dst, values + row0 * width, size_t(n) * size_t(width));
}

// Variable-length (string/binary) rows [row0, row0+n): offsets rebased to 0 (n+1 of them,
// `ow` bytes each) into dst_off, the bytes into dst_data. Returns the data byte count.
inline int64_t pack_var(int ow, const uint8_t* offsets, const uint8_t* data, int64_t row0, int64_t n,
                        uint8_t* dst_off, uint8_t* dst_data) {
  if (ow == 4) {
    const int32_t* o = reinterpret_cast<const int32_t*>(offsets) + row0;
    int32_t* d = reinterpret_cast<int32_t*>(dst_off);
    const int32_t base = o[0];
    for (int64_t i = 0; i <= n; ++i) d[i] = o[i] - base;
    const int64_t len = int64_t(o[n]) - base;
    if (len > 0) std::memcpy(dst_data, data + base, size_t(len));
    return len;
  }
  const int64_t* o = reinterpret_cast<const int64_t*>(offsets) + row0;
  int64_t* d = reinterpret_cast<int64_t*>(dst_off);
  const int64_t base = o[0];
  for (int64_t i = 0; i <= n; ++i) d[i] = o[i] - base;
  const int64_t len = o[n] - base;
  if (len > 0) std::memcpy(dst_data, data + base, size_t(len));
  return len;
}

}  // namespace wink
}  // namespace opgraph
