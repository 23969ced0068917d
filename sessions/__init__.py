"""Sessions: the contract between the command line and a model's session driver, and the pages sessions read."""

from .contract import Session, SessionRequest, dtype_of, prompt_of
from .pages import load_image

__all__ = ["Session", "SessionRequest", "dtype_of", "load_image", "prompt_of"]
