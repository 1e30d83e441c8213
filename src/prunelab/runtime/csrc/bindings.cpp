// prunelab sparse kernels: torch bindings, run-time ISA choice and threading.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "spkern.h"

namespace spk = prunelab_spk;

namespace {

enum Isa : int64_t { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

int64_t best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kGeneric;
}

bool isa_supported(int64_t isa) {
  if (isa == kGeneric) return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (isa == kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == kAvx512) return __builtin_cpu_supports("avx512f");
#endif
  return false;
}

spk::SparseW make_w(const at::Tensor& rowptr, const at::Tensor& cols, const at::Tensor& vals,
                    int64_t M, int64_t K, int64_t KP) {
  TORCH_CHECK(rowptr.dtype() == at::kInt && rowptr.is_contiguous(), "rowptr: contiguous int32");
  TORCH_CHECK(cols.dtype() == at::kShort && cols.is_contiguous(), "cols: contiguous int16");
  TORCH_CHECK(vals.dtype() == at::kFloat && vals.is_contiguous(), "vals: contiguous float32");
  TORCH_CHECK(KP >= 1 && KP <= 65536, "panel width must be in [1, 65536]");
  TORCH_CHECK(M >= 0 && K >= 0, "negative shape");
  const int64_t P = K == 0 ? 0 : (K + KP - 1) / KP;
  TORCH_CHECK(rowptr.numel() == std::max<int64_t>(P, 1) * (M + 1), "rowptr has ",
              rowptr.numel(), " entries, expected ", std::max<int64_t>(P, 1) * (M + 1));
  TORCH_CHECK(cols.numel() == vals.numel(), "cols and vals differ in length");
  return spk::SparseW{rowptr.data_ptr<int32_t>(),
                      reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>()),
                      vals.data_ptr<float>(), M, K, KP, P};
}

// Rows per parallel chunk: one chunk (no threads) for small products.
int64_t grain_rows(int64_t M, int64_t work) {
  const int64_t kMinWorkPerChunk = 1 << 16;  // multiply-adds
  if (work <= kMinWorkPerChunk || M <= 1) return std::max<int64_t>(M, 1);
  const int64_t chunks = std::max<int64_t>(1, work / kMinWorkPerChunk);
  return std::max<int64_t>(1, (M + chunks - 1) / chunks);
}

void run_spmv(int64_t isa, const spk::SpmvArgs& a, int64_t r0, int64_t r1) {
  if (isa == kAvx512) spk::avx512::spmv_rows(a, r0, r1);
  else if (isa == kAvx2) spk::avx2::spmv_rows(a, r0, r1);
  else spk::generic::spmv_rows(a, r0, r1);
}

void run_spmm(int64_t isa, const spk::SpmmArgs& a, int64_t r0, int64_t r1) {
  if (isa == kAvx512) spk::avx512::spmm_rows(a, r0, r1);
  else if (isa == kAvx2) spk::avx2::spmm_rows(a, r0, r1);
  else spk::generic::spmm_rows(a, r0, r1);
}

void check_isa(int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= 2, "isa must be 0 (generic), 1 (avx2) or 2 (avx512)");
  TORCH_CHECK(isa_supported(isa), "this CPU does not support the requested instruction set");
}

const float* bias_ptr(const c10::optional<at::Tensor>& bias, int64_t M) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  TORCH_CHECK(bias->dtype() == at::kFloat && bias->is_contiguous() && bias->numel() == M,
              "bias: contiguous float32 of length M");
  return bias->data_ptr<float>();
}

// y = W x + b for a vector x of length K.
at::Tensor spmv(const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& cols,
                const at::Tensor& vals, const c10::optional<at::Tensor>& bias, int64_t M,
                int64_t K, int64_t KP, bool relu, int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 1 && x.numel() == K, "x: float32 of length K");
  at::Tensor xc = x.contiguous();
  spk::SpmvArgs a{make_w(rowptr, cols, vals, M, K, KP), xc.data_ptr<float>(), nullptr,
                  bias_ptr(bias, M), relu ? 1 : 0};
  at::Tensor y = at::empty({M}, x.options());
  a.y = y.data_ptr<float>();
  at::parallel_for(0, M, grain_rows(M, vals.numel()),
                   [&](int64_t r0, int64_t r1) { run_spmv(isa, a, r0, r1); });
  return y;
}

// Y[b] = W X[b] + bias for X of shape (B, K, N) (or (K, N)); returns (B, M, N) (or (M, N)).
at::Tensor spmm(const at::Tensor& X, const at::Tensor& rowptr, const at::Tensor& cols,
                const at::Tensor& vals, const c10::optional<at::Tensor>& bias, int64_t M,
                int64_t K, int64_t KP, bool relu, int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(X.dtype() == at::kFloat && (X.dim() == 2 || X.dim() == 3),
              "X: float32 of shape (K, N) or (B, K, N)");
  const bool batched = X.dim() == 3;
  at::Tensor X3 = (batched ? X : X.unsqueeze(0)).contiguous();
  TORCH_CHECK(X3.size(1) == K, "X has ", X3.size(1), " rows, expected K = ", K);
  const int64_t B = X3.size(0), N = X3.size(2);
  at::Tensor Y = at::empty({B, M, N}, X.options());
  spk::SparseW w = make_w(rowptr, cols, vals, M, K, KP);
  const float* bp = bias_ptr(bias, M);
  if (B > 0 && M > 0 && N > 0) {
    // Tasks are (image, row chunk) pairs; a task copies its dense panels once, so rows are
    // split only as far as the threads need (small products run inline, one task per image).
    const int64_t work = vals.numel() * N * B;
    const int64_t threads = work <= (1 << 16) ? 1 : at::get_num_threads();
    const int64_t chunks = std::min<int64_t>(M, std::max<int64_t>(1, (threads + B - 1) / B));
    const int64_t g = (M + chunks - 1) / chunks;
    const float* X0 = X3.data_ptr<float>();
    float* Y0 = Y.data_ptr<float>();
    const int64_t total_grain = threads == 1 ? B * chunks : 1;
    const int64_t per_thread = spk::kScratchFloatsPerPanelRow * std::min<int64_t>(K, KP);
    at::Tensor scratch = at::empty({at::get_num_threads(), per_thread}, X.options());
    float* S0 = scratch.data_ptr<float>();
    at::parallel_for(0, B * chunks, total_grain, [&](int64_t t0, int64_t t1) {
      float* mine = S0 + at::get_thread_num() * per_thread;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / chunks, c = t % chunks;
        spk::SpmmArgs a{w, X0 + b * K * N, N, Y0 + b * M * N, N, N, bp, relu ? 1 : 0, mine};
        run_spmm(isa, a, c * g, std::min(M, (c + 1) * g));
      }
    });
  }
  return batched ? Y : Y.squeeze(0);
}

// y = x W^T + b for x of shape (N, K); the result is (N, M), a transposed view of (M, N).
at::Tensor linear(const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& cols,
                  const at::Tensor& vals, const c10::optional<at::Tensor>& bias, int64_t M,
                  int64_t K, int64_t KP, bool relu, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "x: (N, K) with K = ", K);
  if (x.size(0) == 1) return spmv(x[0], rowptr, cols, vals, bias, M, K, KP, relu, isa).unsqueeze(0);
  at::Tensor xt = x.t();  // (K, N); free when x is itself a transposed view
  return spmm(xt.is_contiguous() ? xt : xt.contiguous(), rowptr, cols, vals, bias, M, K, KP,
              relu, isa).t();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "prunelab sparse CPU kernels (panelled CSR, 16-bit indices)";
  m.def("best_isa", &best_isa, "fastest instruction set of this CPU: 0 generic, 1 avx2, 2 avx512");
  m.def("isa_supported", &isa_supported, "whether this CPU runs the given instruction set");
  m.def("spmv", &spmv, "y = W x + b");
  m.def("spmm", &spmm, "Y = W X + b, X (K, N) or (B, K, N)");
  m.def("linear", &linear, "y = x W^T + b for x (N, K)");
}
