// prunelab sparse kernels compiled for avx2 (generated pattern: see spkern_impl.h).
#include "spkern.h"
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma")
#define SPK_NS avx2
#define SPK_W 8
#include <immintrin.h>
// Batch-1 dot product of a row segment: 16 nonzeros per step, 16-bit indices widened and x
// gathered with vgatherdps, two accumulators; returns the sum, leaves k at the tail.
static inline float gather_dot_avx2(const float* vals, const uint16_t* cols, const float* xp,
                                    int32_t& k, int32_t e) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (; k + 16 <= e; k += 16) {
    const __m256i i0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(cols + k)));
    const __m256i i1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(cols + k + 8)));
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + k), _mm256_i32gather_ps(xp, i0, 4), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + k + 8), _mm256_i32gather_ps(xp, i1, 4), a1);
  }
  const __m256 a = _mm256_add_ps(a0, a1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}
#define SPK_GATHER gather_dot_avx2
#include "spkern_impl.h"
#else  // other architectures: this path forwards to the generic kernels
namespace prunelab_spk {
namespace avx2 {
void spmv_rows(const SpmvArgs& a, int64_t r0, int64_t r1) { generic::spmv_rows(a, r0, r1); }
void spmm_rows(const SpmmArgs& a, int64_t r0, int64_t r1) { generic::spmm_rows(a, r0, r1); }
}
}
#endif
