"""The ``alexnet-mp`` command line. Each subcommand is defined beside what it drives."""

from __future__ import annotations

import sys

import click

from ..errors import UserError


class _Group(click.Group):
    """Turns a :class:`UserError` into one paragraph on stderr and its exit status (2, or 3)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"alexnet-mp: error: {err}", err=True)
            sys.exit(err.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """alexnet-mp: the 2012 two-column AlexNet, split across devices as the paper split it."""


def _register() -> None:
    from ..data.cli import COMMANDS as DATA_COMMANDS
    from ..profile.cli import profile_command
    from ..train.cli import COMMANDS as TRAIN_COMMANDS
    from .summary import summary_command
    from .verify import verify_command

    for command in (summary_command, verify_command, profile_command, *DATA_COMMANDS, *TRAIN_COMMANDS):
        main.add_command(command)


_register()
