"""Deprecated home of pretraining and checkpoint sweeps: they are now the subpackage
:mod:`repgeo_utils.lm` (corpus, model, training, checkpoints, sweeps). Importing this module
warns once and forwards every public name of :mod:`repgeo_utils.lm`, for one release."""

from __future__ import annotations

import warnings
from typing import Any

from . import lm as _lm

warnings.warn(
    "repgeo_utils.pretrain has moved to repgeo_utils.lm (from repgeo_utils import lm; "
    "lm.pretrain, lm.sweep_checkpoints, ...); this alias goes in the next release.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    if name in _lm.__all__:
        return getattr(_lm, name)
    raise AttributeError(
        f"module 'repgeo_utils.pretrain' has no attribute {name!r} (it moved to repgeo_utils.lm)"
    )


def __dir__() -> list[str]:
    return sorted(_lm.__all__)
