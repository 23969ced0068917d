"""loopmeta: exact loop bounds of a model's inference session, from runtime events and a TorchLens trace."""

# Absolute import on purpose: pytest imports this file on its own (the repository root is the package).
from loopmeta.patches import instrument, uninstrument

__all__ = ["instrument", "uninstrument"]
__version__ = "0.1.0"
