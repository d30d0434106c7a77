"""Deprecated home of the SAE grid of notebooks 03 and 04: it is now
:mod:`repgeo_utils.sae.grid`. Importing this module warns once and forwards every name there,
for one release."""

from __future__ import annotations

import warnings
from typing import Any

from .sae import grid as _grid

warnings.warn(
    "repgeo_utils.sae_experiments has moved to repgeo_utils.sae.grid "
    "(from repgeo_utils.sae import grid); this alias goes in the next release.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    return getattr(_grid, name)


def __dir__() -> list[str]:
    return sorted(n for n in dir(_grid) if not n.startswith("_"))
