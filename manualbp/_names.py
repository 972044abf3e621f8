"""The one resolver from a name to a built-in record (an activation, a loss)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def resolve(spec, record: type[T], registry: Mapping[str, T], noun: str, argument: str) -> T:
    """``spec`` itself if it is a ``record``, the registry's entry if it is a name.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
        TypeError: for anything that is neither a name nor a ``record``.
    """
    if isinstance(spec, record):
        return spec
    if isinstance(spec, str):
        if spec not in registry:
            valid = ", ".join(registry)
            raise ValueError(f"{argument}: unknown {noun} {spec!r}; expected one of {valid}")
        return registry[spec]
    raise TypeError(
        f"{argument}: expected {'an' if noun[0] in 'aeiou' else 'a'} {noun} name or an "
        f"mbp.{record.__name__}, got {type(spec).__name__}"
    )
