"""loopmeta: exact loop bounds of a model's inference session, from runtime events and a TorchLens trace."""

from .patches import instrument, uninstrument

__all__ = ["instrument", "uninstrument"]
__version__ = "0.1.0"
