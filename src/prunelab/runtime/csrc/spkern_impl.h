// prunelab sparse kernels: the ISA-independent implementation.
//
// Included by one translation unit per instruction set after `#pragma GCC target(...)`,
// with SPK_NS (namespace) and SPK_W (float lanes of a vector register) defined. It uses
// GCC vector extensions only (no library calls), so the same source becomes SSE2, AVX2+FMA
// or AVX-512 code and every path computes the same sums in the same order.

namespace prunelab_spk {
namespace SPK_NS {

typedef float vf __attribute__((vector_size(SPK_W * 4)));

static inline vf vload(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof(vf));
  return v;
}
static inline void vstore(float* p, vf v) { __builtin_memcpy(p, &v, sizeof(vf)); }
static inline vf vsplat(float a) {
  vf v = {};
  return v + a;
}

// Accumulate one row segment into NV vectors of Y (NV * SPK_W consecutive columns).
template <int NV>
static inline void row_tile(int32_t s, int32_t e, const uint16_t* cols, const float* vals,
                            const float* Xp, int64_t ldx, float* y) {
  vf acc[NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) acc[v] = vload(y + v * SPK_W);
  for (int32_t k = s; k < e; ++k) {
    const float* xr = Xp + (int64_t)cols[k] * ldx;
    const vf w = vsplat(vals[k]);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] += w * vload(xr + v * SPK_W);
  }
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) vstore(y + v * SPK_W, acc[v]);
}

// The same for fewer than SPK_W columns (scalar lanes).
static inline void row_tail(int32_t s, int32_t e, const uint16_t* cols, const float* vals,
                            const float* Xp, int64_t ldx, float* y, int nt) {
  float acc[SPK_W];
  for (int j = 0; j < nt; ++j) acc[j] = y[j];
  for (int32_t k = s; k < e; ++k) {
    const float* xr = Xp + (int64_t)cols[k] * ldx;
    const float w = vals[k];
    for (int j = 0; j < nt; ++j) acc[j] += w * xr[j];
  }
  for (int j = 0; j < nt; ++j) y[j] = acc[j];
}

static const int kMaxVectors = 8;  // accumulators per row tile
static const int kTile = kMaxVectors * SPK_W;

static inline void row_any(int32_t s, int32_t e, const uint16_t* cols, const float* vals,
                           const float* Xp, int64_t ldx, float* y, int nt) {
  int done = 0;
  while (nt - done >= SPK_W) {
    const int nv = (nt - done) / SPK_W;
    const float* xp = Xp + done;
    float* yp = y + done;
    switch (nv >= kMaxVectors ? kMaxVectors : nv) {
      case 8: row_tile<8>(s, e, cols, vals, xp, ldx, yp); done += 8 * SPK_W; break;
      case 7: row_tile<7>(s, e, cols, vals, xp, ldx, yp); done += 7 * SPK_W; break;
      case 6: row_tile<6>(s, e, cols, vals, xp, ldx, yp); done += 6 * SPK_W; break;
      case 5: row_tile<5>(s, e, cols, vals, xp, ldx, yp); done += 5 * SPK_W; break;
      case 4: row_tile<4>(s, e, cols, vals, xp, ldx, yp); done += 4 * SPK_W; break;
      case 3: row_tile<3>(s, e, cols, vals, xp, ldx, yp); done += 3 * SPK_W; break;
      case 2: row_tile<2>(s, e, cols, vals, xp, ldx, yp); done += 2 * SPK_W; break;
      default: row_tile<1>(s, e, cols, vals, xp, ldx, yp); done += SPK_W; break;
    }
  }
  if (done < nt) row_tail(s, e, cols, vals, Xp + done, ldx, y + done, nt - done);
}

// buf[r, j] = im2col(image)[k0 + r, n0 + j] for r < rows, j < nt (zero outside the image).
// Walks output rows (runs of constant oh): stride-1 runs are a copy between zero edges.
static void im2col_tile(const ConvGeom& g, const float* image, int64_t k0, int64_t rows,
                        int64_t n0, int nt, float* buf) {
  const int64_t taps = g.kh * g.kw;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t k = k0 + r;
    const int64_t c = k / taps, ki = (k % taps) / g.kw, kj = k % g.kw;
    const float* plane = image + c * g.H * g.W;
    const int64_t off = kj * g.dw - g.pw;  // iw = ow * sw + off
    float* out = buf + r * nt;
    int64_t oh = n0 / g.OW, ow = n0 % g.OW;
    int j = 0;
    while (j < nt) {
      const int run = (int)((nt - j) < (g.OW - ow) ? (nt - j) : (g.OW - ow));
      const int64_t ih = oh * g.sh - g.ph + ki * g.dh;
      float* o = out + j;
      if (ih < 0 || ih >= g.H) {
        for (int t = 0; t < run; ++t) o[t] = 0.0f;
      } else if (g.sw == 1) {
        const float* src = plane + ih * g.W + off + ow;  // o[t] = row[ow + t + off]
        int lo = (int)(-(off + ow) > 0 ? -(off + ow) : 0);
        int hi = (int)((g.W - off - ow) < run ? (g.W - off - ow) : run);
        if (lo > run) lo = run;
        if (hi < lo) hi = lo;
        for (int t = 0; t < lo; ++t) o[t] = 0.0f;
        for (int t = lo; t < hi; ++t) o[t] = src[t];
        for (int t = hi; t < run; ++t) o[t] = 0.0f;
      } else {
        const float* row = plane + ih * g.W;
        for (int t = 0; t < run; ++t) {
          const int64_t iw = (ow + t) * g.sw + off;
          o[t] = (iw >= 0 && iw < g.W) ? row[iw] : 0.0f;
        }
      }
      j += run;
      ow = 0;
      ++oh;
    }
  }
}

void spmm_rows(const SpmmArgs& a, int64_t r0, int64_t r1) {
  const SparseW& w = a.w;
  // Strided tiles (N > kTile, or a caller's row stride) are first copied into a contiguous
  // panel buffer (KP x kTile floats), so a tile is dense in cache whatever the stride.
  const bool copy = a.scratch && (a.conv || a.N > kTile || a.ldx != a.N);
  float* buf = a.scratch;
  for (int64_t n0 = 0; n0 < a.N; n0 += kTile) {
    const int nt = (int)((a.N - n0) < kTile ? (a.N - n0) : kTile);
    for (int64_t i = r0; i < r1; ++i) {
      float* y = a.Y + i * a.ldy + n0;
      const float b = a.bias ? a.bias[i] : 0.0f;
      for (int j = 0; j < nt; ++j) y[j] = b;
    }
    for (int64_t p = 0; p < w.P; ++p) {
      const int32_t* rp = w.rowptr + p * (w.M + 1);
      const float* Xp = a.conv ? a.X : a.X + p * w.KP * a.ldx + n0;
      int64_t ld = a.ldx;
      const int64_t rows = (w.K - p * w.KP) < w.KP ? (w.K - p * w.KP) : w.KP;
      if (a.conv) {
        im2col_tile(*a.conv, a.X, p * w.KP, rows, n0, nt, buf);
        Xp = buf;
        ld = nt;
      } else if (copy) {
        for (int64_t r = 0; r < rows; ++r)
          __builtin_memcpy(buf + r * nt, Xp + r * a.ldx, sizeof(float) * nt);
        Xp = buf;
        ld = nt;
      }
      for (int64_t i = r0; i < r1; ++i) {
        const int32_t s = rp[i], e = rp[i + 1];
        if (s == e) continue;
        row_any(s, e, w.cols, w.vals, Xp, ld, a.Y + i * a.ldy + n0, nt);
      }
    }
    if (a.relu) {
      for (int64_t i = r0; i < r1; ++i) {
        float* y = a.Y + i * a.ldy + n0;
        for (int j = 0; j < nt; ++j) y[j] = y[j] > 0.0f ? y[j] : 0.0f;
      }
    }
  }
}

void spmv_rows(const SpmvArgs& a, int64_t r0, int64_t r1) {
  const SparseW& w = a.w;
  for (int64_t i = r0; i < r1; ++i) a.y[i] = a.bias ? a.bias[i] : 0.0f;
  for (int64_t p = 0; p < w.P; ++p) {
    const int32_t* rp = w.rowptr + p * (w.M + 1);
    const float* xp = a.x + p * w.KP;
    for (int64_t i = r0; i < r1; ++i) {
      int32_t k = rp[i];
      const int32_t e = rp[i + 1];
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#if defined(SPK_GATHER)
      if (e - k >= 16) s0 = SPK_GATHER(w.vals, w.cols, xp, k, e);  // advances k
#endif
      for (; k + 4 <= e; k += 4) {
        s0 += w.vals[k] * xp[w.cols[k]];
        s1 += w.vals[k + 1] * xp[w.cols[k + 1]];
        s2 += w.vals[k + 2] * xp[w.cols[k + 2]];
        s3 += w.vals[k + 3] * xp[w.cols[k + 3]];
      }
      for (; k < e; ++k) s0 += w.vals[k] * xp[w.cols[k]];
      a.y[i] += (s0 + s1) + (s2 + s3);
    }
  }
  if (a.relu) {
    for (int64_t i = r0; i < r1; ++i) a.y[i] = a.y[i] > 0.0f ? a.y[i] : 0.0f;
  }
}

}  // namespace SPK_NS
}  // namespace prunelab_spk
