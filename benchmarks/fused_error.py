"""The fused ReLU + LRN + max-pool kernel's error against float64, in fp32 and bf16: a table.

    python3 benchmarks/fused_error.py --device cuda                     # GPU: the paper's shapes too, <60 s
    TRITON_INTERPRET=1 python3 benchmarks/fused_error.py --device cpu   # this box: one tiny shape
    python3 benchmarks/fused_error.py --device cuda --small             # GPU: only the tiny shape

For each shape, layout (NCHW, channels_last) and kind of input (randn; large, mostly
negative; constant over each map, so every pool window ties) it runs
``tests/model/test_relu_lrn_pool_triton.compare``: the fused kernel's forward and backward
against relu -> torch's LRN per column -> max_pool2d in float64 on the same (rounded)
inputs. ``err/bound`` is the worst element's error divided by the per-element bound derived
from the unit roundoff (within the bound where <= 1); ``rel`` is the largest error over the
largest reference value. The ``unfused`` columns are the same relative errors of the three
ops run apart (the LRN's "fast" choice: Triton's LRN kernel on CUDA) in the same dtype.
Exits 1 if any row is outside its bound. Needs the test modules' imports (pytest).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--batch", type=int, default=2, help="CUDA: batch of the paper-shaped cases")
    p.add_argument("--small", action="store_true",
                   help="only one tiny shape, 1x8x9x9 in two columns (always so with --device cpu)")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()
    if a.device == "cpu":
        # Triton reads this when imported: the kernels then run in its interpreter on the CPU.
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            p.error("--device cpu needs TRITON_INTERPRET=1 before triton is imported")
        os.environ["TRITON_INTERPRET"] = "1"
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "model")]

    import torch

    from test_relu_lrn_pool_triton import CASES, KINDS, compare

    tiny = [((1, 8, 9, 9), 2)]
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device; use --device cpu with TRITON_INTERPRET=1")
    if a.device == "cuda" and not a.small:
        # the float64 references of the paper's shapes take seconds each on the CPU: randn only there
        paper = [((a.batch, 96, 55, 55), 2), ((a.batch, 256, 27, 27), 2)]
        plan = [(paper, ("randn",)), ([((a.batch, 48, 13, 13), 1)] + CASES[2:], KINDS)]
        where = torch.cuda.get_device_name()
    else:
        plan = [(tiny, KINDS)]  # the interpreter is slow: one tiny shape
        where = torch.cuda.get_device_name() if a.device == "cuda" else "cpu (Triton interpreter)"
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for cases, kinds in plan:
            rows += compare(a.device, dtype, cases=cases, kinds=kinds, unfused=True)

    print(f"fused relu+LRN+maxpool vs float64 on {where}, torch {torch.__version__}")
    head = (f"{'case':<26} {'layout':<13} {'kind':<22} {'dtype':<8} {'fwd err/bound':>13} {'bwd err/bound':>13} "
            f"{'fwd rel':>9} {'bwd rel':>9} {'unfused fwd':>11} {'unfused bwd':>11} {'masked':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:<26} {r['layout']:<13} {r['kind']:<22} {r['dtype']:<8} {r['fwd_ratio']:>13.3f} "
              f"{r['bwd_ratio']:>13.3f} {r['fwd_rel']:>9.2e} {r['bwd_rel']:>9.2e} {r['unfused_fwd_rel']:>11.2e} "
              f"{r['unfused_bwd_rel']:>11.2e} {r['masked']:>4}/{r['windows']:<5}")
    ok = True
    for dtype in ("float32", "bfloat16"):
        mine = [r for r in rows if r["dtype"] == dtype]
        worst = max(max(r["fwd_ratio"], r["bwd_ratio"]) for r in mine)
        ok &= worst <= 1.0
        print(f"{dtype}: worst err/bound {worst:.3f}, largest relative error forward "
              f"{max(r['fwd_rel'] for r in mine):.2e} backward {max(r['bwd_rel'] for r in mine):.2e}"
              f" ({'within' if worst <= 1.0 else 'OUTSIDE'} the derived bounds)")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": where, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
