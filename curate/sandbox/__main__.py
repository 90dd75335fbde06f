"""``python -m curate.sandbox [--port N] [--queue-delay S] ...``: the sandbox as its own process.

Flags mirror :class:`~curate.sandbox.config.SandboxConfig` field by field, so they cannot drift
from it; ``--config-json`` passes a whole config at once (what ``SandboxProcess`` uses). Prints
one ``curate sandbox ready url=... api_key=...`` line once listening.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from curate.sandbox.config import SandboxConfig
from curate.sandbox.server import run_forever

__all__ = ["main", "parse_config"]


def _converter(annotation: Any) -> tuple[Callable[[str], Any], list[str] | None]:
    """The argparse type (and choices) for a simple field annotation; 'none' unsets optionals."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(a) for a in args]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        base, _ = _converter(inner)
        return (lambda text: None if text.lower() == "none" else base(text)), None
    return annotation, None


def parse_config(argv: Sequence[str] | None = None) -> SandboxConfig:
    parser = argparse.ArgumentParser(prog="python -m curate.sandbox", description=__doc__)
    parser.add_argument("--config-json", help="A whole SandboxConfig as JSON; flags override it.")
    hints = typing.get_type_hints(SandboxConfig)
    for name, field in SandboxConfig.model_fields.items():
        convert, choices = _converter(hints[name])
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=convert,
            choices=choices,
            default=argparse.SUPPRESS,
            help=f"{field.description} (default: {field.default})",
        )
    ns = vars(parser.parse_args(argv))
    base = json.loads(ns.pop("config_json") or "{}")
    return SandboxConfig.model_validate({**base, **ns})


def main(argv: Sequence[str] | None = None) -> None:
    run_forever(parse_config(argv))


if __name__ == "__main__":
    main()
