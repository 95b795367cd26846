"""Enum values from what callers write: a value, or a name with or without its prefix."""

from __future__ import annotations

from typing import Union

from . import pb

PurposeLike = Union[int, str]
SourceLike = Union[int, str]


def _names(enum: object, prefix: str) -> dict[str, int]:
    """``{"MODEL_TRAINING": 1, "model_training": 1, "PURPOSE_MODEL_TRAINING": 1, ...}``."""
    names: dict[str, int] = {}
    for name, value in enum.items():  # type: ignore[attr-defined]
        short = name[len(prefix) :] if name.startswith(prefix) else name
        for spelling in (name, short):
            names[spelling] = value
            names[spelling.lower()] = value
    return names


_PURPOSES = _names(pb.Purpose, "PURPOSE_")
_SOURCES = _names(pb.Source, "SOURCE_")


def purpose_value(purpose: PurposeLike) -> int:
    """A ``pb.Purpose`` value from a value or a name (``"MODEL_TRAINING"``, ``"model_training"``,
    ``"PURPOSE_MODEL_TRAINING"``)."""
    if isinstance(purpose, int):
        return int(purpose)
    try:
        return _PURPOSES[purpose]
    except KeyError:
        raise ValueError(f"purpose: {purpose!r} is not a purpose of assent.v1") from None


def source_value(source: SourceLike | None) -> int:
    """A ``pb.Source`` value from a value, a name (``"CONNECTOR"``...) or ``None`` (unspecified)."""
    if source is None:
        return 0
    if isinstance(source, int):
        return int(source)
    try:
        return _SOURCES[source]
    except KeyError:
        raise ValueError(f"source: {source!r} is not a source of assent.v1") from None
