// Fused CPU training kernels for the conv / ReLU / 2x2 max-pool stages (medcls/models/fused.py).
//
// 1. ReLU followed by a 2x2, stride-2 max-pool, in one pass over channels-last tensors.
//
// PyTorch runs them as two ops: the ReLU writes its whole output, the pool reads it again and
// keeps an int64 index per output, and backward zero-fills the input gradient before scattering
// into it and masking it again for the ReLU. On the seed CNN's first layers that is most of a
// training step's memory traffic. Here forward reads the input once and writes the output and a
// one-byte winner per output (0-3, or 4 where the ReLU zeroed it); backward writes each input
// gradient once. The results are those of relu + max_pool2d exactly: the first maximum wins,
// as in PyTorch, and relu(max) = max(relu) with no gradient where the maximum is not positive.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

// The bits of BITS-wide IEEE floats (held in signed integers, or vectors of them) as integers that
// sort like the floats (sign-magnitude to two's complement): the comparisons then vectorise
// (float compares, with their NaN rules, leave the loops scalar).
template <int BITS, typename V>
static inline V key(V v) { return V(v ^ ((v >> (BITS - 1)) & (std::numeric_limits<int32_t>::max() >> (32 - BITS)))); }

template <typename S, int64_t K = 0>
static void fwd_row(const S* __restrict a, const S* __restrict b, const S* __restrict c, const S* __restrict d,
                    S* __restrict y, uint8_t* __restrict idx, int64_t n) {
  if constexpr (K > 0) n = K;  // a compile-time channel count unrolls into whole vectors
  for (int64_t k = 0; k < n; ++k) {
    constexpr int BITS = sizeof(S) * 8;
    S m = key<BITS>(a[k]), r = a[k], i = 0;
    S v = key<BITS>(b[k]); bool g = v > m; m = g ? v : m; r = g ? b[k] : r; i = g ? S(1) : i;
    v = key<BITS>(c[k]); g = v > m; m = g ? v : m; r = g ? c[k] : r; i = g ? S(2) : i;
    v = key<BITS>(d[k]); g = v > m; m = g ? v : m; r = g ? d[k] : r; i = g ? S(3) : i;
    const bool pos = m > 0;
    y[k] = pos ? r : S(0);
    idx[k] = uint8_t(pos ? i : S(4));
  }
}

template <typename S, int64_t K = 0>
static void bwd_row(const S* __restrict g, const uint8_t* __restrict idx, S* __restrict a, S* __restrict b,
                    S* __restrict c, S* __restrict d, int64_t n) {
  if constexpr (K > 0) n = K;
  for (int64_t k = 0; k < n; ++k) {
    const S i = S(idx[k]), v = g[k];
    a[k] = i == 0 ? v : S(0);
    b[k] = i == 1 ? v : S(0);
    c[k] = i == 2 ? v : S(0);
    d[k] = i == 3 ? v : S(0);
  }
}

template <typename S>
static void fwd(const S* x, S* y, uint8_t* idx, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW) {
  at::parallel_for(0, N * OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      const S* row0 = x + ((n * H + 2 * oh) * W) * C;
      const S* row1 = row0 + W * C;
      auto run = [&](auto row) {
        for (int64_t ow = 0; ow < OW; ++ow)
          row(row0 + 2 * ow * C, row0 + (2 * ow + 1) * C, row1 + 2 * ow * C, row1 + (2 * ow + 1) * C,
              y + (r * OW + ow) * C, idx + (r * OW + ow) * C, C);
      };
      if (C == 32) run(fwd_row<S, 32>); else if (C == 64) run(fwd_row<S, 64>); else run(fwd_row<S>);
    }
  });
}

template <typename S>
static void bwd(const S* gy, const uint8_t* idx, S* gx, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW) {
  at::parallel_for(0, N * OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      S* row0 = gx + ((n * H + 2 * oh) * W) * C;
      S* row1 = row0 + W * C;
      auto run = [&](auto row) {
        for (int64_t ow = 0; ow < OW; ++ow)
          row(gy + (r * OW + ow) * C, idx + (r * OW + ow) * C, row0 + 2 * ow * C, row0 + (2 * ow + 1) * C,
              row1 + 2 * ow * C, row1 + (2 * ow + 1) * C, C);
      };
      if (C == 32) run(bwd_row<S, 32>); else if (C == 64) run(bwd_row<S, 64>); else run(bwd_row<S>);
      // an odd last column or row is never a maximum: no gradient
      std::fill(row0 + 2 * OW * C, row0 + W * C, S(0));
      std::fill(row1 + 2 * OW * C, row1 + W * C, S(0));
      if (oh == OH - 1) std::fill(gx + (n * H + 2 * OH) * W * C, gx + (n + 1) * H * W * C, S(0));
    }
  });
}

template <typename F>
static void by_width(at::ScalarType t, F&& f) {
  if (t == at::kFloat) f(int32_t{});
  else if (t == at::kBFloat16 || t == at::kHalf) f(int16_t{});
  else TORCH_CHECK(false, "relu_maxpool2: unsupported dtype ", t);
}

std::vector<at::Tensor> relu_maxpool2_forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast), "relu_maxpool2: channels-last 4-d input");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OH = H / 2, OW = W / 2;
  TORCH_CHECK(OH > 0 && OW > 0, "relu_maxpool2: input ", H, "x", W, " is smaller than the 2x2 window");
  auto opts = x.options().memory_format(at::MemoryFormat::ChannelsLast);
  at::Tensor y = at::empty({N, C, OH, OW}, opts);
  at::Tensor idx = at::empty({N, C, OH, OW}, opts.dtype(at::kByte));
  by_width(x.scalar_type(), [&](auto s) {
    using S = decltype(s);
    fwd<S>(static_cast<const S*>(x.data_ptr()), static_cast<S*>(y.data_ptr()), idx.data_ptr<uint8_t>(), N, H, W, C, OH, OW);
  });
  return {y, idx};
}

at::Tensor relu_maxpool2_backward(const at::Tensor& gy_in, const at::Tensor& idx, int64_t H, int64_t W) {
  at::Tensor gy = gy_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = gy.size(0), C = gy.size(1), OH = gy.size(2), OW = gy.size(3);
  at::Tensor gx = at::empty({N, C, H, W}, gy.options().memory_format(at::MemoryFormat::ChannelsLast));
  by_width(gy.scalar_type(), [&](auto s) {
    using S = decltype(s);
    bwd<S>(static_cast<const S*>(gy.data_ptr()), idx.data_ptr<uint8_t>(), static_cast<S*>(gx.data_ptr()), N, H, W, C, OH, OW);
  });
  return gx;
}


// 2. The first layer of a network, a 3x3 "valid" convolution of a few input channels, with its
// ReLU and 2x2 max-pool: the convolution's output (the largest activation of the network) is
// never stored. Forward computes the four convolution outputs of each pooling window in
// registers and keeps the winner; backward needs no input gradient (the input is the image)
// and sums the weight gradient over the winners only. Inputs and weights come rounded as
// autocast rounds them; accumulation is in float32, and with ``bf16`` each output is rounded
// to bfloat16 before the comparison, as the convolution's bfloat16 output would be. The weight
// gradient is summed in float32 (autocast's convolution returns it rounded to bfloat16).

// GCC/Clang vector extensions: one AVX-512 register with -march=native, narrower ones elsewhere.
typedef float f16v __attribute__((vector_size(64)));
typedef int32_t i16v __attribute__((vector_size(64)));
typedef int16_t h16v __attribute__((vector_size(32)));
typedef uint8_t b16v __attribute__((vector_size(16)));

template <typename V, typename T>
static inline V load(const T* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V, typename T>
static inline void store(T* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }

// float32 bits rounded to the nearest bfloat16 (ties to even), kept in the high half
static inline i16v bf16_round(i16v u) { return (u + 0x7FFF + ((u >> 16) & 1)) >> 16; }

// idx (training: the winners, for backward) and sums (inference: each pooled row's sums of
// the ReLU'd convolution outputs, for their channel means) may each be null.
template <int64_t CO, int64_t CI, bool BF16>
static void conv_fwd(const float* x, const float* w, const float* bias, void* y_out, uint8_t* idx, float* sums,
                     int64_t N, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  constexpr int64_t NC = CO / 16, TAPS = 9 * CI;
  at::parallel_for(0, N * OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      f16v row_sum[NC] = {};
      for (int64_t ow = 0; ow < OW; ++ow) {
        float patch[4][4][CI];  // the 4x4 input pixels under the four 3x3 windows of this output
        const float* corner = x + ((n * H + 2 * oh) * W + 2 * ow) * CI;
        for (int64_t i = 0; i < 4; ++i) std::memcpy(patch[i], corner + i * W * CI, sizeof(patch[i]));
        // all output channels at once: each input pixel is broadcast once for every chunk of 16
        f16v acc[4][NC];
        for (int p = 0; p < 4; ++p)
          for (int64_t c = 0; c < NC; ++c) acc[p][c] = load<f16v>(bias + 16 * c);
        for (int64_t t = 0; t < TAPS; ++t) {
          const int64_t kh = t / (3 * CI), kw = t / CI % 3, ci = t % CI;
          for (int p = 0; p < 4; ++p) {
            const float v = patch[(p >> 1) + kh][(p & 1) + kw][ci];
            for (int64_t c = 0; c < NC; ++c) acc[p][c] += v * load<f16v>(w + t * CO + 16 * c);
          }
        }
        for (int64_t c = 0; c < NC; ++c) {
          i16v best, raw, arg = i16v{} + 0;
          for (int p = 0; p < 4; ++p) {
            i16v bits;
            std::memcpy(&bits, &acc[p][c], sizeof(bits));
            if (BF16) bits = bf16_round(bits);  // compare what a bfloat16 convolution would output
            const i16v k = key<BF16 ? 16 : 32>(bits);
            const i16v better = p == 0 ? i16v{} - 1 : k > best;
            best = better ? k : best;
            raw = better ? bits : raw;
            arg = better ? i16v{} + p : arg;
            if (sums) {
              const i16v f32_bits = BF16 ? bits << 16 : bits;
              f16v value;
              std::memcpy(&value, &f32_bits, sizeof(value));
              row_sum[c] += value > 0 ? value : f16v{};
            }
          }
          const i16v pos = best > 0;
          raw = pos ? raw : i16v{};
          arg = pos ? arg : i16v{} + 4;
          const int64_t at = (r * OW + ow) * CO + 16 * c;
          if (BF16) store(static_cast<int16_t*>(y_out) + at, __builtin_convertvector(raw, h16v));
          else store(static_cast<int32_t*>(y_out) + at, raw);
          if (idx) store(idx + at, __builtin_convertvector(arg, b16v));
        }
      }
      if (sums)
        for (int64_t c = 0; c < NC; ++c) store(sums + r * CO + 16 * c, row_sum[c]);
    }
  });
}

template <int64_t CO, int64_t CI, bool BF16>
static void conv_bwd(const void* gy, const uint8_t* idx, const float* x, float* dw, float* db, int64_t N,
                     int64_t H, int64_t W, int64_t OH, int64_t OW) {
  constexpr int64_t NC = CO / 16, TAPS = 9 * CI;
  // Fixed chunks of rows, each summed into its own buffer and added up in order: the same
  // sums whatever the thread count.
  const int64_t rows = N * OH, chunks = std::min<int64_t>(rows, 64), per = (rows + chunks - 1) / chunks;
  std::vector<float> part(chunks * (TAPS + 1) * CO, 0.f);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t chunk = cb; chunk < ce; ++chunk) {
      float* pw = part.data() + chunk * (TAPS + 1) * CO;
      for (int64_t c = 0; c < NC; ++c) {
        f16v gw[TAPS] = {}, gb = {};
        for (int64_t r = chunk * per; r < std::min(rows, (chunk + 1) * per); ++r) {
          const int64_t n = r / OH, oh = r % OH;
          for (int64_t ow = 0; ow < OW; ++ow) {
            float patch[4][4][CI];
            const float* corner = x + ((n * H + 2 * oh) * W + 2 * ow) * CI;
            for (int64_t i = 0; i < 4; ++i) std::memcpy(patch[i], corner + i * W * CI, sizeof(patch[i]));
            const int64_t at = (r * OW + ow) * CO + 16 * c;
            f16v g;
            if (BF16) {
              const i16v bits = __builtin_convertvector(load<h16v>(static_cast<const int16_t*>(gy) + at), i16v) << 16;
              std::memcpy(&g, &bits, sizeof(g));
            } else {
              g = load<f16v>(static_cast<const float*>(gy) + at);
            }
            const i16v winner = __builtin_convertvector(load<b16v>(idx + at), i16v);
            gb += winner < 4 ? g : f16v{};
            for (int p = 0; p < 4; ++p) {
              const f16v gp = winner == p ? g : f16v{};
              for (int64_t t = 0; t < TAPS; ++t) {
                const int64_t kh = t / (3 * CI), kw = t / CI % 3, ci = t % CI;
                gw[t] += patch[(p >> 1) + kh][(p & 1) + kw][ci] * gp;
              }
            }
          }
        }
        for (int64_t t = 0; t < TAPS; ++t) store(pw + t * CO + 16 * c, gw[t]);
        store(pw + TAPS * CO + 16 * c, gb);
      }
    }
  });
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const float* pw = part.data() + chunk * (TAPS + 1) * CO;
    for (int64_t t = 0; t < TAPS; ++t)
      for (int64_t co = 0; co < CO; ++co) dw[co * TAPS + t] += pw[t * CO + co];  // to (CO, 3, 3, CI)
    for (int64_t co = 0; co < CO; ++co) db[co] += pw[TAPS * CO + co];
  }
}

template <int64_t V>
using Int = std::integral_constant<int64_t, V>;

// Calls f(CO, CI, BF16) with compile-time values: the kernels unroll over them.
template <typename F>
static void by_shape(int64_t co, int64_t ci, bool bf16, F&& f) {
  auto with_ci = [&](auto c) {
    auto with_bf16 = [&](auto i) {
      if (bf16) f(c, i, std::true_type{}); else f(c, i, std::false_type{});
    };
    if (ci == 1) with_bf16(Int<1>{});
    else if (ci == 3) with_bf16(Int<3>{});
    else TORCH_CHECK(false, "conv3x3_relu_maxpool2: ", ci, " input channels (1 or 3 are built)");
  };
  if (co == 16) with_ci(Int<16>{});
  else if (co == 32) with_ci(Int<32>{});
  else if (co == 64) with_ci(Int<64>{});
  else TORCH_CHECK(false, "conv3x3_relu_maxpool2: ", co, " output channels (16, 32 or 64 are built)");
}

// Runs conv_fwd for x: (N, CI, H, W) float32 channels-last, w: (CO, CI, 3, 3), bias: (CO), both
// float32; returns the pooled output. idx and sums as conv_fwd takes them (or empty).
static at::Tensor first_stage(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, bool bf16,
                              at::Tensor idx, at::Tensor sums) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "conv3x3_relu_maxpool2: float32 channels-last 4-d input");
  const int64_t N = x.size(0), CI = x.size(1), H = x.size(2), W = x.size(3), CO = w.size(0);
  const int64_t OH = (H - 2) / 2, OW = (W - 2) / 2;
  at::Tensor wt = w.permute({2, 3, 1, 0}).contiguous();  // (3, 3, CI, CO): output channels innermost
  at::Tensor b = bias.contiguous();
  at::Tensor y = at::empty({N, CO, OH, OW}, x.options().dtype(bf16 ? at::kBFloat16 : at::kFloat)
                                                .memory_format(at::MemoryFormat::ChannelsLast));
  by_shape(CO, CI, bf16, [&](auto co, auto ci, auto is_bf16) {
    conv_fwd<decltype(co)::value, decltype(ci)::value, decltype(is_bf16)::value>(
        x.data_ptr<float>(), wt.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr(),
        idx.defined() ? idx.data_ptr<uint8_t>() : nullptr, sums.defined() ? sums.data_ptr<float>() : nullptr, N, H, W,
        OH, OW);
  });
  return y;
}

// Training: the pooled output and the winners (for backward).
std::vector<at::Tensor> conv3x3_relu_maxpool2_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                                      bool bf16) {
  const int64_t OH = (x.size(2) - 2) / 2, OW = (x.size(3) - 2) / 2;
  TORCH_CHECK(OH > 0 && OW > 0, "conv3x3_relu_maxpool2: input ", x.size(2), "x", x.size(3), " is too small");
  at::Tensor idx = at::empty({x.size(0), w.size(0), OH, OW},
                             x.options().dtype(at::kByte).memory_format(at::MemoryFormat::ChannelsLast));
  return {first_stage(x, w, bias, bf16, idx, at::Tensor()), idx};
}

// Inference: the pooled output, and the channel means of the ReLU'd convolution output (N, CO)
// float32, the out-of-distribution features of that scale (medcls/evaluation/ood.py).
std::vector<at::Tensor> conv3x3_relu_maxpool2_infer(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                                    bool bf16) {
  const int64_t H = x.size(2), W = x.size(3), OH = (H - 2) / 2, OW = (W - 2) / 2;
  // the means cover every convolution output only where the pooling windows do
  TORCH_CHECK(OH > 0 && OW > 0 && H % 2 == 0 && W % 2 == 0, "conv3x3_relu_maxpool2: input ", H, "x", W,
              " must be even-sided");
  at::Tensor sums = at::empty({x.size(0), OH, w.size(0)}, x.options());
  return {first_stage(x, w, bias, bf16, at::Tensor(), sums), sums.sum(1).div_(double(4 * OH * OW))};
}

// Gradients of the weight (CO, CI, 3, 3) and bias (CO), float32.
std::vector<at::Tensor> conv3x3_relu_maxpool2_backward(const at::Tensor& gy_in, const at::Tensor& idx,
                                                       const at::Tensor& x) {
  const bool bf16 = gy_in.scalar_type() == at::kBFloat16;
  at::Tensor gy = gy_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), CI = x.size(1), H = x.size(2), W = x.size(3), CO = gy.size(1);
  at::Tensor dw = at::zeros({CO, 3, 3, CI}, x.options());
  at::Tensor db = at::zeros({CO}, x.options());
  by_shape(CO, CI, bf16, [&](auto co, auto ci, auto is_bf16) {
    conv_bwd<decltype(co)::value, decltype(ci)::value, decltype(is_bf16)::value>(
        gy.data_ptr(), idx.data_ptr<uint8_t>(), x.data_ptr<float>(), dw.data_ptr<float>(), db.data_ptr<float>(), N, H, W,
        gy.size(2), gy.size(3));
  });
  return {dw.permute({0, 3, 1, 2}).contiguous(), db};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &relu_maxpool2_forward);
  m.def("backward", &relu_maxpool2_backward);
  m.def("conv_forward", &conv3x3_relu_maxpool2_forward);
  m.def("conv_backward", &conv3x3_relu_maxpool2_backward);
  m.def("conv_infer", &conv3x3_relu_maxpool2_infer);
}
