"""Every ``alexnet-mp`` subcommand, imported from the module that implements it."""

from __future__ import annotations

COMMANDS: list = []
