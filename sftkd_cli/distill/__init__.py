"""Feature knowledge distillation: one class per KD method behind one interface.

`build_method(name, student_channels, teacher_channels, **options)` returns a `KDMethod`
(an nn.Module whose parameters are its adapters); calling it on paired lists of student
and teacher feature maps returns a scalar loss. `catalog.CATALOG` describes each method
(label, default taps); it is importable without torch, so the loss classes load lazily.
"""

from __future__ import annotations

from typing import Any

from sftkd_cli.distill.catalog import CATALOG, MethodSpec

_FROM_METHODS = ("METHODS", "KDMethod", "build_method", "method_options")

__all__ = ["CATALOG", "MethodSpec", *_FROM_METHODS]


def __getattr__(name: str) -> Any:
    """The torch-backed names, imported on first use (command help never pays for torch)."""
    if name in _FROM_METHODS:
        from sftkd_cli.distill import methods

        return getattr(methods, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
