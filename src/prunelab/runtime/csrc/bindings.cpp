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
  const int64_t g = grain_rows(M, vals.numel());
  if (g >= M || at::get_num_threads() == 1) {
    run_spmv(isa, a, 0, M);
  } else {
    at::parallel_for(0, M, g, [&](int64_t r0, int64_t r1) { run_spmv(isa, a, r0, r1); });
  }
  return y;
}

// The shared driver: Y[b] = W op(X[b]) + bias, tasks (image, row chunk) over the threads.
// op is the identity (X[b] is K x N) or, with geometry, the implicit im2col of image X[b].
void spmm_driver(const spk::SparseW& w, const float* X0, int64_t x_stride, int64_t B,
                 int64_t N, float* Y0, const float* bp, bool relu, int64_t isa,
                 const spk::ConvGeom* conv) {
  const int64_t M = w.M, K = w.K;
  if (B <= 0 || M <= 0 || N <= 0) return;
  // A task copies (or gathers) its dense panels once, so rows are split only as far as the
  // threads need; small products run inline, one task per image.
  const int64_t nnz = w.P > 0 ? w.rowptr[w.P * (M + 1) - 1] : 0;
  const int64_t total_work = nnz * N * B;
  const int64_t threads = total_work <= (1 << 16) ? 1 : at::get_num_threads();
  const int64_t chunks = std::min<int64_t>(M, std::max<int64_t>(1, (threads + B - 1) / B));
  const int64_t g = (M + chunks - 1) / chunks;
  const size_t per_thread =
      (size_t)(spk::kScratchFloatsPerPanelRow * std::max<int64_t>(1, std::min(K, w.KP)));
  auto body = [&](int64_t t0, int64_t t1) {
    // Per-thread scratch kept across calls: a fresh 256 KB buffer per call costs page faults
    // (tens of microseconds in a VM), as much as a small layer's whole product.
    static thread_local std::vector<float> scratch;
    if (scratch.size() < per_thread) scratch.resize(per_thread);
    float* mine = scratch.data();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / chunks, c = t % chunks;
      spk::SpmmArgs a{w, X0 + b * x_stride, N, Y0 + b * M * N, N, N, bp, relu ? 1 : 0, mine, conv};
      run_spmm(isa, a, c * g, std::min(M, (c + 1) * g));
    }
  };
  if (threads == 1) body(0, B * chunks);
  else at::parallel_for(0, B * chunks, 1, body);
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
  spmm_driver(w, X3.data_ptr<float>(), K * N, B, N, Y.data_ptr<float>(), bias_ptr(bias, M),
              relu, isa, nullptr);
  return batched ? Y : Y.squeeze(0);
}

// Sparse convolution, groups = 1, zero padding: x (B, C, H, W) -> (B, M, OH, OW).
at::Tensor conv2d(const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& cols,
                  const at::Tensor& vals, const c10::optional<at::Tensor>& bias, int64_t M,
                  int64_t K, int64_t KP, std::vector<int64_t> geom, bool relu, int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(geom.size() == 8, "geometry: kh, kw, sh, sw, ph, pw, dh, dw");
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 4, "x: float32 of shape (B, C, H, W)");
  at::Tensor xc = x.contiguous();
  spk::ConvGeom g{xc.size(1), xc.size(2), xc.size(3), geom[0], geom[1], geom[2], geom[3],
                  geom[4], geom[5], geom[6], geom[7], 0, 0};
  TORCH_CHECK(g.kh > 0 && g.kw > 0 && g.sh > 0 && g.sw > 0 && g.dh > 0 && g.dw > 0 &&
              g.ph >= 0 && g.pw >= 0, "invalid convolution geometry");
  TORCH_CHECK(g.C * g.kh * g.kw == K, "x has ", g.C, " channels, expected ", K / (g.kh * g.kw));
  g.OH = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.OH > 0 && g.OW > 0, "input of ", g.H, "x", g.W, " is smaller than the kernel");
  const int64_t B = xc.size(0);
  at::Tensor Y = at::empty({B, M, g.OH, g.OW}, x.options());
  spk::SparseW w = make_w(rowptr, cols, vals, M, K, KP);
  spmm_driver(w, xc.data_ptr<float>(), g.C * g.H * g.W, B, g.OH * g.OW, Y.data_ptr<float>(),
              bias_ptr(bias, M), relu, isa, &g);
  return Y;
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

// Max pooling without padding or dilation (floor mode), x (B, C, H, W) -> (B, C, OH, OW):
// torch's CPU max_pool2d branches on every element (~6 ns per input element here).
at::Tensor max_pool2d(const at::Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  TORCH_CHECK(x.device().is_cpu() && x.dtype() == at::kFloat && x.dim() == 4,
              "x: float32 (B, C, H, W) on CPU");
  TORCH_CHECK(kh > 0 && kw > 0 && sh > 0 && sw > 0, "kernel and stride must be positive");
  at::Tensor xc = x.contiguous();
  const int64_t B = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
  TORCH_CHECK(H >= kh && W >= kw, "input of ", H, "x", W, " is smaller than the window");
  const int64_t OH = (H - kh) / sh + 1, OW = (W - kw) / sw + 1;
  at::Tensor y = at::empty({B, C, OH, OW}, x.options());
  const float* X = xc.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const int64_t planes = B * C;
  auto body = [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* in = X + p * H * W;
      float* out = Y + p * OH * OW;
      if (kh == 2 && kw == 2 && sh == 2 && sw == 2) {  // the common case, unrolled
        for (int64_t oh = 0; oh < OH; ++oh) {
          const float* r0 = in + 2 * oh * W;
          const float* r1 = r0 + W;
          float* o = out + oh * OW;
          for (int64_t ow = 0; ow < OW; ++ow) {
            const float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
            const float ab = a > b ? a : b, cd = c > d ? c : d;
            const bool nan = (a != a) | (b != b) | (c != c) | (d != d);
            o[ow] = nan ? std::numeric_limits<float>::quiet_NaN() : (ab > cd ? ab : cd);
          }
        }
        continue;
      }
      for (int64_t oh = 0; oh < OH; ++oh) {
        for (int64_t ow = 0; ow < OW; ++ow) {
          const float* win = in + oh * sh * W + ow * sw;
          // Branch-free (a data-dependent branch per element mispredicts on real data):
          // max by select, NaN tracked separately so that it propagates as in torch.
          float m = win[0];
          bool nan = false;
          for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) {
              const float v = win[i * W + j];
              m = v > m ? v : m;
              nan |= v != v;
            }
          out[oh * OW + ow] = nan ? std::numeric_limits<float>::quiet_NaN() : m;
        }
      }
    }
  };
  if (planes * H * W <= (1 << 16) || at::get_num_threads() == 1) body(0, planes);
  else at::parallel_for(0, planes, 1, body);
  return y;
}

// A packed weight held on the C++ side, so that a call converts one tensor argument only.
struct Packed {
  at::Tensor rowptr, cols, vals;
  c10::optional<at::Tensor> bias;
  int64_t M, K, KP, isa;

  at::Tensor check_x(const at::Tensor& x) const {
    TORCH_CHECK(x.device().is_cpu() && x.dtype() == at::kFloat, "x: float32 on CPU");
    return x;
  }
  at::Tensor linear(const at::Tensor& x, bool relu) const {
    return ::linear(check_x(x), rowptr, cols, vals, bias, M, K, KP, relu, isa);
  }
  at::Tensor spmm(const at::Tensor& X, bool relu) const {
    return ::spmm(check_x(X), rowptr, cols, vals, bias, M, K, KP, relu, isa);
  }
  at::Tensor conv2d(const at::Tensor& x, std::vector<int64_t> geom, bool relu) const {
    return ::conv2d(check_x(x), rowptr, cols, vals, bias, M, K, KP, geom, relu, isa);
  }
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "prunelab sparse CPU kernels (panelled CSR, 16-bit indices)";
  m.def("best_isa", &best_isa, "fastest instruction set of this CPU: 0 generic, 1 avx2, 2 avx512");
  m.def("isa_supported", &isa_supported, "whether this CPU runs the given instruction set");
  m.def("spmv", &spmv, "y = W x + b");
  m.def("spmm", &spmm, "Y = W X + b, X (K, N) or (B, K, N)");
  m.def("linear", &linear, "y = x W^T + b for x (N, K)");
  m.def("conv2d", &conv2d, "sparse conv2d (groups 1, zero padding)");
  m.def("max_pool2d", &max_pool2d, "max pooling, no padding/dilation, floor mode",
        pybind11::arg("x"), pybind11::arg("kh"), pybind11::arg("kw"), pybind11::arg("sh"),
        pybind11::arg("sw"));
  pybind11::class_<Packed>(m, "Packed")
      .def(pybind11::init([](at::Tensor rowptr, at::Tensor cols, at::Tensor vals,
                             c10::optional<at::Tensor> bias, int64_t M, int64_t K, int64_t KP,
                             int64_t isa) {
             check_isa(isa);
             make_w(rowptr, cols, vals, M, K, KP);  // validates the layout once
             bias_ptr(bias, M);
             return Packed{rowptr, cols, vals, bias, M, K, KP, isa};
           }))
      .def("linear", &Packed::linear, "y = x W^T + b for x (N, K)",
           pybind11::arg("x"), pybind11::arg("relu") = false)
      .def("spmm", &Packed::spmm, "Y = W X + b for X (K, N) or (B, K, N)",
           pybind11::arg("X"), pybind11::arg("relu") = false)
      .def("conv2d", &Packed::conv2d, "sparse conv of x (B, C, H, W); geometry kh, kw, sh, sw, "
           "ph, pw, dh, dw", pybind11::arg("x"), pybind11::arg("geometry"),
           pybind11::arg("relu") = false)
      .def_readonly("isa", &Packed::isa);
}
