// CNN Mixture-of-Depths inference on CPU: gather the k selected channels, run the slim branch
// (convs with their BatchNorm already folded in), scale by the selector's scores and add the
// result into x, in one call:
//     x[n, dst(c)] += scores[n, c] * branch(x[n, idx[n, :]])[c]     for c < k
// with dst(c) = offset + c ('first' / 'last' fusion) or idx[n, c] (offset < 0, 'original').
//
// Why a kernel: at MoD widths (k = 1..32 channels) each of the branch's convolutions is a few
// thousand multiply-adds, and the six or so ATen calls of the block (gather, three convs, two
// activations, fusion) cost far more in dispatch and oneDNN setup than in arithmetic -- e.g.
// ~50 us for a depthwise conv of 12 channels at 28x28. Here the gather is a table of channel
// pointers (no copy), the convs are direct loops over tiny buffers, and the fusion writes into
// x in place. The selector stays in ATen (its scores decide top-k, so they must match the
// autograd path bit for bit).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kActNone = 0, kActReLU = 1, kActReLU6 = 2;

struct Layer {
  at::Tensor weight, bias;  // (C_out, C_in / groups, kh, kw), (C_out,)
  int64_t stride, padding, dilation, groups, act;
};

inline int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

// One conv layer on one sample: in[ci] points at an (h, w) plane; out is (C_out, ho, wo).
template <typename T>
void conv_sample(const std::vector<const T*>& in, int64_t h, int64_t w, const Layer& l, T* out,
                 int64_t ho, int64_t wo, bool parallel) {
  const int64_t cout = l.weight.size(0), cin_g = l.weight.size(1);
  const int64_t kh = l.weight.size(2), kw = l.weight.size(3);
  const int64_t cout_g = cout / l.groups, s = l.stride, p = l.padding, d = l.dilation;
  const T* weight = l.weight.data_ptr<T>();
  const T* bias = l.bias.data_ptr<T>();
  auto body = [&](int64_t begin, int64_t end) {
    for (int64_t co = begin; co < end; ++co) {
      T* o = out + co * ho * wo;  // (ho, wo)
      std::fill(o, o + ho * wo, bias[co]);
      const int64_t g = co / cout_g;
      for (int64_t ci = 0; ci < cin_g; ++ci) {
        const T* src = in[g * cin_g + ci];  // (h, w)
        const T* wt = weight + (co * cin_g + ci) * kh * kw;
        for (int64_t j = 0; j < kw; ++j) {
          // output columns whose input column x * s + off lies inside [0, w)
          const int64_t off = j * d - p;
          const int64_t x0 = off < 0 ? (-off + s - 1) / s : 0;
          const int64_t x1 = w - 1 - off < 0 ? 0 : std::min(wo, (w - 1 - off) / s + 1);
          if (x0 >= x1) continue;
          for (int64_t i = 0; i < kh; ++i) {
            const T wv = wt[i * kw + j];
            for (int64_t y = 0; y < ho; ++y) {
              const int64_t iy = y * s - p + i * d;
              if (iy < 0 || iy >= h) continue;
              const T* srow = src + iy * w + off;
              T* orow = o + y * wo;
              if (s == 1) {
                for (int64_t x = x0; x < x1; ++x) orow[x] += wv * srow[x];
              } else {
                for (int64_t x = x0; x < x1; ++x) orow[x] += wv * srow[x * s];
              }
            }
          }
        }
      }
      if (l.act == kActReLU) {
        for (int64_t q = 0; q < ho * wo; ++q) o[q] = std::max(o[q], T(0));
      } else if (l.act == kActReLU6) {
        for (int64_t q = 0; q < ho * wo; ++q) o[q] = std::min(std::max(o[q], T(0)), T(6));
      }
    }
  };
  // Split output channels across threads only when a layer is big enough to pay for it.
  const int64_t work = cin_g * kh * kw * ho * wo;
  if (parallel) {
    at::parallel_for(0, cout, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work)), body);
  } else {
    body(0, cout);
  }
}

template <typename T>
void branch_sample(T* x, int64_t C, int64_t H, int64_t W, const int64_t* idx, const T* scores,
                   int64_t k, const std::vector<Layer>& layers, int64_t offset, bool parallel) {
  std::vector<const T*> planes(k);
  for (int64_t c = 0; c < k; ++c) planes[c] = x + idx[c] * H * W;  // the gather: pointers only
  std::vector<T> buf[2];
  int64_t h = H, w = W;
  for (size_t li = 0; li < layers.size(); ++li) {
    const Layer& l = layers[li];
    const int64_t ho = out_size(h, l.weight.size(2), l.stride, l.padding, l.dilation);
    const int64_t wo = out_size(w, l.weight.size(3), l.stride, l.padding, l.dilation);
    std::vector<T>& out = buf[li % 2];
    out.resize(l.weight.size(0) * ho * wo);
    conv_sample<T>(planes, h, w, l, out.data(), ho, wo, parallel);
    planes.resize(l.weight.size(0));
    for (int64_t c = 0; c < l.weight.size(0); ++c) planes[c] = out.data() + c * ho * wo;
    h = ho;
    w = wo;
  }
  // The fusion: every selected channel writes a different x channel, so no races.
  for (int64_t c = 0; c < k; ++c) {
    T* dst = x + (offset < 0 ? idx[c] : offset + c) * H * W;
    const T* y = planes[c];
    const T sc = scores ? scores[c] : T(1);
    for (int64_t q = 0; q < H * W; ++q) dst[q] += sc * y[q];
  }
}

at::Tensor branch_fuse_(at::Tensor x, const at::Tensor& idx, const c10::optional<at::Tensor>& scores,
                        at::TensorList weights, at::TensorList biases, at::IntArrayRef strides,
                        at::IntArrayRef paddings, at::IntArrayRef dilations,
                        at::IntArrayRef groups, at::IntArrayRef acts, int64_t offset) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.device().is_cpu(),
              "branch_fuse_: x must be a contiguous (N, C, H, W) CPU tensor");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(idx.dim() == 2 && idx.size(0) == N && idx.scalar_type() == at::kLong,
              "branch_fuse_: idx must be (N, k) int64");
  const int64_t k = idx.size(1);
  const size_t L = weights.size();
  TORCH_CHECK(L > 0 && biases.size() == L && strides.size() == L && paddings.size() == L &&
                  dilations.size() == L && groups.size() == L && acts.size() == L,
              "branch_fuse_: one weight, bias, stride, padding, dilation, groups, act per layer");
  std::vector<Layer> layers;
  int64_t cin = k;
  for (size_t i = 0; i < L; ++i) {
    const at::Tensor& wt = weights[i];
    TORCH_CHECK(wt.dim() == 4 && wt.is_contiguous() && wt.scalar_type() == x.scalar_type() &&
                    wt.size(1) * groups[i] == cin && wt.size(0) % groups[i] == 0,
                "branch_fuse_: layer ", i, " weight does not fit its input channels");
    layers.push_back(Layer{wt, biases[i].contiguous(), strides[i], paddings[i], dilations[i],
                           groups[i], acts[i]});
    cin = wt.size(0);
  }
  TORCH_CHECK(cin == k, "branch_fuse_: the branch must end with k = ", k, " channels");
  TORCH_CHECK(offset < 0 || offset + k <= C, "branch_fuse_: fusion offset out of range");
  at::Tensor idx_c = idx.contiguous();
  at::Tensor sc;
  if (scores.has_value()) sc = scores->contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "branch_fuse_", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    const int64_t* ip = idx_c.data_ptr<int64_t>();
    const scalar_t* sp = sc.defined() ? sc.data_ptr<scalar_t>() : nullptr;
    auto sample = [&](int64_t n, bool parallel) {
      branch_sample<scalar_t>(xp + n * C * H * W, C, H, W, ip + n * k, sp ? sp + n * k : nullptr,
                              k, layers, offset, parallel);
    };
    if (N == 1) {
      sample(0, true);
    } else {
      at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) sample(n, false);
      });
    }
  });
  return x;
}

}  // namespace

TORCH_LIBRARY(mmmod_mod, m) {
  m.def("branch_fuse_(Tensor(a!) x, Tensor idx, Tensor? scores, Tensor[] weights, "
        "Tensor[] biases, int[] strides, int[] paddings, int[] dilations, int[] groups, "
        "int[] acts, int offset) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(mmmod_mod, CPU, m) { m.impl("branch_fuse_", &branch_fuse_); }
