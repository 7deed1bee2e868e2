// Packing and its adjoint, side by side: a tile's input copied into phase planes (planar,
// or channels innermost), the phase-plane gradients added back into grad_input, and a
// band of grad_output copied into rows, and result runs stored. The layouts are Layout's
// (tile_layout.h).
#pragma once

#include "tile_layout.h"

#include <cstring>
#include <type_traits>

namespace torchconv3d::cpu {

// memcpy of a short run (a position's channels, often 32-128 bytes), in 16-byte pieces the
// compiler keeps inline: a libc call per position cost a quarter of a 16-channel tile pass.
inline void copy_run(void* dst, const void* src, size_t bytes) {
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  if (bytes < 16 || bytes > 512) {
    std::memcpy(d, s, bytes);
    return;
  }
  size_t i = 0;
  for (; i + 16 <= bytes; i += 16) std::memcpy(d + i, s + i, 16);
  if (i < bytes) std::memcpy(d + bytes - 16, s + bytes - 16, 16);  // (overlaps, same bytes)
}

// dst[j * stride] = src[j] + bias[j] for j < count, as T (a contiguous run when stride is 1,
// which lets the compiler vectorise it; bfloat16 runs take the micro-kernels' rounding).
template <typename T, typename C>
inline void store_run(T* dst, int64_t stride, const C* src, const C* bias, int64_t count) {
  if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<C, float>) {
    if (stride == 1)
      return micro_kernels(float{}).store_bf16(count, src, bias, reinterpret_cast<uint16_t*>(dst));
  }
  if constexpr (std::is_same_v<T, C>) {  // this file is built for the baseline ISA
    if (stride == 1) return micro_kernels(C{}).store_biased(count, src, bias, dst);
  }
  if (stride == 1) {
    for (int64_t j = 0; j < count; ++j) dst[j] = static_cast<T>(src[j] + bias[j]);
  } else {
    for (int64_t j = 0; j < count; ++j) dst[j * stride] = static_cast<T>(src[j] + bias[j]);
  }
}

// pack_planes for channel stride 1 (channels_last): the same planes, filled walking each
// source row once with the channel innermost, so reads are contiguous.
template <bool Sanitize, typename T, typename A>
void pack_planes_channels_last(const Layout& L, const ColumnMap& cm, const InputFrames<T>& x,
                               int64_t channels, const std::array<int64_t, 3>& xs, int64_t od0,
                               int64_t depths, int64_t oh0, int64_t rows, A* buf) {
  const Geometry& g = L.g;
  const int64_t cstride = L.channel_stride();
  for (int64_t slot = 0; slot < L.slots; ++slot) {
    if (!L.slot_used(slot, depths)) continue;
    const int64_t id = source_index(od0 * g.stride[0] + slot - g.pad_before[0], g.in[0],
                                    g.pad_before[0], g.pad_after[0], g.mode[0]);
    for (int64_t rh = 0; rh < L.sh; ++rh) {
      for (int64_t rw = 0; rw < L.sw; ++rw) {
        A* base = buf + L.plane_offset(0, slot, rh, rw);
        const int64_t* col = cm.col.data() + rw * L.lw;
        for (int64_t t_row = 0; t_row < rows; ++t_row) {
          A* d = base + t_row * L.lw;
          const int64_t ih = id < 0 ? -1 : row_source(L, oh0, t_row, rh);
          if (ih < 0) {
            for (int64_t c = 0; c < channels; ++c)
              std::fill(d + c * cstride, d + c * cstride + L.lw, A(0));
            continue;
          }
          const T* src = x.frame(0, id) + ih * xs[1];
          for (int64_t t = 0; t < L.lw; ++t) {
            if (col[t] < 0) {
              for (int64_t c = 0; c < channels; ++c) d[c * cstride + t] = A(0);
            } else {
              const T* sp = src + col[t] * xs[2];
              for (int64_t c = 0; c < channels; ++c) d[c * cstride + t] = load<Sanitize, A>(sp[c]);
            }
          }
        }
      }
    }
  }
}

// Copies channels [0, channels) of `x` (one sample from the block's first channel; height
// and width strides xs[1], xs[2]) for the tile of `depths` output depths from od0 and the
// band from oh0 into phase planes, their first `rows` rows (what the band reads).
template <bool Sanitize = false, typename T, typename A>
void pack_planes(const Layout& L, const ColumnMap& cm, const InputFrames<T>& x,
                 int64_t channels, const std::array<int64_t, 3>& xs, int64_t od0,
                 int64_t depths, int64_t oh0, int64_t rows, A* buf) {
  const Geometry& g = L.g;
  const int64_t lo = cm.all_lo, hi = cm.all_hi, pw = g.pad_before[2];
  if (x.body_c == 1 && channels > 1) {
    // channels_last: a source row is [W][C]; read it once, channels innermost.
    pack_planes_channels_last<Sanitize>(L, cm, x, channels, xs, od0, depths, oh0, rows, buf);
    return;
  }
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t slot = 0; slot < L.slots; ++slot) {
      if (!L.slot_used(slot, depths)) continue;
      const int64_t id = source_index(od0 * g.stride[0] + slot - g.pad_before[0], g.in[0],
                                      g.pad_before[0], g.pad_after[0], g.mode[0]);
      for (int64_t rh = 0; rh < L.sh; ++rh) {
        // The sw phase planes of (c, slot, rh) are consecutive: phase rw at dst + rw * plane.
        A* dst = buf + L.plane_offset(c, slot, rh, 0);
        for (int64_t t_row = 0; t_row < rows; ++t_row, dst += L.lw) {
          const int64_t ih = id < 0 ? -1 : row_source(L, oh0, t_row, rh);
          if (ih < 0) {
            for (int64_t rw = 0; rw < L.sw; ++rw)
              std::fill(dst + rw * L.plane, dst + rw * L.plane + L.lw, A(0));
            continue;
          }
          const T* src = x.frame(c, id) + ih * xs[1];
          // Border columns through the table, where the padding mode decides.
          for (int64_t rw = 0; rw < L.sw; ++rw) {
            A* d = dst + rw * L.plane;
            const int64_t* col = cm.col.data() + rw * L.lw;
            for (int64_t t = 0; t < lo; ++t)
              d[t] = col[t] < 0 ? A(0) : load<Sanitize, A>(src[col[t] * xs[2]]);
            for (int64_t t = hi; t < L.lw; ++t)
              d[t] = col[t] < 0 ? A(0) : load<Sanitize, A>(src[col[t] * xs[2]]);
          }
          // Interior: one pass over the source row feeds every phase (contiguous reads;
          // stride 2 de-interleaves into two planes).
          if (xs[2] == 1 && L.sw == 1) {
            const T* s0 = src - pw;
            for (int64_t t = lo; t < hi; ++t) dst[t] = load<Sanitize, A>(s0[t]);
          } else if (xs[2] == 1 && L.sw == 2) {
            const T* s0 = src - pw;
            A* d1 = dst + L.plane;
            for (int64_t t = lo; t < hi; ++t) {
              dst[t] = load<Sanitize, A>(s0[2 * t]);
              d1[t] = load<Sanitize, A>(s0[2 * t + 1]);
            }
          } else {
            for (int64_t rw = 0; rw < L.sw; ++rw) {
              A* d = dst + rw * L.plane;
              const T* s0 = src + (rw - pw) * xs[2];
              const int64_t step = L.sw * xs[2];
              for (int64_t t = lo; t < hi; ++t) d[t] = load<Sanitize, A>(s0[t * step]);
            }
          }
        }
      }
    }
  }
}

// The adjoint of pack_planes for the first `rows` rows of the sw phase planes (rh, *) of
// `channels` channels at depth id: adds gp[c * ldp + rw * pstride + t_row * lw + t_col]
// into gx (channel stride gc, spatial strides gs), for the input rows [rows_from, rows_to)
// only, row ih at gx's row ih - rows_from.
template <typename A, typename D>
void scatter_planes(const Layout& L, const ColumnMap& cm, const A* gp, int64_t ldp,
                    int64_t pstride, int64_t channels, int64_t rows, int64_t id, int64_t oh0,
                    int64_t rh, D* gx, int64_t gc, const std::array<int64_t, 3>& gs,
                    int64_t rows_from, int64_t rows_to) {
  const Geometry& g = L.g;
  const int64_t lo = cm.all_lo, hi = cm.all_hi, pw = g.pad_before[2];
  for (int64_t t_row = 0; t_row < rows; ++t_row) {
    const int64_t ih = row_source(L, oh0, t_row, rh);
    if (ih < rows_from || ih >= rows_to) continue;  // also a padding zero (-1)
    for (int64_t c = 0; c < channels; ++c) {
      const A* src = gp + c * ldp + t_row * L.lw;
      D* dst = gx + c * gc + id * gs[0] + (ih - rows_from) * gs[1];
      for (int64_t rw = 0; rw < L.sw; ++rw) {
        const A* s = src + rw * pstride;
        const int64_t* col = cm.col.data() + rw * L.lw;
        for (int64_t t = 0; t < lo; ++t)
          if (col[t] >= 0) dst[col[t] * gs[2]] += s[t];
        for (int64_t t = hi; t < L.lw; ++t)
          if (col[t] >= 0) dst[col[t] * gs[2]] += s[t];
      }
      if (gs[2] == 1 && L.sw == 1) {
        D* d0 = dst - pw;
        for (int64_t t = lo; t < hi; ++t) d0[t] += src[t];
      } else if (gs[2] == 1 && L.sw == 2) {  // interleave the two phases back
        D* d0 = dst - pw;
        const A* s1 = src + pstride;
        for (int64_t t = lo; t < hi; ++t) {
          d0[2 * t] += src[t];
          d0[2 * t + 1] += s1[t];
        }
      } else {
        for (int64_t rw = 0; rw < L.sw; ++rw) {
          const A* s = src + rw * pstride;
          D* d0 = dst + (rw - pw) * gs[2];
          const int64_t step = L.sw * gs[2];
          for (int64_t t = lo; t < hi; ++t) d0[t * step] += s[t];
        }
      }
    }
  }
}

// grad_output of one sample and tile for `channels` channels into rows of length ld:
// position f = r * lw + ow at dst[c * ld + base + f], zero wherever no output is.
template <typename T, typename A>
void pack_grad_output(const Layout& L, const T* gy, int64_t channels, int64_t gyc,
                      const std::array<int64_t, 3>& gys, int64_t od, int64_t oh0, A* dst,
                      int64_t ld, int64_t base) {
  const Geometry& g = L.g;
  const int64_t rows = L.band_rows(oh0);
  if (gyc == 1 && channels > 1) {  // channels_last: channels innermost, contiguous reads
    for (int64_t c = 0; c < channels; ++c) std::fill(dst + c * ld, dst + (c + 1) * ld, A(0));
    for (int64_t r = 0; r < rows; ++r) {
      const T* s = gy + od * gys[0] + (oh0 + r) * gys[1];
      A* dr = dst + base + r * L.lw;
      for (int64_t ow = 0; ow < g.out[2]; ++ow)
        for (int64_t c = 0; c < channels; ++c)
          dr[c * ld + ow] = static_cast<A>(s[ow * gys[2] + c]);
    }
    return;
  }
  for (int64_t c = 0; c < channels; ++c) {
    A* d = dst + c * ld;
    std::fill(d, d + ld, A(0));
    for (int64_t r = 0; r < rows; ++r) {
      const T* s = gy + c * gyc + od * gys[0] + (oh0 + r) * gys[1];
      A* dr = d + base + r * L.lw;
      if (gys[2] == 1) {
        for (int64_t ow = 0; ow < g.out[2]; ++ow) dr[ow] = static_cast<A>(s[ow]);
      } else {
        for (int64_t ow = 0; ow < g.out[2]; ++ow) dr[ow] = static_cast<A>(s[ow * gys[2]]);
      }
    }
  }
}

// A tile's phase planes, channels innermost: element (plane p, position f, channel e) at
// buf[(p * L.plane + f) * ldb + e], planes in Layout's order (slot, rh, rw). Channels
// [channels, ldb) are left as they are (the caller zeroes the buffer once).
template <typename T, typename B>
void pack_channels_innermost(const Layout& L, const ColumnMap& cm, const InputFrames<T>& x,
                             int64_t channels, int64_t ldb, const std::array<int64_t, 3>& xs,
                             int64_t od0, int64_t depths, int64_t oh0, int64_t rows, B* buf) {
  const Geometry& g = L.g;
  const int64_t row = L.lw * ldb;
  for (int64_t slot = 0; slot < L.slots; ++slot) {
    if (!L.slot_used(slot, depths)) continue;
    const int64_t id = source_index(od0 * g.stride[0] + slot - g.pad_before[0], g.in[0],
                                    g.pad_before[0], g.pad_after[0], g.mode[0]);
    for (int64_t rh = 0; rh < L.sh; ++rh)
      for (int64_t rw = 0; rw < L.sw; ++rw) {
        B* base = buf + L.plane_offset(0, slot, rh, rw) * ldb;
        const int64_t* col = cm.col.data() + rw * L.lw;
        for (int64_t t_row = 0; t_row < rows; ++t_row) {
          B* d = base + t_row * row;
          const int64_t ih = id < 0 ? -1 : row_source(L, oh0, t_row, rh);
          if (ih < 0) {
            std::fill(d, d + row, B(0));
            continue;
          }
          const T* src = x.frame(0, id) + ih * xs[1];
          for (int64_t t = 0; t < L.lw; ++t) {
            B* dt = d + t * ldb;
            if (col[t] < 0) {
              std::fill(dt, dt + channels, B(0));
              continue;
            }
            const T* sp = src + col[t] * xs[2];
            if constexpr (std::is_same_v<T, B>) {
              copy_run(dt, sp, channels * sizeof(T));
            } else {
              for (int64_t e = 0; e < channels; ++e) dt[e] = static_cast<B>(sp[e]);
            }
          }
        }
      }
  }
}

}  // namespace torchconv3d::cpu
