// prunelab sparse kernels: shared declarations (plain C types, no torch headers).
//
// A pruned weight W (M x K) is stored in *column panels* of width KP: panel p holds the
// nonzeros of columns [p*KP, (p+1)*KP) of every row, row by row, with 16-bit column
// indices local to the panel (KP <= 65536). rowptr has P x (M + 1) entries: the nonzeros
// of row i in panel p are vals[rowptr[p*(M+1)+i] .. rowptr[p*(M+1)+i+1]). One panel
// (KP >= K) is plain CSR with 16-bit indices.
//
// Panels keep the slice of the dense operand that a kernel touches small enough for the
// core's cache (batch 1: KP floats of x; batch N: KP x 64 floats of X).
#pragma once
#include <stdint.h>

namespace prunelab_spk {

struct SparseW {
  const int32_t* rowptr;  // P x (M + 1), offsets into vals / cols
  const uint16_t* cols;   // panel-local column of each nonzero
  const float* vals;
  int64_t M, K, KP, P;
};

// y[i] = bias[i] + sum_k W[i,k] x[k] for rows [r0, r1); relu clamps at 0.
struct SpmvArgs {
  SparseW w;
  const float* x;     // K
  float* y;           // M
  const float* bias;  // M or null
  int relu;
};

// Convolution geometry: X is then one image (C, H, W) and the dense operand is its implicit
// im2col (K = C*kh*kw rows, N = OH*OW columns), gathered tile by tile, never materialised.
struct ConvGeom {
  int64_t C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW;
};

// Y[i, n] = bias[i] + sum_k W[i,k] X[k, n] for rows [r0, r1), all n < N.
struct SpmmArgs {
  SparseW w;
  const float* X;  // K x N, row stride ldx
  int64_t ldx;
  float* Y;        // M x N, row stride ldy
  int64_t ldy;
  int64_t N;
  const float* bias;
  int relu;
  float* scratch;  // kScratchFloatsPerPanelRow * KP floats for this thread, or null
  const ConvGeom* conv;  // non-null: X is an image, the operand its im2col (needs scratch)
};

// Scratch floats per panel row that spmm_rows may use (the widest tile: 8 AVX-512 vectors).
static const int64_t kScratchFloatsPerPanelRow = 128;

#define PRUNELAB_SPK_DECLARE(NS)                                        \
  namespace NS {                                                        \
  void spmv_rows(const SpmvArgs& a, int64_t r0, int64_t r1);            \
  void spmm_rows(const SpmmArgs& a, int64_t r0, int64_t r1);            \
  }

PRUNELAB_SPK_DECLARE(generic)
PRUNELAB_SPK_DECLARE(avx2)
PRUNELAB_SPK_DECLARE(avx512)

}  // namespace prunelab_spk
