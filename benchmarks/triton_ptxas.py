"""The Triton kernels compiled for a GPU on a machine without one: registers and spills per launch config.

Triton's interpreter (how the tests run the kernels on a CPU) checks what they compute, not
whether they compile for a GPU or how much of the register file they need. Triton compiles
ahead of time for any target with the ``ptxas`` it ships, no GPU needed: this compiles the
column LRN's kernels and the fused ReLU + LRN + max-pool kernels for ``--arch`` (default 90,
H100) at every launch configuration they tune over, in bf16 and fp32 storage, for conv1's 96
maps (a 128-channel block) and conv2's 256, and prints what ``ptxas -v`` reports: registers
per thread and the stack (spilled registers) per thread. A spilling configuration is slow;
the tuning on the GPU measures which of the rest is fastest.

    python benchmarks/triton_ptxas.py                 # every kernel x config x dtype x block
    python benchmarks/triton_ptxas.py --arch 80       # A100
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from alexnet_mp.model import lrn_triton, relu_lrn_pool_triton  # noqa: E402

CONSTS = ("HALF", "BETA_075", "BLOCK_P", "BLOCK_C")


def _signature(kernel, pointers: dict[str, str], dtype: str) -> dict[str, str]:
    """Each parameter's Triton type: the named pointers (``"x"``: the storage dtype), fp32 for
    alpha/beta/k, i32 for the sizes and strides, constexpr for the compile-time constants."""
    names = kernel.arg_names
    sig = {}
    for n in names:
        if n in CONSTS:
            sig[n] = "constexpr"
        elif n in pointers:
            sig[n] = "*" + (dtype if pointers[n] == "x" else pointers[n])
        elif n in ("alpha", "beta", "k"):
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    return sig


KERNELS = {
    # name: (jit function, pointer arguments -> element type, "x" for the storage dtype), module
    "lrn forward": (lrn_triton._lrn_fwd_kernel, {"X": "x", "Y": "x", "D": "fp32"}, lrn_triton),
    "lrn backward": (lrn_triton._lrn_bwd_kernel, {"G": "x", "X": "x", "D": "fp32", "DX": "x"}, lrn_triton),
    "relu+lrn+pool forward": (relu_lrn_pool_triton._fwd_kernel, {"X": "x", "Y": "x", "IDX": "i8"},
                              relu_lrn_pool_triton),
    "relu+lrn+pool backward": (relu_lrn_pool_triton._bwd_kernel, {"GO": "x", "IDX": "i8", "X": "x", "DX": "x"},
                               relu_lrn_pool_triton),
}


def compile_kernel(name: str, dtype: str, block_c: int, tile: int, warps: int, arch: int = 90):
    """The kernel compiled for ``sm_<arch>`` (as the launcher would: BLOCK_P = tile // BLOCK_C)."""
    fn, pointers, _ = KERNELS[name]
    consts = {"HALF": 2, "BETA_075": True, "BLOCK_P": max(1, tile // block_c), "BLOCK_C": block_c}
    src = ASTSource(fn=fn, signature=_signature(fn, pointers, dtype), constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


def ptxas_usage(ptx: str, arch: int = 90) -> tuple[int, int]:
    """(registers per thread, stack bytes per thread) as ``ptxas -v`` reports them."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        Path(src).write_text(ptx)
        target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M)  # Triton writes e.g. sm_90a
        out = subprocess.run([str(ptxas), f"-arch={target.group(1) if target else f'sm_{arch}'}", "-v", src,
                              "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    stack = re.search(r"(\d+) bytes cumulative stack size", out) or re.search(r"(\d+) bytes stack frame", out)
    return int(regs.group(1)) if regs else -1, int(stack.group(1)) if stack else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100, 80: A100)")
    p.add_argument("--dtypes", default="bf16,fp32")
    a = p.parse_args()
    print(f"triton {triton.__version__}, sm_{a.arch}; registers / stack bytes per thread (stack > 0: spills)")
    print(f"{'kernel':<24}{'dtype':<6}{'channels':>9}{'tile':>6}{'warps':>6}{'regs':>6}{'stack B':>9}")
    for name, (_, _, module) in KERNELS.items():
        for dtype in a.dtypes.split(","):
            for block_c in (128, 256):
                for tile, warps in module.CANDIDATES:
                    k = compile_kernel(name, dtype, block_c, tile, warps, a.arch)
                    regs, stack = ptxas_usage(k.asm["ptx"], a.arch)
                    mark = "  <- default" if (tile, warps) == module.DEFAULT else ""
                    print(f"{name:<24}{dtype:<6}{block_c:>9}{tile:>6}{warps:>6}{regs:>6}{stack:>9}{mark}", flush=True)


if __name__ == "__main__":
    main()
