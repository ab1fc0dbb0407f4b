// make_node<T>(): a new autograd node, held the way this torch's graph holds nodes.
// Shared by every bnlab kernel library (build.py puts this directory on the include path).
#pragma once

#include <torch/csrc/autograd/edge.h>

#include <memory>
#include <type_traits>

namespace bnlab {

// torch 2.13 holds nodes in c10::intrusive_ptr; earlier releases (2.11 seen) in
// std::shared_ptr. The branch not taken is never instantiated, so either compiles.
template <class T>
auto make_node() {
  using Held = decltype(torch::autograd::Edge::function);
  if constexpr (std::is_same_v<Held, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<T>();
  } else {
    return c10::make_intrusive<T>();
  }
}

}  // namespace bnlab
