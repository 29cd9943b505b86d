// ReLU followed by a 2x2, stride-2 max-pool, in one pass over channels-last CPU tensors.
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
#include <cstdint>
#include <limits>

// IEEE floats as integers that sort like the floats (sign-magnitude to two's complement): the
// comparisons then vectorise (float compares, with their NaN rules, leave the loops scalar).
template <typename S>
static inline S key(S v) { return v ^ ((v >> (sizeof(S) * 8 - 1)) & std::numeric_limits<S>::max()); }

template <typename S, int64_t K = 0>
static void fwd_row(const S* __restrict a, const S* __restrict b, const S* __restrict c, const S* __restrict d,
                    S* __restrict y, uint8_t* __restrict idx, int64_t n) {
  if constexpr (K > 0) n = K;  // a compile-time channel count unrolls into whole vectors
  for (int64_t k = 0; k < n; ++k) {
    S m = key(a[k]), r = a[k], i = 0;
    S v = key(b[k]); bool g = v > m; m = g ? v : m; r = g ? b[k] : r; i = g ? S(1) : i;
    v = key(c[k]); g = v > m; m = g ? v : m; r = g ? c[k] : r; i = g ? S(2) : i;
    v = key(d[k]); g = v > m; m = g ? v : m; r = g ? d[k] : r; i = g ? S(3) : i;
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &relu_maxpool2_forward);
  m.def("backward", &relu_maxpool2_backward);
}
