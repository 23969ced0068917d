"""Model configs: one TOML file per model version plus a small adapter, and the loader that reads them.

Everything loopmeta knows about a model or a generation framework lives here (and in `builtin_models/`): which
modules to wrap, what their calls mean, how a session of that model is driven.
"""

from .config import ModelConfig, SessionSpec, Target, builtin_configs, config_for_classes, detect_config, load_config
from .hf import config_for_model

__all__ = ["ModelConfig", "SessionSpec", "Target", "builtin_configs", "config_for_classes", "config_for_model",
           "detect_config", "load_config"]
