"""``python -m alexnet_mp`` is the ``alexnet-mp`` command."""

from .commands import main

main()
