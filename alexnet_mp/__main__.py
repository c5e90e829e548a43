"""``python -m alexnet_mp`` is the ``alexnet-mp`` command."""

from .cli import main

main()
