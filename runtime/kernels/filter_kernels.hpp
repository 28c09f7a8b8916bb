// opgraph filter kernels: fused, multithreaded filter-and-compact of Arrow columns, and a
// lookup-table gather into a bitmap (isin over a dictionary's codes).
//
// filter (k_filter_count + k_filter_compact): the rows whose mask bit is set and valid (a
// null predicate counts as false) are copied from every fixed-width column (bit-packed
// bools, 1/2/4/8/16-byte values and any other whole-byte width; dictionary columns pass
// their indices) into one output buffer per column, without an intermediate index array:
//   1. the rows are cut into tasks (one contiguous run of every input - a "segment" - cut
//      into blocks of `block` rows, a multiple of 64) and each task's selected rows are
//      counted from the mask words (popcount; parallel);
//   2. the caller takes the prefix sum (each task's first output row) and allocates the
//      outputs at their exact size;
//   3. tasks run in parallel (dynamic scheduling): per 2,048-row sub-block, the positions
//      of the selected rows are collected once into a small local selection vector (L1),
//      then every column is gathered through it (all rows selected: one memcpy; none: skip);
//      dictionary codes of chunks with different dictionaries go through a per-chunk
//      transpose table into one unified dictionary's codes on the way.
// Output bitmaps (bool values, validity) are zeroed by the caller; tasks start at arbitrary
// bit positions, so each 64-bit output word is OR-ed in atomically (one atomic per 64 rows).
//
// Why not have the expression JIT write the selection directly (no mask): evaluating the
// predicate is one streaming read of its columns (`a > 0.5` over 10M float64: ~0.010 s on
// one core here, about memory bandwidth); the mask bitmap it writes and this kernel reads
// again is 1/64 of that traffic, so fusing the two would save a few percent at most.
//
// take_multi: gather of several fixed-width columns by one index array (join / sort output).
//
// lut_bits: out bit i = lut[idx[i]] for i < n (idx null -> 0), parallel over 64-row words.
//
// Everything works on raw buffers; the Cython layer (filtering.pyx) releases the GIL.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kernel_common.hpp"

namespace opgraph {
namespace filt {

// One run of rows in which the mask and every column are single contiguous arrays.
struct Seg {
  int64_t n;
  const uint8_t* mask;    // values bitmap
  int64_t moff;           // bit offset
  const uint8_t* mvalid;  // null: no nulls
  int64_t mvoff;
};

// Column c in segment s: cin[s * ncols + c].
struct ColIn {
  const uint8_t* data;   // values (bitmap when width == 0)
  int64_t off;           // element offset (bit offset for width 0)
  const uint8_t* valid;  // null: no nulls in this segment
  int64_t voff;
  const int32_t* remap;  // dictionary codes -> unified codes (null: copy as is)
  int64_t nremap;        // entries of remap (codes outside -> 0: only under null slots)
};

struct ColOut {
  int width;       // bytes per value; 0 = bit-packed bool
  uint8_t* data;   // count * width bytes (width 0: bitmap of whole 64-bit words, zeroed)
  uint8_t* valid;  // null: no validity output; else a zeroed bitmap of whole 64-bit words
};

inline int64_t num_tasks(const Seg* segs, int nseg, int64_t block) {
  int64_t t = 0;
  for (int s = 0; s < nseg; ++s) t += (segs[s].n + block - 1) / block;
  return t;
}

// (segment, first row) of every task
inline void task_list(const Seg* segs, int nseg, int64_t block, std::vector<int>& tseg, std::vector<int64_t>& tlo) {
  for (int s = 0; s < nseg; ++s)
    for (int64_t lo = 0; lo < segs[s].n; lo += block) {
      tseg.push_back(s);
      tlo.push_back(lo);
    }
}

inline uint64_t sel_word(const Seg& g, int64_t i, int64_t len) {
  uint64_t w = load_bits(g.mask, g.moff + i, len);
  if (g.mvalid) w &= load_bits(g.mvalid, g.mvoff + i, len);
  return w;
}

// Selected rows of every task -> counts (sized num_tasks).
inline void k_filter_count(const Seg* segs, int nseg, int64_t block, int64_t* counts, int nthreads) {
  std::vector<int> tseg;
  std::vector<int64_t> tlo;
  task_list(segs, nseg, block, tseg, tlo);
  const int64_t ntasks = static_cast<int64_t>(tseg.size());
  int64_t rows = 0;
  for (int s = 0; s < nseg; ++s) rows += segs[s].n;
  std::atomic<int64_t> next(0);
  parallel_for(clamp_threads(nthreads, rows, int64_t(1) << 20), [&](int) {
    for (;;) {
      int64_t t = next.fetch_add(1);
      if (t >= ntasks) break;
      const Seg& g = segs[tseg[t]];
      const int64_t lo = tlo[t], hi = std::min(g.n, lo + block);
      int64_t c = 0;
      for (int64_t i = lo; i < hi; i += 64) c += __builtin_popcountll(sel_word(g, i, std::min<int64_t>(64, hi - i)));
      counts[t] = c;
    }
  });
}

// Appends bits to a zeroed bitmap from an arbitrary start position; whole 64-bit words
// are OR-ed in atomically (a neighbouring task may share the first/last word).
struct BitWriter {
  uint64_t* words;
  int64_t pos;
  uint64_t acc = 0;
  int64_t ones = 0;
  BitWriter(uint8_t* bitmap, int64_t start) : words(reinterpret_cast<uint64_t*>(bitmap)), pos(start) {}
  inline void put(uint64_t b) {
    acc |= b << (pos & 63);
    ones += static_cast<int64_t>(b);
    ++pos;
    if ((pos & 63) == 0) {
      if (acc) __atomic_fetch_or(&words[(pos >> 6) - 1], acc, __ATOMIC_RELAXED);
      acc = 0;
    }
  }
  // `cnt` (<= 64) bits of w, low first
  inline void put_word(uint64_t w, int cnt) {
    ones += __builtin_popcountll(w);
    const int sh = static_cast<int>(pos & 63);
    acc |= w << sh;
    const int room = 64 - sh;
    if (cnt >= room) {
      if (acc) __atomic_fetch_or(&words[pos >> 6], acc, __ATOMIC_RELAXED);
      acc = (room < 64 && cnt > room) ? (w >> room) : 0;
    }
    pos += cnt;
  }
  inline void flush() {
    if ((pos & 63) && acc) __atomic_fetch_or(&words[pos >> 6], acc, __ATOMIC_RELAXED);
    acc = 0;
  }
};

// The bits of rows [b0, b1) of a row block (``sel`` null: all of them, word by word) or of
// its ``cnt`` selected rows ``b0 + sel[k]``, appended to ``w``; ``off``: the bitmap's offset.
inline void put_block_bits(BitWriter& w, const uint8_t* bits, int64_t off, int64_t b0, int64_t b1, const uint16_t* sel,
                           int64_t cnt) {
  if (sel == nullptr) {
    for (int64_t i = b0; i < b1; i += 64) {
      const int64_t len = std::min<int64_t>(64, b1 - i);
      w.put_word(load_bits(bits, off + i, len), static_cast<int>(len));
    }
  } else {
    for (int64_t k = 0; k < cnt; ++k) w.put(get_bit(bits, off + b0 + sel[k]));
  }
}

template <class T>
inline void gather_sel(const uint8_t* src, int64_t base, const uint16_t* sel, int64_t cnt, uint8_t* dst) {
  const T* s = reinterpret_cast<const T*>(src) + base;
  T* o = reinterpret_cast<T*>(dst);
  for (int64_t k = 0; k < cnt; ++k) o[k] = s[sel[k]];
}

// dictionary codes through a transpose table (selected rows, or all rows when sel is null)
template <class T>
inline void gather_remap(const uint8_t* src, int64_t base, const uint16_t* sel, int64_t cnt, uint8_t* dst,
                         const int32_t* remap, int64_t nremap) {
  const T* s = reinterpret_cast<const T*>(src) + base;
  T* o = reinterpret_cast<T*>(dst);
  const uint64_t nr = static_cast<uint64_t>(nremap);
  for (int64_t k = 0; k < cnt; ++k) {
    const uint64_t code = static_cast<uint64_t>(s[sel ? sel[k] : k]);
    o[k] = static_cast<T>(code < nr ? remap[code] : 0);
  }
}

constexpr int64_t kSub = 2048;  // rows per sub-block (local selection vector)

// Gathers the selected rows of every column; starts[t] = first output row of task t
// (ntasks + 1 entries, the last = total).
// nulls[c] receives the number of nulls written to column c.
inline void k_filter_compact(const Seg* segs, int nseg, int64_t block, const int64_t* starts, const ColIn* cin,
                             int ncols, const ColOut* cout, int64_t* nulls, int nthreads) {
  std::vector<int> tseg;
  std::vector<int64_t> tlo;
  task_list(segs, nseg, block, tseg, tlo);
  const int64_t ntasks = static_cast<int64_t>(tseg.size());
  int64_t rows = 0;
  for (int s = 0; s < nseg; ++s) rows += segs[s].n;
  std::vector<std::atomic<int64_t>> valid_out(ncols);
  for (auto& v : valid_out) v.store(0);
  std::atomic<int64_t> next(0);
  parallel_for(clamp_threads(nthreads, rows, int64_t(1) << 18), [&](int) {
    uint16_t sel[kSub];
    std::vector<int64_t> ones(ncols, 0);
    for (;;) {
      int64_t t = next.fetch_add(1);
      if (t >= ntasks) break;
      const int s = tseg[t];
      const Seg& g = segs[s];
      const ColIn* ci = cin + static_cast<int64_t>(s) * ncols;
      const int64_t lo = tlo[t], hi = std::min(g.n, lo + block);
      int64_t j = starts[t];  // output row
      for (int64_t b0 = lo; b0 < hi; b0 += kSub) {
        const int64_t b1 = std::min(hi, b0 + kSub);
        int64_t cnt = 0;
        for (int64_t i = b0; i < b1; i += 64) {
          uint64_t w = sel_word(g, i, std::min<int64_t>(64, b1 - i));
          const uint16_t rel = static_cast<uint16_t>(i - b0);
          while (w) {
            sel[cnt++] = static_cast<uint16_t>(rel + __builtin_ctzll(w));
            w &= w - 1;
          }
        }
        if (cnt == 0) continue;
        const bool all = cnt == b1 - b0;
        for (int c = 0; c < ncols; ++c) {
          const ColIn& in = ci[c];
          const ColOut& out = cout[c];
          const int w = out.width;
          if (w == 0) {
            BitWriter bw(out.data, j);
            put_block_bits(bw, in.data, in.off, b0, b1, all ? nullptr : sel, cnt);
            bw.flush();
          } else if (in.remap) {
            uint8_t* dst = out.data + j * w;
            const int64_t base = in.off + b0;
            const uint16_t* sl = all ? nullptr : sel;
            switch (w) {
              case 8: gather_remap<uint64_t>(in.data, base, sl, cnt, dst, in.remap, in.nremap); break;
              case 4: gather_remap<uint32_t>(in.data, base, sl, cnt, dst, in.remap, in.nremap); break;
              case 2: gather_remap<uint16_t>(in.data, base, sl, cnt, dst, in.remap, in.nremap); break;
              default: gather_remap<uint8_t>(in.data, base, sl, cnt, dst, in.remap, in.nremap); break;
            }
          } else if (all) {
            std::memcpy(out.data + j * w, in.data + (in.off + b0) * w, static_cast<size_t>(cnt * w));
          } else {
            uint8_t* dst = out.data + j * w;
            const int64_t base = in.off + b0;
            switch (w) {
              case 8: gather_sel<uint64_t>(in.data, base, sel, cnt, dst); break;
              case 4: gather_sel<uint32_t>(in.data, base, sel, cnt, dst); break;
              case 2: gather_sel<uint16_t>(in.data, base, sel, cnt, dst); break;
              case 1: gather_sel<uint8_t>(in.data, base, sel, cnt, dst); break;
              default: {
                const uint8_t* src = in.data + base * w;
                for (int64_t k = 0; k < cnt; ++k) std::memcpy(dst + k * w, src + static_cast<int64_t>(sel[k]) * w, w);
              }
            }
          }
          if (out.valid) {
            BitWriter vw(out.valid, j);
            if (in.valid == nullptr) {
              for (int64_t k = 0; k < cnt; k += 64) {
                int64_t len = std::min<int64_t>(64, cnt - k);
                vw.put_word(len == 64 ? ~uint64_t(0) : ((uint64_t(1) << len) - 1), static_cast<int>(len));
              }
            } else {
              put_block_bits(vw, in.valid, in.voff, b0, b1, all ? nullptr : sel, cnt);
            }
            vw.flush();
            ones[c] += vw.ones;
          }
        }
        j += cnt;
      }
    }
    for (int c = 0; c < ncols; ++c)
      if (ones[c]) valid_out[c].fetch_add(ones[c]);
  });
  const int64_t total = starts[ntasks];  // starts has ntasks + 1 entries
  for (int c = 0; c < ncols; ++c) nulls[c] = cout[c].valid ? total - valid_out[c].load() : 0;
}

// ------------------------------------------------------------------ multi-column take

// out_c[i] = col_c[idx[i]] for every column c (idx < 0 -> null; indices already checked
// < the columns' length by the caller). Rows are split over threads in ranges aligned to
// 64 rows (whole bitmap words per thread, no atomics) and gathered in blocks of 64K rows,
// every column in turn (the block's indices stay in cache; shorter blocks, which switch
// between the columns' random reads more often, measured ~20% slower on random indices).
// cin[c].remap is ignored; cout[c].valid null = the column needs no validity output.
constexpr int64_t kTakeBlock = int64_t(1) << 16;  // rows per column pass (a multiple of 64)
// Rows ahead whose source value is prefetched: random indices miss cache and TLB on every
// row, and the prefetches keep more of those misses in flight than the loop alone.
constexpr int64_t kTakePrefetch = 32;

template <class IdxT>
void k_take_multi(const ColIn* cin, int ncols, const IdxT* idx, int64_t n, const ColOut* cout, int64_t* nulls,
                  int nthreads) {
  const int nt = clamp_threads(nthreads, n, int64_t(1) << 16);
  std::vector<int64_t> nn(static_cast<size_t>(nt) * ncols, 0);
  parallel_for(nt, [&](int t) {
    const int64_t lo = (n * t / nt) & ~int64_t(63), hi = t + 1 == nt ? n : ((n * (t + 1) / nt) & ~int64_t(63));
    for (int64_t b0 = lo; b0 < hi; b0 += kTakeBlock) {
      const int64_t b1 = std::min(hi, b0 + kTakeBlock);
      for (int c = 0; c < ncols; ++c) {
        const ColIn& in = cin[c];
        const ColOut& out = cout[c];
        const int w = out.width;
        if (w == 0) {
          uint64_t* words = reinterpret_cast<uint64_t*>(out.data);
          for (int64_t i = b0; i < b1; i += 64) {
            const int64_t e = std::min<int64_t>(64, b1 - i);
            uint64_t word = 0;
            for (int64_t k = 0; k < e; ++k) {
              const int64_t j = static_cast<int64_t>(idx[i + k]);
              word |= static_cast<uint64_t>(j >= 0 && get_bit(in.data, in.off + j)) << k;
            }
            words[i >> 6] = word;
          }
        } else {
#define OG_TAKE_CASE(T)                                                          \
  {                                                                              \
    const T* src = reinterpret_cast<const T*>(in.data) + in.off;                \
    T* o = reinterpret_cast<T*>(out.data);                                       \
    const int64_t pf_end = b1 - kTakePrefetch;                                   \
    for (int64_t i = b0; i < b1; ++i) {                                          \
      if (i < pf_end) {                                                          \
        const int64_t ahead = static_cast<int64_t>(idx[i + kTakePrefetch]);      \
        if (ahead >= 0) __builtin_prefetch(src + ahead);                         \
      }                                                                          \
      const int64_t j = static_cast<int64_t>(idx[i]);                            \
      o[i] = j >= 0 ? src[j] : T(0);                                             \
    }                                                                            \
  }
          switch (w) {
            case 8: OG_TAKE_CASE(uint64_t) break;
            case 4: OG_TAKE_CASE(uint32_t) break;
            case 2: OG_TAKE_CASE(uint16_t) break;
            case 1: OG_TAKE_CASE(uint8_t) break;
            default: {
              const uint8_t* src = in.data + in.off * w;
              for (int64_t i = b0; i < b1; ++i) {
                const int64_t j = static_cast<int64_t>(idx[i]);
                if (j >= 0)
                  std::memcpy(out.data + i * w, src + j * w, w);
                else
                  std::memset(out.data + i * w, 0, w);
              }
            }
          }
#undef OG_TAKE_CASE
        }
        if (out.valid) {
          uint64_t* words = reinterpret_cast<uint64_t*>(out.valid);
          int64_t z = 0;
          for (int64_t i = b0; i < b1; i += 64) {
            const int64_t e = std::min<int64_t>(64, b1 - i);
            uint64_t word = 0;
            for (int64_t k = 0; k < e; ++k) {
              const int64_t j = static_cast<int64_t>(idx[i + k]);
              const bool v = j >= 0 && (in.valid == nullptr || get_bit(in.valid, in.voff + j));
              word |= static_cast<uint64_t>(v) << k;
            }
            words[i >> 6] = word;
            z += e - __builtin_popcountll(word);
          }
          nn[static_cast<size_t>(t) * ncols + c] += z;
        }
      }
    }
  });
  for (int c = 0; c < ncols; ++c) {
    int64_t z = 0;
    for (int t = 0; t < nt; ++t) z += nn[static_cast<size_t>(t) * ncols + c];
    nulls[c] = z;
  }
}

// 64 bytes (0/1) -> one word, bit k = byte k
inline uint64_t pack_bytes(const uint8_t* b) {
#if defined(__SSE2__)
  uint64_t w = 0;
  for (int q = 0; q < 4; ++q) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * q));
    v = _mm_cmpgt_epi8(v, _mm_setzero_si128());
    w |= static_cast<uint64_t>(static_cast<uint32_t>(_mm_movemask_epi8(v)) & 0xffffu) << (16 * q);
  }
  return w;
#else
  uint64_t w = 0;
  for (int k = 0; k < 64; ++k) w |= static_cast<uint64_t>(b[k] != 0) << k;
  return w;
#endif
}

// out bit i (a zeroed bitmap of whole 64-bit words) = lut[idx[i]] != 0; a null index
// (valid bit 0) -> 0. Returns the number of set bits.
template <class I>
int64_t k_lut_bits(const I* idx, const uint8_t* valid, int64_t voff, int64_t n, const uint8_t* lut, int64_t nlut,
                   uint8_t* out, int nthreads) {
  uint64_t* words = reinterpret_cast<uint64_t*>(out);
  const int64_t nwords = (n + 63) / 64;
  int nt = clamp_threads(nthreads, n, int64_t(1) << 18);
  std::vector<int64_t> ones(nt, 0);
  parallel_for(nt, [&](int t) {
    const int64_t w0 = nwords * t / nt, w1 = nwords * (t + 1) / nt;
    int64_t c = 0;
    uint8_t tmp[64];
    for (int64_t wi = w0; wi < w1; ++wi) {
      const int64_t i0 = wi * 64, len = std::min<int64_t>(64, n - i0);
      for (int64_t k = 0; k < len; ++k) {
        const uint64_t code = static_cast<uint64_t>(static_cast<int64_t>(idx[i0 + k]));
        // out-of-range codes (only possible under a null slot) read as false
        tmp[k] = code < static_cast<uint64_t>(nlut) ? lut[code] : 0;
      }
      for (int64_t k = len; k < 64; ++k) tmp[k] = 0;
      uint64_t w = pack_bytes(tmp);
      if (valid) w &= load_bits(valid, voff + i0, len);
      words[wi] = w;
      c += __builtin_popcountll(w);
    }
    ones[t] = c;
  });
  int64_t total = 0;
  for (int64_t c : ones) total += c;
  return total;
}

}  // namespace filt
}  // namespace opgraph
