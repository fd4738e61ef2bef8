// Pick-or-Mix (PiX) channel sampling on CPU: forward and backward of
//     y[n, g] = p[n, g] * (Max if p[n, g] < tau else Avg)(x[n, g*zeta : (g+1)*zeta])
// for x (N, C, H, W) and p (N, G), G = ceil(C / zeta), Max and Avg taken per pixel over the
// channels of group g (the last group is shorter when zeta does not divide C; its Avg is still
// the sum divided by zeta, as in the authors' kernel).
//
// Why a kernel: the choice Max-or-Avg is per (sample, group), so PyTorch ops either compute both
// reductions over the whole tensor and select (twice the reads of x) or gather the groups of each
// kind first (a full copy of x). Here every (n, g) reads its zeta input planes once and runs
// only the chosen reduction.
//
// mode: 0 = pick-or-mix (threshold tau), 1 = Avg only, 2 = Max only.
// Max ties go to the first channel of the group that holds the maximum (strict '>'), the rule
// of torch.argmax, so the gradient matches the PyTorch reference exactly.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <cmath>
#include <typeinfo>
#include <vector>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "module_watch.h"

namespace {

constexpr int64_t kModePix = 0;
constexpr int64_t kModeMax = 2;

// Compared in the tensor's dtype, as PyTorch compares a tensor with a Python float.
template <typename scalar_t>
inline bool use_max(int64_t mode, scalar_t p, double tau) {
  return mode == kModeMax || (mode == kModePix && p < static_cast<scalar_t>(tau));
}

// One (n, g) plane at a time: grain so that a task holds at least ~32k pixels of input.
inline int64_t grain_size(int64_t hw, int64_t zeta) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, hw * zeta));
}

template <typename scalar_t, typename index_t>
void forward_impl(const scalar_t* x, const scalar_t* p, scalar_t* y, scalar_t* v, index_t* idx,
                  int64_t N, int64_t C, int64_t HW, int64_t zeta, double tau, int64_t mode) {
  const int64_t G = (C + zeta - 1) / zeta;
  const scalar_t inv_zeta = scalar_t(1) / scalar_t(zeta);
  at::parallel_for(0, N * G, grain_size(HW, zeta), [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / G, g = ng % G;
      const int64_t c0 = g * zeta, size = std::min(zeta, C - c0);  // channels in this group
      const scalar_t* xg = x + (n * C + c0) * HW;                   // (size, HW) plane block
      const scalar_t pg = p[ng];
      // The unscaled reduction goes to v when it is saved for backward, else straight to y.
      scalar_t* r = v ? v + ng * HW : y + ng * HW;  // (HW,)
      if (use_max(mode, pg, tau)) {
        std::copy(xg, xg + HW, r);
        if (idx) {
          index_t* ig = idx + ng * HW;  // (HW,) arg-max within the group
          std::fill(ig, ig + HW, index_t(0));
          for (int64_t c = 1; c < size; ++c) {
            const scalar_t* xc = xg + c * HW;
            for (int64_t i = 0; i < HW; ++i) {
              if (xc[i] > r[i]) {  // strict: ties keep the first channel
                r[i] = xc[i];
                ig[i] = static_cast<index_t>(c);
              }
            }
          }
        } else {
          for (int64_t c = 1; c < size; ++c) {
            const scalar_t* xc = xg + c * HW;
            for (int64_t i = 0; i < HW; ++i) r[i] = xc[i] > r[i] ? xc[i] : r[i];
          }
        }
      } else {
        std::copy(xg, xg + HW, r);
        for (int64_t c = 1; c < size; ++c) {
          const scalar_t* xc = xg + c * HW;
          for (int64_t i = 0; i < HW; ++i) r[i] += xc[i];
        }
        for (int64_t i = 0; i < HW; ++i) r[i] *= inv_zeta;
      }
      scalar_t* yg = y + ng * HW;
      for (int64_t i = 0; i < HW; ++i) yg[i] = pg * r[i];
    }
  });
}

template <typename scalar_t, typename index_t>
void backward_impl(const scalar_t* gy, const scalar_t* p, const scalar_t* v, const index_t* idx,
                   scalar_t* gx, scalar_t* gp, int64_t N, int64_t C, int64_t HW, int64_t zeta,
                   double tau, int64_t mode) {
  const int64_t G = (C + zeta - 1) / zeta;
  at::parallel_for(0, N * G, grain_size(HW, zeta), [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / G, g = ng % G;
      const int64_t c0 = g * zeta, size = std::min(zeta, C - c0);
      const scalar_t pg = p[ng];
      const scalar_t* gyg = gy + ng * HW;        // (HW,)
      scalar_t* gxg = gx + (n * C + c0) * HW;    // (size, HW)
      if (use_max(mode, pg, tau)) {
        // Max: p * g to the arg-max channel only.
        const index_t* ig = idx + ng * HW;
        for (int64_t c = 0; c < size; ++c) {
          scalar_t* gxc = gxg + c * HW;
          const index_t cc = static_cast<index_t>(c);
          for (int64_t i = 0; i < HW; ++i) gxc[i] = ig[i] == cc ? pg * gyg[i] : scalar_t(0);
        }
      } else {
        // Avg: p * g / zeta to every channel of the group.
        const scalar_t a = pg / scalar_t(zeta);
        for (int64_t c = 0; c < size; ++c) {
          scalar_t* gxc = gxg + c * HW;
          for (int64_t i = 0; i < HW; ++i) gxc[i] = a * gyg[i];
        }
      }
      // p receives the reduced value times g, summed over space (nothing through the switch).
      const scalar_t* vg = v + ng * HW;
      double acc = 0;
      for (int64_t i = 0; i < HW; ++i) acc += double(vg[i]) * double(gyg[i]);
      gp[ng] = static_cast<scalar_t>(acc);
    }
  });
}

void check_inputs(const at::Tensor& x, const at::Tensor& p, int64_t zeta, int64_t mode) {
  TORCH_CHECK(x.dim() == 4, "pix: x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(zeta >= 1, "pix: zeta must be >= 1, got ", zeta);
  TORCH_CHECK(mode >= 0 && mode <= 2, "pix: mode must be 0 (pix), 1 (avg) or 2 (max)");
  const int64_t G = (x.size(1) + zeta - 1) / zeta;
  TORCH_CHECK(p.dim() == 2 && p.size(0) == x.size(0) && p.size(1) == G,
              "pix: p must be (N, ceil(C / zeta)) = (", x.size(0), ", ", G, "), got ", p.sizes());
  TORCH_CHECK(p.scalar_type() == x.scalar_type(), "pix: x and p must have the same dtype");
}

at::ScalarType index_dtype(int64_t zeta) {
  return zeta <= 256 ? at::kByte : at::kInt;  // arg-max within a group: 0 .. zeta - 1
}

// Returns (y, v, idx): y (N, G, H, W); with save, v = y / p (the unscaled reduction, for the
// gradient of p) and idx (N, G, H, W) the arg-max within each group (uint8 for zeta <= 256);
// without save, v and idx are empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pix_forward(const at::Tensor& x_in,
                                                           const at::Tensor& p_in, int64_t zeta,
                                                           double tau, int64_t mode, bool save) {
  check_inputs(x_in, p_in, zeta, mode);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor p = p_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t G = (C + zeta - 1) / zeta;
  at::Tensor y = at::empty({N, G, H, W}, x.options());
  at::Tensor v = save ? at::empty({N, G, H, W}, x.options()) : at::empty({0}, x.options());
  at::Tensor idx = at::empty({save && mode != 1 ? N * G * H * W : 0},
                             x.options().dtype(index_dtype(zeta)));
  if (save && mode != 1) idx = idx.view({N, G, H, W});
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pix_forward", [&] {
    scalar_t* vp = save ? v.data_ptr<scalar_t>() : nullptr;
    if (idx.scalar_type() == at::kByte) {
      forward_impl<scalar_t, uint8_t>(x.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(),
                                      y.data_ptr<scalar_t>(), vp,
                                      idx.numel() ? idx.data_ptr<uint8_t>() : nullptr, N, C,
                                      H * W, zeta, tau, mode);
    } else {
      forward_impl<scalar_t, int32_t>(x.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(),
                                      y.data_ptr<scalar_t>(), vp,
                                      idx.numel() ? idx.data_ptr<int32_t>() : nullptr, N, C,
                                      H * W, zeta, tau, mode);
    }
  });
  return {y, v, idx};
}

// Returns (grad_x (N, C, H, W), grad_p (N, G)).
std::tuple<at::Tensor, at::Tensor> pix_backward(const at::Tensor& grad_y, const at::Tensor& p_in,
                                                const at::Tensor& v_in, const at::Tensor& idx_in,
                                                int64_t channels, int64_t zeta, double tau,
                                                int64_t mode) {
  const at::Tensor gy = grad_y.contiguous();
  const at::Tensor p = p_in.contiguous();
  const at::Tensor v = v_in.contiguous();
  const at::Tensor idx = idx_in.contiguous();
  const int64_t N = gy.size(0), G = gy.size(1), H = gy.size(2), W = gy.size(3);
  TORCH_CHECK(G == (channels + zeta - 1) / zeta, "pix_backward: grad_y has ", G,
              " channels, expected ceil(", channels, " / ", zeta, ")");
  TORCH_CHECK(v.sizes() == gy.sizes(), "pix_backward: v must have grad_y's shape");
  TORCH_CHECK(mode == 1 || idx.sizes() == gy.sizes(), "pix_backward: idx must have grad_y's shape");
  at::Tensor gx = at::empty({N, channels, H, W}, gy.options());
  at::Tensor gp = at::empty({N, G}, gy.options());
  AT_DISPATCH_FLOATING_TYPES(gy.scalar_type(), "pix_backward", [&] {
    if (mode == 1 || idx.scalar_type() == at::kByte) {
      backward_impl<scalar_t, uint8_t>(gy.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(),
                                       v.data_ptr<scalar_t>(),
                                       mode == 1 ? nullptr : idx.data_ptr<uint8_t>(),
                                       gx.data_ptr<scalar_t>(), gp.data_ptr<scalar_t>(), N,
                                       channels, H * W, zeta, tau, mode);
    } else {
      backward_impl<scalar_t, int32_t>(gy.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(),
                                       v.data_ptr<scalar_t>(), idx.data_ptr<int32_t>(),
                                       gx.data_ptr<scalar_t>(), gp.data_ptr<scalar_t>(), N,
                                       channels, H * W, zeta, tau, mode);
    }
  });
  return {gx, gp};
}

// sum_i a[i] * b[i] in 16 independent partial sums (a single one would wait on the add latency).
template <typename T>
T dot16(const T* a, const T* b, int64_t n) {
  T acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int64_t j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  T total = 0;
  for (; i < n; ++i) total += a[i] * b[i];
  for (int64_t j = 0; j < 16; ++j) total += acc[j];
  return total;
}

// A PiX module's inference plan: p = sigmoid(W mean_hw(x)) and the sampling in one call from
// Python (a module call, a scorer call and an operator call each cost microseconds per block,
// several times more between two big convs than warm). The selector's GEMV is split across
// threads by rows (ATen runs a batch-1 linear on one). Returns False when the module's
// submodules, parameters or buffers were replaced since it was built (module_watch.h: the
// module then builds a new plan), None where the module must run as usual: a hooked scorer,
// tracing, an input that is not a plain float CPU tensor.
class PixPlan {
 public:
  PixPlan(std::vector<py::dict> watched, py::object weight, py::object scorer, int64_t zeta,
          double tau, int64_t mode)
      : watch_(watched), weight_(std::move(weight)), scorer_dict_(scorer.attr("__dict__")),
        zeta_(zeta), tau_(tau), mode_(mode) {}

  py::object call(const at::Tensor& x) {
    if (!watch_.unchanged()) return py::bool_(false);
    // the tensor the parameter holds now (torch.utils.swap_tensors can give it another)
    const at::Tensor& weight = THPVariable_Unpack(weight_.ptr());
    for (const py::str& key : {fwd_hooks_, fwd_pre_hooks_}) {
      PyObject* hooks = PyDict_GetItem(scorer_dict_.ptr(), key.ptr());
      if (!hooks || PyObject_Length(hooks) != 0) return py::none();
    }
    if (torch::jit::tracer::isTracing()) return py::none();
    if (typeid(*x.unsafeGetTensorImpl()) != typeid(c10::TensorImpl) ||
        x.key_set().has(c10::DispatchKey::Python) || !x.device().is_cpu() ||
        x.layout() != at::kStrided || x.dim() != 4 || !x.is_contiguous() ||
        x.size(1) != weight.size(1) || x.scalar_type() != weight.scalar_type() ||
        (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble))
      return py::none();
    const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
    const int64_t G = weight.size(0);
    at::Tensor y = at::empty({N, G, x.size(2), x.size(3)}, x.options());
    {
      py::gil_scoped_release release;
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pix_plan", [&] {
        const scalar_t* xp = x.data_ptr<scalar_t>();
        const scalar_t* wp = weight.contiguous().data_ptr<scalar_t>();
        std::vector<scalar_t> mean(N * C), p(N * G);
        at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, HW)),
                         [&](int64_t b, int64_t e) {
          for (int64_t nc = b; nc < e; ++nc) {
            const scalar_t* plane = xp + nc * HW;
            scalar_t acc[16] = {};
            int64_t i = 0;
            for (; i + 16 <= HW; i += 16)
              for (int64_t j = 0; j < 16; ++j) acc[j] += plane[i + j];
            scalar_t total = 0;
            for (; i < HW; ++i) total += plane[i];
            for (int64_t j = 0; j < 16; ++j) total += acc[j];
            mean[nc] = total / static_cast<scalar_t>(HW);
          }
        });
        at::parallel_for(0, N * G, std::max<int64_t>(1, 8192 / C), [&](int64_t b, int64_t e) {
          for (int64_t ng = b; ng < e; ++ng) {
            const scalar_t v = dot16(wp + (ng % G) * C, mean.data() + (ng / G) * C, C);
            p[ng] = scalar_t(1) / (scalar_t(1) + std::exp(-v));
          }
        });
        forward_impl<scalar_t, uint8_t>(xp, p.data(), y.data_ptr<scalar_t>(), nullptr, nullptr,
                                        N, C, HW, zeta_, tau_, mode_);
      });
    }
    return py::cast(y);
  }

 private:
  mmmod::ModuleWatch watch_;
  py::object weight_;  // the scorer's Parameter, (G, C)
  py::object scorer_dict_;
  int64_t zeta_;
  double tau_;
  int64_t mode_;
  py::str fwd_hooks_{"_forward_hooks"}, fwd_pre_hooks_{"_forward_pre_hooks"};
};

}  // namespace

// The operators are registered with torch so torch.jit.trace records their calls; the
// inference plan, which never runs under tracing, is a Python class.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<PixPlan>(m, "PixPlan")
      .def(py::init<std::vector<py::dict>, py::object, py::object, int64_t, double, int64_t>(),
           py::arg("watched"), py::arg("weight"), py::arg("scorer"), py::arg("zeta"),
           py::arg("tau"), py::arg("mode"))
      .def("__call__", &PixPlan::call, py::arg("x"));
}

TORCH_LIBRARY(mmmod_pix, m) {
  m.def("pix_forward(Tensor x, Tensor p, int zeta, float tau, int mode, bool save) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("pix_backward(Tensor grad_y, Tensor p, Tensor v, Tensor idx, int channels, int zeta, "
        "float tau, int mode) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mmmod_pix, CPU, m) {
  m.impl("pix_forward", &pix_forward);
  m.impl("pix_backward", &pix_backward);
}
