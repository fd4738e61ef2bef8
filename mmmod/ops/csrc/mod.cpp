// CNN Mixture-of-Depths inference on CPU: one whole MoD block in one call, in place on x.
//
//     s = sigmoid(W2 relu(W1 mean_hw(x[n])))              the channel selector (no bias)
//     idx, sc = top-k of s, in descending order, ties to the lower channel
//     y = branch(x[n, idx])                                conv -> BN (-> ReLU/ReLU6), BN folded
//     x[n, dst(c)] += sc[c] * y[c]     for c < k           dst(c) = offset + c, or idx[c]
//
// Why a kernel: at batch 1 a MoD block is ~10 tiny ATen calls (pool, two GEMVs, sigmoid, top-k,
// gather, three convs, two activations, fusion), and inside a network each of them runs with
// cold caches and a sleeping worker thread, so a block costs several times its arithmetic.
// Here the block is one call and, at batch 1, one parallel region: the selector reads x once,
// the gather is a table of channel pointers (no copy), the convs are direct loops over tiny
// buffers with the BatchNorm applied in their epilogue (folded on the fly, nothing cached), and
// the fusion writes into x.
//
// The selector's sums run in a different order than ATen's, so scores may differ from the
// autograd path in the last bits; top-k can then differ only between channels whose scores tie
// to ~1e-7, as it already does between ATen's batch sizes and thread counts.
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/extension.h>

#include <typeinfo>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "module_watch.h"

namespace {

constexpr int64_t kActNone = 0, kActReLU = 1, kActReLU6 = 2;

inline int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

// [begin, end) of `n` items for thread `tid` of `nt`.
inline std::pair<int64_t, int64_t> split(int64_t n, int tid, int nt) {
  const int64_t chunk = (n + nt - 1) / nt;
  const int64_t b = std::min<int64_t>(n, tid * chunk);
  return {b, std::min<int64_t>(n, b + chunk)};
}

// One conv layer of the branch, its BatchNorm as a per-channel scale and shift.
template <typename T>
struct Layer {
  const T* weight;  // (C_out, C_in / groups, kh, kw)
  const T* scale;   // (C_out,)
  const T* shift;   // (C_out,)
  int64_t cout, cin_g, kh, kw, stride, padding, dilation, groups, act;
  int64_t h, w, ho, wo;  // input and output size
  bool pointwise() const { return kh == 1 && kw == 1 && stride == 1 && padding == 0; }
};

// Where a layer's results go: its own buffer, or (the last layer) added into x times the
// channel's score -- the fusion, with no extra pass over the branch output.
template <typename T>
struct Sink {
  T* const* planes;  // per output channel: (ho, wo) plane to write or add into
  const T* scores;   // per output channel when adding (null: scale 1)
  bool add;
};

// The epilogue of n outputs: BatchNorm (scale, shift), activation, then store or fuse. One
// instantiation per (activation, store/add), so the loop vectorizes.
template <typename T, int64_t Act, bool Add>
inline void finish_as(const T* acc, int64_t n, T scale, T shift, T* dst, T fuse_scale) {
  for (int64_t v = 0; v < n; ++v) {
    T r = acc[v] * scale + shift;
    if constexpr (Act == kActReLU) r = std::max(r, T(0));
    if constexpr (Act == kActReLU6) r = std::min(std::max(r, T(0)), T(6));
    if constexpr (Add) {
      dst[v] += fuse_scale * r;
    } else {
      dst[v] = r;
    }
  }
}

template <typename T>
inline void finish(const T* acc, int64_t n, T scale, T shift, int64_t act, T* dst, bool add,
                   T fuse_scale) {
  if (add) {
    if (act == kActReLU) return finish_as<T, kActReLU, true>(acc, n, scale, shift, dst, fuse_scale);
    if (act == kActReLU6) return finish_as<T, kActReLU6, true>(acc, n, scale, shift, dst, fuse_scale);
    return finish_as<T, kActNone, true>(acc, n, scale, shift, dst, fuse_scale);
  }
  if (act == kActReLU) return finish_as<T, kActReLU, false>(acc, n, scale, shift, dst, fuse_scale);
  if (act == kActReLU6) return finish_as<T, kActReLU6, false>(acc, n, scale, shift, dst, fuse_scale);
  return finish_as<T, kActNone, false>(acc, n, scale, shift, dst, fuse_scale);
}

// Outputs per register block: 64 floats = 8 AVX registers of accumulators.

// Explicit 32-byte vectors (GCC/Clang vector extensions: AVX where compiled for it, pairs of
// SSE registers otherwise): a 1x1 conv keeps its accumulators in registers only this way --
// left to itself the compiler vectorizes over the input channels and spills.
template <typename T>
struct Simd {
  typedef T V __attribute__((vector_size(32)));
  static constexpr int64_t kLanes = 32 / sizeof(T);
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(T* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
};

// Sums and dot products in four independent vector accumulators (one would wait on the add
// latency every step).
template <typename T>
inline T reduce(const typename Simd<T>::V& v) {
  T total = 0;
  for (int64_t j = 0; j < Simd<T>::kLanes; ++j) total += v[j];
  return total;
}

// sum_i a[i] * b[i] (Dot) or sum_i a[i].
template <typename T, bool Dot>
inline T accumulate(const T* a, const T* b, int64_t n) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  auto term = [&](int64_t i) {
    if constexpr (Dot) {
      return S::load(a + i) * S::load(b + i);
    } else {
      return S::load(a + i);
    }
  };
  V s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    s0 += term(i);
    s1 += term(i + L);
    s2 += term(i + 2 * L);
    s3 += term(i + 3 * L);
  }
  T total = reduce<T>((s0 + s1) + (s2 + s3));
  for (; i < n; ++i) total += Dot ? a[i] * b[i] : a[i];
  return total;
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) { return accumulate<T, true>(a, b, n); }

template <typename T>
inline T sum(const T* a, int64_t n) { return accumulate<T, false>(a, nullptr, n); }

// Eight vector accumulators: 8 * lanes consecutive outputs in registers.
template <typename T>
struct Acc8 {
  using S = Simd<T>;
  using V = typename S::V;
  V a0 = {}, a1 = {}, a2 = {}, a3 = {}, a4 = {}, a5 = {}, a6 = {}, a7 = {};
  // += weight * the 8 * lanes values from p on
  inline void fma(T weight, const T* p) {
    const V w = V{} + weight;
    a0 += w * S::load(p);
    a1 += w * S::load(p + S::kLanes);
    a2 += w * S::load(p + 2 * S::kLanes);
    a3 += w * S::load(p + 3 * S::kLanes);
    a4 += w * S::load(p + 4 * S::kLanes);
    a5 += w * S::load(p + 5 * S::kLanes);
    a6 += w * S::load(p + 6 * S::kLanes);
    a7 += w * S::load(p + 7 * S::kLanes);
  }
};

// A 1x1 stride-1 conv over the flat (h * w) planes: work items are (output channel, block of
// 8 vectors of pixels); this thread runs items [i0, i1). A full block accumulates in 8 vector
// registers over all input channels, then goes through the epilogue.
template <typename T>
void pointwise_items(const T* const* in, const Layer<T>& l, const Sink<T>& out, int64_t i0,
                     int64_t i1) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int64_t kVecs = 8, kPix = kVecs * S::kLanes;  // pixels per block
  const int64_t hw = l.h * l.w, blocks = (hw + kPix - 1) / kPix;
  const int64_t cout_g = l.cout / l.groups;
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t co = item / blocks, q0 = (item % blocks) * kPix;
    const int64_t n = std::min(kPix, hw - q0);
    const T* wt = l.weight + co * l.cin_g;
    const T* const* src = in + (co / cout_g) * l.cin_g;
    alignas(32) T acc[kPix];
    if (n == kPix) {
      Acc8<T> a;
      for (int64_t ci = 0; ci < l.cin_g; ++ci) a.fma(wt[ci], src[ci] + q0);
      // epilogue on the registers: BatchNorm, activation, store or fuse into x
      const V scale = V{} + l.scale[co], shift = V{} + l.shift[co], zero = {}, six = zero + 6;
      const V fs = V{} + (out.scores ? out.scores[co] : T(1));
      T* dst = out.planes[co] + q0;
      const V parts[kVecs] = {a.a0, a.a1, a.a2, a.a3, a.a4, a.a5, a.a6, a.a7};
      for (int64_t j = 0; j < kVecs; ++j) {
        V r = parts[j] * scale + shift;
        if (l.act != kActNone) r = r > zero ? r : zero;
        if (l.act == kActReLU6) r = r < six ? r : six;
        T* d = dst + j * S::kLanes;
        S::store(d, out.add ? S::load(d) + fs * r : r);
      }
      continue;
    } else {
      std::fill(acc, acc + n, T(0));
      for (int64_t ci = 0; ci < l.cin_g; ++ci) {
        const T wv = wt[ci], *sp = src[ci] + q0;
        for (int64_t v = 0; v < n; ++v) acc[v] += wv * sp[v];
      }
    }
    finish(acc, n, l.scale[co], l.shift[co], l.act, out.planes[co] + q0, out.add,
           out.scores ? out.scores[co] : T(1));
  }
}

// A grow-only buffer per thread: scratch memory without a malloc (and fresh pages to fault in)
// per call.
template <typename U, int Tag = 0>
U* arena(size_t n) {
  static thread_local std::vector<U> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// A stride-1 kh x kw conv on zero-padded planes (row stride ld, pointers at the padded
// plane's top-left corner), flat: output (y, x) sits at y * ld + x of a (ho, ld) buffer, so
// every tap of a block of outputs is a contiguous load at a fixed offset (the ld - wo columns
// past each row's end are computed and dropped). Blocks of 8 vectors accumulate all taps in
// registers; the epilogue then runs row by row. Work items are output channels [i0, i1).
template <typename T>
void window_flat_items(const T* const* in, int64_t ld, const Layer<T>& l, const Sink<T>& out,
                       int64_t i0, int64_t i1) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int64_t kPix = 8 * S::kLanes;  // outputs per register block
  const int64_t d = l.dilation, kh = l.kh, kw = l.kw, n = l.ho * ld;
  const int64_t cout_g = l.cout / l.groups;
  T* acc = arena<T, 1>(n);  // this thread's
  for (int64_t co = i0; co < i1; ++co) {
    const T* wco = l.weight + co * l.cin_g * kh * kw;
    const T* const* src = in + (co / cout_g) * l.cin_g;
    // the flat outputs in blocks of 8 vectors, every tap accumulated in registers
    const int64_t full = n / kPix * kPix;
    for (int64_t q0 = 0; q0 < full; q0 += kPix) {
      Acc8<T> a;
      for (int64_t ci = 0; ci < l.cin_g; ++ci) {
        for (int64_t i = 0; i < kh; ++i) {
          for (int64_t j = 0; j < kw; ++j)
            a.fma(wco[(ci * kh + i) * kw + j], src[ci] + i * d * ld + j * d + q0);
        }
      }
      const V parts[8] = {a.a0, a.a1, a.a2, a.a3, a.a4, a.a5, a.a6, a.a7};
      for (int64_t v = 0; v < 8; ++v) S::store(acc + q0 + v * S::kLanes, parts[v]);
    }
    for (int64_t q = full; q < n; ++q) acc[q] = T(0);
    for (int64_t ci = 0; ci < l.cin_g && full < n; ++ci) {
      for (int64_t i = 0; i < kh; ++i) {
        for (int64_t j = 0; j < kw; ++j) {
          const T wv = wco[(ci * kh + i) * kw + j];
          const T* r = src[ci] + i * d * ld + j * d;
          for (int64_t q = full; q < n; ++q) acc[q] += wv * r[q];
        }
      }
    }
    for (int64_t y = 0; y < l.ho; ++y) {
      finish(acc + y * ld, l.wo, l.scale[co], l.shift[co], l.act, out.planes[co] + y * l.wo,
             out.add, out.scores ? out.scores[co] : T(1));
    }
  }
}

// Everything of one block that is the same for every sample.
template <typename T>
struct Block {
  int64_t C, H, W, k, hidden, offset;
  const T* fc1;  // (hidden, C)
  const T* fc2;  // (C, hidden) or null: single FC
  std::vector<Layer<T>> layers;
};

// Zeros after a layer's padded input: the flat window conv reads the last row's taps up to
// this far past the last plane (outputs that are dropped).
template <typename T>
int64_t slack(const Layer<T>& l) {
  return (l.kw - 1) * l.dilation + 16;
}

// Per-sample scratch, carved out of the calling thread's arena: selector vectors, the
// branch's layer outputs and zero-padded inputs.
template <typename T>
struct Scratch {
  T *mean = nullptr, *hid = nullptr, *scores = nullptr;
  std::vector<T*> outs, padded;
  std::vector<std::vector<const T*>> ins;  // per layer: its input planes
  std::vector<std::vector<T*>> out_planes;
  explicit Scratch(const Block<T>& b) {
    const size_t L = b.layers.size();
    std::vector<int64_t> sizes;  // mean, hid, scores, then per layer: output, padded input
    sizes.push_back(b.C);
    sizes.push_back(b.hidden);
    sizes.push_back(b.C);
    for (size_t li = 0; li < L; ++li) {
      const Layer<T>& l = b.layers[li];
      const bool fused = L > 1 && li + 1 == L;  // the last layer adds into x directly
      const int64_t cin = l.cin_g * l.groups, p = l.padding;
      sizes.push_back(fused ? 0 : l.cout * l.ho * l.wo);
      sizes.push_back(l.pointwise() ? 0 : cin * (l.h + 2 * p) * (l.w + 2 * p) + slack(l));
    }
    int64_t total = 0;
    for (int64_t n : sizes) total += (n + 15) / 16 * 16;  // 64-byte aligned offsets
    T* base = arena<T>(total + 16);
    base += (16 - (reinterpret_cast<uintptr_t>(base) / sizeof(T)) % 16) % 16;
    std::vector<T*> parts;
    for (int64_t n : sizes) {
      parts.push_back(n ? base : nullptr);
      base += (n + 15) / 16 * 16;
    }
    mean = parts[0];
    hid = parts[1];
    scores = parts[2];
    for (size_t li = 0; li < L; ++li) {
      const Layer<T>& l = b.layers[li];
      outs.push_back(parts[3 + 2 * li]);
      padded.push_back(parts[4 + 2 * li]);
      ins.emplace_back(l.cin_g * l.groups);
      out_planes.emplace_back(l.cout);
    }
  }
};

// One sample, run by thread `tid` of `nt`; `barrier` synchronises the nt threads.
template <typename T>
void run_sample(const Block<T>& b, Scratch<T>& s, T* x, int64_t* idx, T* sel_scores, int tid,
                int nt, const std::function<void()>& barrier) {
  const int64_t C = b.C, HW = b.H * b.W, k = b.k;
  // Selector: channel means -> FC -> ReLU -> FC -> sigmoid, rows split across threads.
  auto [c0, c1] = split(C, tid, nt);
  for (int64_t c = c0; c < c1; ++c) s.mean[c] = sum(x + c * HW, HW) / T(HW);
  barrier();
  auto [j0, j1] = split(b.hidden, tid, nt);
  for (int64_t j = j0; j < j1; ++j) {
    const T v = dot(b.fc1 + j * C, s.mean, C);
    s.hid[j] = b.fc2 ? std::max(v, T(0)) : v;
  }
  barrier();
  const T* hid = s.hid;
  if (b.fc2) {
    for (int64_t c = c0; c < c1; ++c) {
      const T v = dot(b.fc2 + c * b.hidden, hid, b.hidden);
      s.scores[c] = T(1) / (T(1) + std::exp(-v));
    }
  } else {
    for (int64_t j = j0; j < j1; ++j) s.scores[j] = T(1) / (T(1) + std::exp(-hid[j]));
  }
  barrier();
  if (tid == 0) {
    // top-k in descending order, ties to the lower channel index (mmmod's top_channels),
    // NaN ranking highest as in torch.sort: one pass keeping the best k so far in order.
    // Channels come in index order, so an equal score never displaces a kept one.
    const T* sc = s.scores;
    T* best = sel_scores;  // (k,) kept scores, NaN as +inf until the end
    int64_t kept = 0;
    for (int64_t c = 0; c < C; ++c) {
      const T v = std::isnan(sc[c]) ? std::numeric_limits<T>::infinity() : sc[c];
      if (kept == k && !(v > best[k - 1])) continue;
      int64_t pos = kept < k ? kept++ : k - 1;  // the slot it takes, then moves up
      for (; pos > 0 && best[pos - 1] < v; --pos) {
        best[pos] = best[pos - 1];
        idx[pos] = idx[pos - 1];
      }
      best[pos] = v;
      idx[pos] = c;
    }
    for (int64_t c = 0; c < k; ++c) sel_scores[c] = sc[idx[c]];
  }
  barrier();
  // The branch. The gather is pointers into x; a layer with a window gets zero-padded copies
  // of its input planes first. Layer by layer, work items split across threads.
  const size_t L = b.layers.size();
  std::vector<const T*>* in = &s.ins[0];
  for (int64_t c = 0; c < k; ++c) (*in)[c] = x + idx[c] * HW;
  for (size_t li = 0; li < L; ++li) {
    const Layer<T>& l = b.layers[li];
    const bool last = li + 1 == L, fused = last && L > 1;
    std::vector<T*>& outp = s.out_planes[li];
    for (int64_t c = 0; c < l.cout; ++c) {
      outp[c] = fused ? x + (b.offset < 0 ? idx[c] : b.offset + c) * HW
                      : s.outs[li] + c * l.ho * l.wo;
    }
    const Sink<T> sink{outp.data(), fused ? sel_scores : nullptr, fused};
    if (l.pointwise()) {
      constexpr int64_t kPix = 8 * Simd<T>::kLanes;  // as in pointwise_items
      auto [i0, i1] = split(l.cout * ((l.h * l.w + kPix - 1) / kPix), tid, nt);
      pointwise_items<T>(in->data(), l, sink, i0, i1);
    } else {
      const int64_t cin = l.cin_g * l.groups, p = l.padding, ld = l.w + 2 * p;
      const int64_t plane = (l.h + 2 * p) * ld;
      T* pad = s.padded[li];
      auto [c0, c1] = split(cin, tid, nt);
      for (int64_t c = c0; c < c1; ++c) {  // plain loops: rows are short, calls would cost more
        T* dst = pad + c * plane;
        const T* src = (*in)[c];
        for (int64_t q = 0; q < p * ld; ++q) dst[q] = T(0);
        for (int64_t y = 0; y < l.h; ++y) {
          T* row = dst + (p + y) * ld;
          for (int64_t q = 0; q < p; ++q) row[q] = T(0);
          for (int64_t q = 0; q < l.w; ++q) row[p + q] = src[y * l.w + q];
          for (int64_t q = p + l.w; q < ld; ++q) row[q] = T(0);
        }
        for (int64_t q = (p + l.h) * ld; q < plane; ++q) dst[q] = T(0);
      }
      if (c1 == cin) {
        T* end = pad + cin * plane;
        for (int64_t q = 0; q < slack(l); ++q) end[q] = T(0);
      }
      barrier();
      std::vector<const T*> padded_in(cin);
      for (int64_t c = 0; c < cin; ++c) padded_in[c] = pad + c * plane;
      auto [i0, i1] = split(l.cout, tid, nt);
      window_flat_items<T>(padded_in.data(), ld, l, sink, i0, i1);
    }
    barrier();
    if (!last) {
      in = &s.ins[li + 1];
      for (int64_t c = 0; c < l.cout; ++c) (*in)[c] = outp[c];
    }
  }
  if (L == 1) {
    // A single layer read x itself: add its output only now that every thread is done.
    auto [f0, f1] = split(k, tid, nt);
    for (int64_t c = f0; c < f1; ++c) {
      T* dst = x + (b.offset < 0 ? idx[c] : b.offset + c) * HW;
      const T* y = s.out_planes[0][c];
      for (int64_t q = 0; q < HW; ++q) dst[q] += sel_scores[c] * y[q];
    }
  }
}

// A vector's data as T, or null when absent; checks its length.
template <typename T>
const T* vec(const c10::optional<at::Tensor>& t, int64_t n, const char* what) {
  if (!t.has_value() || !t->defined()) return nullptr;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n && t->is_contiguous() &&
                  t->scalar_type() == c10::CppTypeToScalarType<T>::value,
              "MoD plan: ", what, " must be a contiguous (", n, ",) tensor of x's dtype");
  return t->data_ptr<T>();
}

// BatchNorm folded into a per-channel scale and shift applied after the conv:
// (2 * C_out,) = [scale..., shift...]. Plain loops: a few dozen channels, no ATen calls.
template <typename T>
void fold_norm(const std::vector<c10::optional<at::Tensor>>& params, size_t i, double eps,
               int64_t cout, T* out) {
  const T* bias = vec<T>(params.at(6 * i + 1), cout, "conv bias");
  const T* gamma = vec<T>(params.at(6 * i + 2), cout, "norm weight");
  const T* beta = vec<T>(params.at(6 * i + 3), cout, "norm bias");
  const T* mean = vec<T>(params.at(6 * i + 4), cout, "running mean");
  const T* var = vec<T>(params.at(6 * i + 5), cout, "running var");
  TORCH_CHECK(mean && var, "MoD plan: layer ", i, " needs the norm's running statistics");
  for (int64_t c = 0; c < cout; ++c) {
    T scale = T(1) / std::sqrt(var[c] + static_cast<T>(eps));
    if (gamma) scale *= gamma[c];
    T shift = -mean[c] * scale;
    if (bias) shift += bias[c] * scale;
    if (beta) shift += beta[c];
    out[c] = scale;
    out[cout + c] = shift;
  }
}

template <typename T>
void mod_block_impl(at::Tensor& x, int64_t* ip, int64_t k, const at::Tensor& fc1,
                    const at::Tensor& fc2, const std::vector<at::Tensor>& weights,
                    const std::vector<c10::optional<at::Tensor>>& params,
                    const std::vector<double>& eps, at::IntArrayRef strides,
                    at::IntArrayRef paddings, at::IntArrayRef dilations, at::IntArrayRef groups,
                    at::IntArrayRef acts, int64_t offset, int64_t num_threads) {
  const int64_t N = x.size(0);
  Block<T> b{x.size(1), x.size(2), x.size(3), k, fc1.size(0), offset, fc1.data_ptr<T>(),
             fc2.defined() ? fc2.data_ptr<T>() : nullptr, {}};
  int64_t h = b.H, w = b.W, total = 0;
  for (const auto& wt : weights) total += 2 * wt.size(0);
  std::vector<T> folded(total);  // [scale, shift] of every layer
  T* f = folded.data();
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& wt = weights[i];
    fold_norm<T>(params, i, eps[i], wt.size(0), f);
    Layer<T> l{wt.data_ptr<T>(), f, f + wt.size(0), wt.size(0), wt.size(1), wt.size(2),
               wt.size(3), strides[i], paddings[i], dilations[i], groups[i], acts[i], h, w, 0, 0};
    l.ho = out_size(h, l.kh, l.stride, l.padding, l.dilation);
    l.wo = out_size(w, l.kw, l.stride, l.padding, l.dilation);
    TORCH_CHECK((l.ho == b.H && l.wo == b.W) || i + 1 < weights.size(),
                "MoD plan: the branch must keep the spatial size");
    h = l.ho;
    w = l.wo;
    f += 2 * l.cout;
    b.layers.push_back(l);
  }
  T* xp = x.data_ptr<T>();
  const int64_t C = b.C, HW = b.H * b.W;
  std::vector<T> sel(N * k);  // the selected channels' scores
  if (N == 1) {
    Scratch<T> s(b);
    const int nt = static_cast<int>(std::max<int64_t>(1, num_threads));
    if (nt == 1 || omp_in_parallel()) {
      run_sample<T>(b, s, xp, ip, sel.data(), 0, 1, [] {});
    } else {
#pragma omp parallel num_threads(nt)
      run_sample<T>(b, s, xp, ip, sel.data(), omp_get_thread_num(), omp_get_num_threads(), [] {
#pragma omp barrier
      });
    }
    return;
  }
  // A batch: whole samples per thread.
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s(b);
    for (int64_t n = begin; n < end; ++n)
      run_sample<T>(b, s, xp + n * C * HW, ip + n * k, sel.data() + n * k, 0, 1, [] {});
  });
}

// The block on x in place; `ip` (N, k) receives the selected channels.
void mod_block(at::Tensor& x, int64_t* ip, int64_t k, const at::Tensor& fc1,
               const c10::optional<at::Tensor>& fc2,
               const std::vector<c10::optional<at::Tensor>>& params,
               const std::vector<double>& eps, const std::vector<int64_t>& strides,
               const std::vector<int64_t>& paddings, const std::vector<int64_t>& dilations,
               const std::vector<int64_t>& groups, const std::vector<int64_t>& acts,
               int64_t offset, int64_t num_threads) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.device().is_cpu(),
              "MoD plan: x must be a contiguous (N, C, H, W) CPU tensor");
  const int64_t C = x.size(1);
  TORCH_CHECK(k >= 1 && k <= C, "MoD plan: k must be in [1, C]");
  const at::Tensor w1 = fc1.contiguous();
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C && w1.scalar_type() == x.scalar_type(),
              "MoD plan: fc1 must be (hidden, C)");
  at::Tensor w2;
  if (fc2.has_value() && fc2->defined()) {
    w2 = fc2->contiguous();
    TORCH_CHECK(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == w1.size(0) &&
                    w2.scalar_type() == x.scalar_type(),
                "MoD plan: fc2 must be (C, hidden)");
  } else {
    TORCH_CHECK(w1.size(0) == C, "MoD plan: a single FC must give C scores");
  }
  const size_t L = eps.size();
  TORCH_CHECK(L > 0 && params.size() == 6 * L && strides.size() == L && paddings.size() == L &&
                  dilations.size() == L && groups.size() == L && acts.size() == L,
              "MoD plan: per layer 6 params (conv weight, conv bias, norm weight, norm bias, "
              "running mean, running var) and one eps, stride, padding, dilation, groups, act");
  std::vector<at::Tensor> weights;
  int64_t cin = k;
  for (size_t i = 0; i < L; ++i) {
    const c10::optional<at::Tensor>& wt_opt = params.at(6 * i);
    TORCH_CHECK(wt_opt.has_value() && wt_opt->defined(), "MoD plan: missing conv weight");
    const at::Tensor wt = wt_opt->contiguous();
    TORCH_CHECK(wt.dim() == 4 && wt.scalar_type() == x.scalar_type() && groups[i] >= 1 &&
                    wt.size(1) * groups[i] == cin && wt.size(0) % groups[i] == 0,
                "MoD plan: layer ", i, " weight does not fit its input channels");
    TORCH_CHECK(strides[i] == 1 && paddings[i] >= 0 && dilations[i] >= 1 &&
                    (acts[i] == kActNone || acts[i] == kActReLU || acts[i] == kActReLU6),
                "MoD plan: layer ", i, " has an unsupported geometry (stride must be 1) or "
                "activation");
    weights.push_back(wt);
    cin = wt.size(0);
  }
  TORCH_CHECK(cin == k, "MoD plan: the branch must end with k = ", k, " channels");
  TORCH_CHECK(offset < 0 || offset + k <= C, "MoD plan: fusion offset out of range");
  if (x.size(0) == 0) return;
  const int64_t nt = num_threads > 0 ? num_threads : at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mod_block", [&] {
    mod_block_impl<scalar_t>(x, ip, k, w1, w2, weights, params, eps, strides, paddings,
                             dilations, groups, acts, offset, nt);
  });
}

// A tensor-valued Python object (a Parameter, a buffer) as the tensor it holds now, or nullopt
// for None. Taken on every call and dropped after it, never kept: torch.utils.swap_tensors (a
// conversion under torch.__future__.set_swap_module_params_on_conversion) gives the same Python
// object another tensor, and refuses to while another reference to the old one exists.
inline c10::optional<at::Tensor> tensor_of(const py::object& obj) {
  if (obj.is_none()) return c10::nullopt;
  return THPVariable_Unpack(obj.ptr());
}

// A MoD block's inference plan: the whole block in one call, built by MoDBlock
// (mmmod/models/layers/mod.py) and called with x only. It holds the objects the block's modules
// held when it was built (a ModuleWatch, see module_watch.h) and returns False as soon as one
// of them was replaced, so the block builds a new plan. Everything else it reads on each call
// -- in C++, as Python code run between two big convs costs several times its warm speed:
// tensors' contents, dtypes and shapes, the norms' training flags and eps, the selector's
// hooks, the drop path's mode -- and it returns None where the block must run its forward:
// training-mode norms, a hooked selector, a training drop path, tracing, an input that is not
// a contiguous float CPU tensor of the weights' dtype. A plan built without a kernel (the block's
// branch is not one the kernel takes) only watches: it returns None until the block changes.
class Plan {
 public:
  explicit Plan(std::vector<py::dict> watched) : watch_(watched) {}

  Plan(std::vector<py::dict> watched, py::object fc1, py::object fc2,
       std::vector<py::object> params, std::vector<py::object> norms, py::object selector,
       py::object drop_path, std::vector<int64_t> strides, std::vector<int64_t> paddings,
       std::vector<int64_t> dilations, std::vector<int64_t> groups, std::vector<int64_t> acts,
       int64_t offset, int64_t k)
      : watch_(watched), runs_(true), fc1_(std::move(fc1)), fc2_(std::move(fc2)),
        param_objects_(std::move(params)),
        strides_(std::move(strides)), paddings_(std::move(paddings)),
        dilations_(std::move(dilations)), groups_(std::move(groups)), acts_(std::move(acts)),
        offset_(offset), k_(k), eps_(norms.size()) {
    TORCH_CHECK(param_objects_.size() == 6 * norms.size(), "MoD plan: 6 params per layer");
    // the modules' instance dicts, where the per-call state is read (the watch tells whether
    // they are still the block's modules)
    for (const auto& n : norms) norm_dicts_.push_back(n.attr("__dict__"));
    selector_dict_ = selector.attr("__dict__");
    if (!drop_path.is_none()) drop_path_dict_ = drop_path.attr("__dict__");
  }

  // x (N, C, H, W) -> x with the block applied in place; None: run the block's forward;
  // False: the block's modules, parameters or buffers changed, build a new plan. A list
  // `recorder` gets the (N, k) selected indices appended.
  py::object call(const at::Tensor& x, const py::object& recorder) {
    if (!watch_.unchanged()) return py::bool_(false);
    if (!runs_) return py::none();
    // Module state straight from the instance dicts: one lookup each (getattr would walk the
    // class hierarchy first; cold, that costs microseconds per block).
    for (size_t i = 0; i < norm_dicts_.size(); ++i) {
      PyObject* training = PyDict_GetItem(norm_dicts_[i].ptr(), training_.ptr());
      PyObject* eps = PyDict_GetItem(norm_dicts_[i].ptr(), eps_key_.ptr());
      if (training != Py_False || !eps) return py::none();  // batch statistics, or odd
      eps_[i] = PyFloat_AsDouble(eps);
    }
    for (const py::str& key : {fwd_hooks_, fwd_pre_hooks_}) {
      PyObject* hooks = PyDict_GetItem(selector_dict_.ptr(), key.ptr());
      if (!hooks || PyObject_Length(hooks) != 0) return py::none();  // hooks see module calls
    }
    if (!drop_path_dict_.is_none() &&
        PyDict_GetItem(drop_path_dict_.ptr(), training_.ptr()) != Py_False)
      return py::none();
    if (torch::jit::tracer::isTracing()) return py::none();  // the trace must record modules
    const at::Tensor fc1 = THPVariable_Unpack(fc1_.ptr());
    // A plain dense CPU tensor: not a FakeTensor (torch.compile / export), not a functorch
    // wrapper, of the weights' dtype (one the kernel has).
    if (typeid(*x.unsafeGetTensorImpl()) != typeid(c10::TensorImpl) ||
        x.key_set().has(c10::DispatchKey::Python) || !x.device().is_cpu() ||
        x.layout() != at::kStrided || x.dim() != 4 || !x.is_contiguous() ||
        x.scalar_type() != fc1.scalar_type() ||
        (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble))
      return py::none();
    // local: a tensor the plan kept between calls would block torch.utils.swap_tensors
    std::vector<c10::optional<at::Tensor>> params(param_objects_.size());
    for (size_t i = 0; i < params.size(); ++i) params[i] = tensor_of(param_objects_[i]);
    const c10::optional<at::Tensor> fc2 = tensor_of(fc2_);
    const bool record = !recorder.is_none();
    at::Tensor idx;  // a tensor only when recorded; else this thread's scratch
    int64_t* ip = record ? (idx = at::empty({x.size(0), k_}, x.options().dtype(at::kLong)))
                               .data_ptr<int64_t>()
                         : arena<int64_t, 2>(x.size(0) * k_);
    at::Tensor out = x;
    {
      py::gil_scoped_release release;
      mod_block(out, ip, k_, fc1, fc2, params, eps_, strides_, paddings_, dilations_, groups_,
                acts_, offset_, -1);
    }
    if (record) recorder.attr("append")(idx);
    return py::cast(out);
  }

 private:
  mmmod::ModuleWatch watch_;
  bool runs_ = false;  // a kernel was built; else the plan only watches
  py::object fc1_, fc2_;  // the selector's weights, (hidden, C) and (C, hidden) or None
  // per layer: conv weight, conv bias, norm weight, norm bias, running mean, running var
  std::vector<py::object> param_objects_;
  std::vector<int64_t> strides_, paddings_, dilations_, groups_, acts_;
  int64_t offset_ = 0, k_ = 0;
  std::vector<double> eps_;
  std::vector<py::object> norm_dicts_;
  py::object selector_dict_, drop_path_dict_ = py::none();
  py::str training_{"training"}, eps_key_{"eps"}, fwd_hooks_{"_forward_hooks"},
      fwd_pre_hooks_{"_forward_pre_hooks"};
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Plan>(m, "Plan")
      .def(py::init<std::vector<py::dict>>(), py::arg("watched"))
      .def(py::init<std::vector<py::dict>, py::object, py::object, std::vector<py::object>,
                    std::vector<py::object>, py::object, py::object, std::vector<int64_t>,
                    std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                    std::vector<int64_t>, int64_t, int64_t>(),
           py::arg("watched"), py::arg("fc1"), py::arg("fc2"), py::arg("params"),
           py::arg("norms"), py::arg("selector"), py::arg("drop_path"), py::arg("strides"),
           py::arg("paddings"), py::arg("dilations"), py::arg("groups"), py::arg("acts"),
           py::arg("offset"), py::arg("k"))
      .def("__call__", &Plan::call, py::arg("x"), py::arg("recorder"));
}
