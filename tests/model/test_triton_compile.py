"""The Triton kernels compile for a real GPU target (sm_90), on a machine without one.

The interpreter tests check what the kernels compute; this checks what only a GPU compile
sees (types, layouts, what the NVIDIA backend accepts), with the ptxas Triton ships, for
every kernel at its default launch configuration in the trainer's storage dtypes, and that
the fused kernels' default does not spill registers (benchmarks/triton_ptxas.py gives the
whole table; docs/benchmarks.md).
"""

import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the kernels need the triton package")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

try:
    import triton_ptxas  # noqa: E402  (benchmarks/triton_ptxas.py)
    from triton.backends.compiler import GPUTarget  # noqa: F401
except ImportError as err:  # a Triton without the NVIDIA backend
    pytest.skip(f"no NVIDIA backend in this Triton: {err}", allow_module_level=True)

PTXAS = Path(triton_ptxas.triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="this Triton ships no ptxas")
@pytest.mark.parametrize("name", list(triton_ptxas.KERNELS))
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_kernel_compiles_for_sm90_at_its_default_config(name, dtype):
    module = triton_ptxas.KERNELS[name][2]
    tile, warps = module.DEFAULT
    for block_c in (128, 256):  # conv1's 96 maps, conv2's 256
        kernel = triton_ptxas.compile_kernel(name, dtype, block_c, tile, warps)
        regs, stack = triton_ptxas.ptxas_usage(kernel.asm["ptx"])
        assert 0 < regs <= 255, (name, dtype, block_c, regs)
        if name.startswith("relu+lrn+pool"):
            assert stack == 0, f"{name} {dtype} spills {stack} bytes per thread at {module.DEFAULT}"
