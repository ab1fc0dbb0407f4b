"""Every Triton kernel compiles for a real GPU target (sm_90 PTX and cubin), without a GPU.

Triton's CPU interpreter, which the parity tests use where there is no GPU, runs the kernels
as Python and accepts code the compiler rejects (a name bound to a tensor of one type
before a loop and another inside it, say). So the launch configurations ``norm/gpu.py``
uses are also compiled here, in a fresh interpreter without ``TRITON_INTERPRET`` (the
kernels are defined for the interpreter once that is set), for an H100's target: Triton
ships its own LLVM and ptxas, so no GPU or driver is needed. Skipped where Triton, its
NVIDIA backend or this way of compiling is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")

SKIP = "SKIP: "
_FP32 = ("w_ptr", "b_ptr", "rm_ptr", "rv_ptr", "stats_ptr", "part_ptr", "dw_ptr", "db_ptr")
_BLOCKS = {"planar": dict(BLOCK_N=32, BLOCK_S=64), "rows": dict(BLOCK_N=64, BLOCK_C=32)}


def _configs() -> list[tuple[str, str, dict, str]]:
    """(layout, kernel name, constexprs, input dtype): each statistics mode, both ways of
    combining backward sums, every activation, with and without the optional tensors."""
    out = []
    for layout, blocks in _BLOCKS.items():
        affine = dict(HAS_W=True, HAS_B=True)
        out.append((layout, f"{layout}_sums_kernel", blocks, "fp32"))
        for stats, act in ((0, 2), (1, 1), (2, 0)):
            flags = dict(STATS=stats, UPDATE=stats != 2, COUNT=stats != 2, ACT=act, **affine)
            out.append((layout, f"{layout}_forward_kernel", {**flags, **blocks, "BLOCK_P": 8},
                        "fp32"))
        bare = dict(STATS=1, HAS_W=False, HAS_B=False, UPDATE=False, COUNT=False, ACT=2)
        out.append((layout, f"{layout}_forward_kernel", {**bare, **blocks, "BLOCK_P": 1},
                    "fp16"))
        out.append((layout, f"{layout}_grad_sums_kernel", {**affine, "ACT": 2, **blocks},
                    "fp32"))
        for local, act in ((True, 2), (False, 1)):
            flags = dict(LOCAL_SUMS=local, BATCH_STATS=local, NEED_DX=True, ACT=act, **affine)
            out.append((layout, f"{layout}_backward_kernel", {**flags, **blocks, "BLOCK_P": 8},
                        "fp32"))
    return out


def _signature(fn, constexprs: dict, dtype: str) -> dict[str, str]:
    sig = {}
    for name, param in zip(fn.arg_names, fn.params):
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name == "counter_ptr":
            sig[name] = "*i64"
        elif name in _FP32:
            sig[name] = "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}"
        elif name in ("momentum", "eps"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    assert set(constexprs) == {k for k, v in sig.items() if v == "constexpr"}, fn.arg_names
    return sig


def main() -> int:
    """Compile every configuration; print one line each (or one SKIP line)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        from bnlab.norm.kernels import triton_planar, triton_rows
    except Exception as err:  # no Triton, or one without these entry points
        print(f"{SKIP}cannot set up Triton's compiler: {type(err).__name__}: {err}")
        return 0
    modules = {"planar": triton_planar, "rows": triton_rows}
    target = GPUTarget("cuda", 90, 32)
    for layout, name, constexprs, dtype in _configs():
        fn = getattr(modules[layout], name)
        try:
            source = ASTSource(fn=fn, signature=_signature(fn, constexprs, dtype),
                               constexprs=constexprs)
        except TypeError as err:  # another Triton's ASTSource
            print(f"{SKIP}this Triton's ASTSource differs: {err}")
            return 0
        try:
            compiled = triton.compile(source, target=target, options={"num_warps": 4})
        except Exception as err:
            if "ptxas" in str(err) and "not found" in str(err).lower():
                print(f"{SKIP}no ptxas: {err}")
                return 0
            print(f"FAILED {name} {constexprs} {dtype}: {type(err).__name__}: {err}")
            return 1
        print(f"ok {name} {constexprs} {dtype}: {len(compiled.asm['cubin'])} bytes of cubin")
    return 0


def test_every_triton_kernel_compiles_for_a_gpu_target(kernel, tmp_path):
    if kernel != "triton":
        pytest.skip("compiles the Triton kernels once, under the triton parametrization")
    if sys.platform != "linux":
        pytest.skip("Triton's NVIDIA backend is Linux-only")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile, do not reuse
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns while it is unset
    done = subprocess.run([sys.executable, str(Path(__file__))], env=env, capture_output=True,
                          text=True, timeout=900)
    lines = done.stdout.strip().splitlines()
    if lines and lines[-1].startswith(SKIP):
        pytest.skip(lines[-1][len(SKIP):])
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(lines) == len(_configs()) and all(line.startswith("ok ") for line in lines), (
        done.stdout + done.stderr)


if __name__ == "__main__":
    sys.exit(main())
