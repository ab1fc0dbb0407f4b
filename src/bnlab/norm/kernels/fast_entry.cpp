// A Python entry to torch.ops.bnlab.batch_norm without the boxed call.
//
// Calling a custom op as torch.ops.bnlab.batch_norm(...) turns every argument into an
// IValue checked against the schema, then back: ~2 µs of a small layer's ~7 µs forward.
// This module (built only where Python's headers are, loaded after cpu_kernels.cpp has
// registered the op) takes the arguments through pybind11 and calls the op through the
// dispatcher, unboxed. Being a dispatcher call, autograd, profiler events, inference mode
// and Python dispatch modes behave exactly as for torch.ops.bnlab.batch_norm.

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/utils/pybind.h>

namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;  // as cpu_kernels.cpp registers it (torch < 2.4: not std::)
using BatchNormSig = Tensor(const Tensor&, const OptTensor&, const OptTensor&,
                            const OptTensor&, const OptTensor&, bool, double, double,
                            int64_t, const OptTensor&, int64_t);

Tensor batch_norm(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                  const OptTensor& running_mean, const OptTensor& running_var, bool training,
                  double momentum, double eps, int64_t activation,
                  const OptTensor& num_batches_tracked, int64_t pool) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("bnlab::batch_norm", "")
                             .typed<BatchNormSig>();
  return op.call(x, weight, bias, running_mean, running_var, training, momentum, eps,
                 activation, num_batches_tracked, pool);
}

}  // namespace

PYBIND11_MODULE(bnlab_fast_entry, m) {
  // The GIL is released while the op runs, as torch's own bindings do (other Python threads
  // run meanwhile; a Python dispatch mode takes it back when it needs it).
  m.def("batch_norm", &batch_norm,
        "torch.ops.bnlab.batch_norm's arguments, positionally; the op called unboxed",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
