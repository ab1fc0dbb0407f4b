// The Triton path's autograd node, in C++ (norm/gpu.py launches the kernels from Python).
//
// A torch.autograd.Function costs more host time per call than a small layer's whole GPU
// work: building its context and its Python node, then, in backward, entering Python
// through that node. Here norm/gpu.py runs the forward launches itself and calls attach(),
// which records a C++ node on the output, as cpu_kernels.cpp does for the fused kernels;
// in backward the node calls norm/gpu.py's backward function (set once by
// set_backward) with the saved tensors. Saved tensors, version checks, retain_graph, saved-
// tensor hooks and anomaly mode behave as for any of torch's own nodes.

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/utils/pybind.h>

#include <mutex>
#include <string>

#include "autograd_node.h"

namespace {

namespace py = pybind11;
using at::Tensor;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// norm/gpu.py's backward entry. Set once and never released: a node may be destroyed on a
// thread without the GIL, so nodes hold no Python reference of their own.
PyObject* g_backward = nullptr;

py::object tensor_or_none(const Tensor& t) { return t.defined() ? py::cast(t) : py::none(); }

Tensor tensor_or_undefined(const py::handle& h) {
  return h.is_none() ? Tensor() : h.cast<Tensor>();
}

struct TritonBatchNormBackward : public torch::autograd::Node {
  SavedVariable x, weight, bias;
  Tensor stats;  // float32 (2, C): mean and invstd, outside autograd
  bool training = true, has_weight = false, has_bias = false;
  int64_t activation = 0;
  double eps = 1e-5;

  std::string name() const override { return "BnlabTritonBatchNormBackward"; }

  // Node's mutex_ guards the saved state, as in torch's generated nodes: another thread's
  // backward through this node may release it (retain_graph=False) while this one unpacks.
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x.reset_data();
    weight.reset_data();
    bias.reset_data();
    stats.reset();
  }

  variable_list apply(variable_list&& grads) override {
    const size_t n_out = 1 + has_weight + has_bias;
    const Tensor& dy = grads[0];
    if (!dy.defined()) return variable_list(n_out);
    // Unpacked before Python runs: a released or modified saved tensor raises torch's error.
    Tensor xv, wv, bv, st;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      xv = x.unpack();
      wv = weight.unpack();
      bv = bias.unpack();
      st = stats;
    }
    const bool need_dx = task_should_compute_output(0);
    const bool need_dw = has_weight && task_should_compute_output(1);
    const bool need_db = has_bias && task_should_compute_output(has_weight ? 2 : 1);
    Tensor dx, dw, db;
    {
      py::gil_scoped_acquire gil;
      try {
        py::object out = py::reinterpret_borrow<py::object>(g_backward)(
            dy, xv, tensor_or_none(wv), tensor_or_none(bv), st, training, activation,
            need_dx, need_dw, need_db, eps);
        py::tuple grads_out = out.cast<py::tuple>();
        dx = tensor_or_undefined(grads_out[0]);
        dw = tensor_or_undefined(grads_out[1]);
        db = tensor_or_undefined(grads_out[2]);
      } catch (py::error_already_set& err) {
        // Handed on as torch's python_error (as its Python nodes do): the engine carries it
        // to the thread that called backward, which raises the original Python exception.
        err.restore();
        python_error failure;
        failure.persist();
        throw std::move(failure);
      }
    }
    variable_list out{dx};
    if (has_weight) out.push_back(dw);
    if (has_bias) out.push_back(db);
    return out;
  }
};

// Records the backward node of y = batch_norm(x, weight, bias) (already computed, with
// `stats` its float32 (2, C) mean and invstd) on y, with edges to x, weight, bias (those
// given). Called only when a gradient is wanted.
void attach(Tensor y, const Tensor& x, const c10::optional<Tensor>& weight,
            const c10::optional<Tensor>& bias, const Tensor& stats, bool training,
            int64_t activation, double eps) {
  TORCH_CHECK(g_backward != nullptr, "bnlab: set_backward() was not called");
  const bool has_weight = weight.has_value() && weight->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  variable_list inputs{x};
  if (has_weight) inputs.push_back(*weight);
  if (has_bias) inputs.push_back(*bias);
  auto node = bnlab::make_node<TritonBatchNormBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  node->x = SavedVariable(x, false);
  if (has_weight) node->weight = SavedVariable(*weight, false);
  if (has_bias) node->bias = SavedVariable(*bias, false);
  node->stats = stats;
  node->training = training;
  node->has_weight = has_weight;
  node->has_bias = has_bias;
  node->activation = activation;
  node->eps = eps;
  torch::autograd::set_history(y, node);
}

void set_backward(py::object fn) {
  TORCH_CHECK(PyCallable_Check(fn.ptr()), "bnlab: set_backward needs a callable");
  PyObject* old = g_backward;
  g_backward = fn.inc_ref().ptr();
  Py_XDECREF(old);
}

}  // namespace

PYBIND11_MODULE(bnlab_triton_node, m) {
  m.def("attach", &attach,
        "attach(y, x, weight, bias, stats, training, activation, eps): record the Triton "
        "path's backward node on y");
  m.def("set_backward", &set_backward,
        "set_backward(fn): fn(dy, x, weight, bias, stats, training, activation, need_dx, "
        "need_dw, need_db, eps) -> (dx, dweight, dbias), each a tensor or None");
}
