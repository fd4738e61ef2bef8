// What a compiled inference plan was built from, checked on every call in a few pointer
// compares. Shared by mod.cpp and pix.cpp.
//
// A plan reaches each module and tensor it reads from the module it serves through torch's
// registration dicts (`_modules`, `_parameters`, `_buffers` of every module on the way). The
// watch keeps each such dict with the (key, value) objects it held when the plan was built and
// holds those objects, so no new object can take a replaced one's address. While every dict
// holds the same objects in the same order, the plan reads what the module's forward would:
// every assignment of a submodule, parameter or buffer (also inside torch: `load_state_dict(...,
// assign=True)`, `_apply` replacing buffers, pruning's re-parametrisation) changes a dict, and
// whatever changes without one -- tensors' contents, dtype, shape -- the plan reads on each call
// anyway. Nothing is installed process-wide: other modules are never looked at.
#pragma once

#include <torch/extension.h>

#include <utility>
#include <vector>

namespace mmmod {

class ModuleWatch {
 public:
  ModuleWatch() = default;

  // `dicts`: the registration dicts the plan reads through, as the module holds them now.
  explicit ModuleWatch(const std::vector<py::dict>& dicts) {
    for (const py::dict& d : dicts) {
      Snapshot s{d, {}};
      PyObject *key, *value;
      Py_ssize_t pos = 0;
      while (PyDict_Next(d.ptr(), &pos, &key, &value)) {
        s.items.emplace_back(py::reinterpret_borrow<py::object>(key),
                             py::reinterpret_borrow<py::object>(value));
      }
      snapshots_.push_back(std::move(s));
    }
  }

  // Whether every dict holds exactly its (key, value) objects of build time, in order (a key
  // removed and added again reorders the dict and counts as a change: rebuilding is cheap).
  bool unchanged() const {
    for (const Snapshot& s : snapshots_) {
      if (PyDict_GET_SIZE(s.dict.ptr()) != static_cast<Py_ssize_t>(s.items.size())) return false;
      PyObject *key, *value;
      Py_ssize_t pos = 0;
      for (const auto& item : s.items) {
        if (!PyDict_Next(s.dict.ptr(), &pos, &key, &value) || key != item.first.ptr() ||
            value != item.second.ptr())
          return false;
      }
    }
    return true;
  }

 private:
  struct Snapshot {
    py::dict dict;
    std::vector<std::pair<py::object, py::object>> items;
  };
  std::vector<Snapshot> snapshots_;
};

}  // namespace mmmod
