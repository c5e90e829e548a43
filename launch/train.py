"""Train the two-column AlexNet.

    # the quick start: the generated dataset on the CPU, both columns in two processes
    torchrun --standalone --nproc_per_node=2 launch/train.py

    # the paper's recipe on ImageNet, one GPU per column
    torchrun --standalone --nproc_per_node=2 launch/train.py --config configs/paper.toml

    # D replicas of the pair (data x model parallel), several nodes
    torchrun --nnodes=N --nproc_per_node=2xD/N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT launch/train.py --config …

    # one process holds both columns (two GPUs if it sees two, else one device)
    python launch/train.py --config configs/quickstart.toml

Overrides: --set section.key=value (TOML values), e.g. --set training.batch_size=64.
The same command on an existing run (same [job] name) resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from alexnet_mp.config import load_config  # noqa: E402
from alexnet_mp.errors import UserError  # noqa: E402

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML file (default: configs/quickstart.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value; repeatable")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config or QUICKSTART, args.overrides)
        from alexnet_mp.train.trainer import run

        run(cfg)
    except UserError as err:
        print(f"alexnet-mp: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
