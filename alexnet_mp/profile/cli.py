"""``alexnet-mp profile``: the command line over :func:`alexnet_mp.profile.runner.run`."""

from __future__ import annotations

import click

from . import strategies
from .report import format_report, write_json, write_tensorboard
from .runner import ProfileConfig, run


def _names(strategy: str | None, compare: str | None) -> list[str]:
    """``--strategy`` then the ``--compare`` list, each once, in the order given."""
    names = [strategy] if strategy else []
    for name in (compare or "").split(","):
        name = name.strip()
        if name and name not in names:
            names.append(name)
    return names or ["paper"]


@click.command("profile")
@click.option("--strategy", default=None, metavar="NAME",
              help=f"One strategy: {', '.join(strategies.available())} (default paper).")
@click.option("--compare", default=None, metavar="A,B,...",
              help="Several strategies side by side, e.g. paper,single,data-parallel.")
@click.option("--batch-size", type=int, default=128, show_default=True,
              help="Global batch per step (data parallelism splits it between its devices).")
@click.option("--steps", type=int, default=5, show_default=True, help="Timed steps (times are medians).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed steps before them.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA (NCCL, one GPU per rank) when there are enough GPUs, else CPU (gloo). "
                   "cuda with fewer GPUs than ranks: ranks share a GPU over gloo.")
@click.option("--data", default="synthetic", show_default=True, metavar="synthetic|DIR",
              help="Random tensors of the right shape, or an ImageNet-style folder (train/<class>/*.jpg).")
@click.option("--num-classes", type=int, default=1000, show_default=True, help="Outputs of fc8 (even).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weights and synthetic data.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also write the report as JSON (schema alexnet-mp/profile/1, docs/profile.md).")
@click.option("--overlap", is_flag=True, help="Overlap the split's exchanges with compute (paper, hybrid).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also draw per-device memory beside bytes per exchange, measured and analytic, to FILE "
                   "(.png or .svg; needs matplotlib: pip install -e '.[plot]').")
@click.option("--tensorboard", "tb_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also write the tables as text and the comparison as charts for TensorBoard.")
def profile_command(strategy, compare, batch_size, steps, warmup, device, data, num_classes, seed, overlap,
                    json_path, plot_path, tb_dir) -> None:
    """Per-device memory, FLOPs, time and communication of each strategy, measured, beside the analytic figures."""
    if plot_path:  # before minutes of profiling: the suffix, matplotlib and the folder
        from .. import plots
        from ..files import check_writable

        plots.figure_format(plot_path)
        plots.require_matplotlib()
        check_writable(plot_path, option="--plot")
    cfg = ProfileConfig(strategies=_names(strategy, compare), batch_size=batch_size, steps=steps, warmup=warmup,
                        device=device, data=data, num_classes=num_classes, seed=seed, overlap=overlap)
    report = run(cfg)
    if report is None:  # a torchrun rank other than 0
        return
    click.echo(format_report(report))
    if json_path:
        write_json(report, json_path)
        click.echo(f"wrote {json_path}")
    if plot_path:
        from .. import plots

        plots.save_figure(plots.profile_figure(report), plot_path)
        click.echo(f"wrote {plot_path}")
    if tb_dir:
        write_tensorboard(report, tb_dir)
        click.echo(f"wrote TensorBoard events to {tb_dir} (tensorboard --logdir {tb_dir})")
