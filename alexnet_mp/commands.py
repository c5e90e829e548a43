"""Every ``alexnet-mp`` subcommand, imported from the module that implements it."""

from __future__ import annotations

from .data.cli import COMMANDS as DATA_COMMANDS
from .profile.cli import profile_command
from .summary import summary_command
from .train.cli import COMMANDS as TRAIN_COMMANDS
from .verify import verify_command

COMMANDS: list = [summary_command, verify_command, profile_command, *DATA_COMMANDS, *TRAIN_COMMANDS]
