"""alexnet-mp: the 2012 two-column AlexNet, split across devices exactly as the paper split it."""

from .layers import LAYERS
from .model import AlexNet

__all__ = ["AlexNet", "LAYERS"]
__version__ = "0.1.0"
