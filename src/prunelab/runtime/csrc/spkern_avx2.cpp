// prunelab sparse kernels compiled for avx2 (generated pattern: see spkern_impl.h).
#include "spkern.h"
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma")
#define SPK_NS avx2
#define SPK_W 8
#include "spkern_impl.h"
#else  // other architectures: this path forwards to the generic kernels
namespace prunelab_spk {
namespace avx2 {
void spmv_rows(const SpmvArgs& a, int64_t r0, int64_t r1) { generic::spmv_rows(a, r0, r1); }
void spmm_rows(const SpmmArgs& a, int64_t r0, int64_t r1) { generic::spmm_rows(a, r0, r1); }
}
}
#endif
