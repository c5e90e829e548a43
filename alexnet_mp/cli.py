"""The ``alexnet-mp`` command line. Each subcommand lives beside what it drives."""

from __future__ import annotations

import sys

import click

from .errors import UserError


class _Group(click.Group):
    """Turns a :class:`UserError` into one paragraph on stderr and exit status 2."""

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
    # Subcommands are defined next to the code they drive and attached here.
    from .commands import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_register()
