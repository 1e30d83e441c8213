// prunelab sparse kernels compiled for avx512 (generated pattern: see spkern_impl.h).
#include "spkern.h"
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f")
#define SPK_NS avx512
#define SPK_W 16
#include <immintrin.h>
// Batch-1 dot product of a row segment: 16 nonzeros per step (one 512-bit gather).
static inline float gather_dot_avx512(const float* vals, const uint16_t* cols, const float* xp,
                                      int32_t& k, int32_t e) {
  __m512 a = _mm512_setzero_ps();
  for (; k + 16 <= e; k += 16) {
    const __m512i i = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(cols + k)));
    a = _mm512_fmadd_ps(_mm512_loadu_ps(vals + k), _mm512_i32gather_ps(i, xp, 4), a);
  }
  return _mm512_reduce_add_ps(a);
}
#define SPK_GATHER gather_dot_avx512
#include "spkern_impl.h"
#else  // other architectures: this path forwards to the generic kernels
namespace prunelab_spk {
namespace avx512 {
void spmv_rows(const SpmvArgs& a, int64_t r0, int64_t r1) { generic::spmv_rows(a, r0, r1); }
void spmm_rows(const SpmmArgs& a, int64_t r0, int64_t r1) { generic::spmm_rows(a, r0, r1); }
}
}
#endif
