"""The command-line pieces `run_traced.py` and `loopmeta corpus` share: argument types, the session request the
options make, loading the session (the built-in model or a config's driver), and the one-line failure.
Imports are absolute (`loopmeta.…`) and heavy ones lazy, as in `run_traced.py`.

>>> option("expert_ledger=false"), positive("3")
(('expert_ledger', False), 3)
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from loopmeta.errors import ConfigError, LoopmetaError, SessionError


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    value: Any = {"true": True, "false": False}.get(raw.lower(), raw)
    if isinstance(value, str):
        try:
            value = float(raw) if "." in raw else int(raw)
        except ValueError:
            pass
    return key, value


def page(text: str) -> Any:
    from loopmeta.sessions.pages import page_spec

    try:
        return page_spec(text)
    except LoopmetaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise SessionError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SessionError(f"--device {device}: this torch has no CUDA device; use --device cpu")


def request_of(args: argparse.Namespace) -> Any:
    from loopmeta.sessions.contract import SessionRequest

    return SessionRequest(model=args.model, builtin=args.builtin, revision=args.revision,
                          trust_remote_code=args.trust_remote_code, images=tuple(args.image), prompt=args.prompt,
                          mode=args.mode, settings=settings_of(args), max_new_tokens=args.max_new_tokens,
                          device=args.device, dtype=args.dtype,
                          attn_implementation=args.attn_implementation,
                          experts_implementation=args.experts_implementation, out=args.out)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The session settings given on the command line (--base-size, --image-size, --crop-mode), by name."""
    given = {"base_size": args.base_size, "image_size": args.image_size, "crop_mode": args.crop_mode}
    return {k: v for k, v in given.items() if v is not None}


def load_session(args: argparse.Namespace, accept: Callable[[Any], None] | None = None) -> tuple[Any, Any]:
    """The config and the loaded session the options ask for (the built-in model when no --model is given).
    `accept(config)` may refuse the chosen config: before its model loads (after, for the built-in model's own)."""
    from loopmeta.model_configs import config_for_model, detect_config, load_config

    request = request_of(args)
    if args.model is None:
        from loopmeta.builtin_models import default_session

        session = default_session(request)
        config = detect_config(session.model) if args.config == "auto" else load_config(args.config)
        check_config(args, config, accept)
        return config, session
    config = config_for_model(request) if args.config == "auto" else load_config(args.config)
    check_config(args, config, accept)
    if config.session.load is None:
        raise ConfigError(f"config {config.name!r} does not say how to load and run a session ([session] load): "
                          "drive it from Python with trace_session()")
    return config, config.function(config.session.load)(request, config)


def check_config(args: argparse.Namespace, config: Any, accept: Callable[[Any], None] | None = None) -> None:
    """The config must fit the options: a mode it lists, settings its modes hold; then `accept(config)`, if given."""
    mode, modes = args.mode, config.session.modes
    if mode is not None and mode not in modes:
        raise SessionError(f"--mode {mode}: config {config.name!r} has "
                           + (f"modes {', '.join(modes)}" if modes else "no modes; leave --mode out"))
    known = {key for settings in modes.values() for key in settings}
    unknown = [f"--{key.replace('_', '-')}" for key in settings_of(args) if key not in known]
    if unknown:
        raise SessionError(f"{', '.join(unknown)}: config {config.name!r} has no such session setting"
                           + (f" (its modes set {', '.join(sorted(known))})" if known else "") + "; leave it out")
    if accept is not None:
        accept(config)


def fail(console: Any, message: str) -> None:
    """The message verbatim (brackets are text, not markup), after a red `error:`."""
    from rich.text import Text

    console.print(Text("error: ", style="bold red") + Text(message), highlight=False)
