// prunelab sparse kernels compiled for avx512 (generated pattern: see spkern_impl.h).
#include "spkern.h"
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f")
#define SPK_NS avx512
#define SPK_W 16
#include "spkern_impl.h"
#else  // other architectures: this path forwards to the generic kernels
namespace prunelab_spk {
namespace avx512 {
void spmv_rows(const SpmvArgs& a, int64_t r0, int64_t r1) { generic::spmv_rows(a, r0, r1); }
void spmm_rows(const SpmmArgs& a, int64_t r0, int64_t r1) { generic::spmm_rows(a, r0, r1); }
}
}
#endif
