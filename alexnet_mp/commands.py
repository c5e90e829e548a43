"""Every ``alexnet-mp`` subcommand, imported from the module that implements it."""

from __future__ import annotations

from .data.cli import COMMANDS as DATA_COMMANDS
from .summary import summary_command
from .verify import verify_command

COMMANDS: list = [summary_command, verify_command]
COMMANDS += DATA_COMMANDS
