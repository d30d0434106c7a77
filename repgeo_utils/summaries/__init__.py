"""The closing "What we saw" of each notebook, written from the run's numbers.

One module per notebook step, like :mod:`repgeo_utils.plotting`: each builds the sentences of a
notebook's summary from its results (a number is quoted with the digits its spread leaves, a
verdict is computed, never typed) and records the headline numbers as
:class:`repgeo_utils.report.Findings` for the overview notebook and the reproducibility record.

The modules load on first use (``summaries.toy``, ``from repgeo_utils.summaries import toy``):
importing them all would pull in the fine-tuning stack (transformers' Trainer, about 8 s) for
notebooks that never fine-tune.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "features",
    "finetuning",
    "overview",
    "posttraining",
    "pretraining",
    "sae",
    "similarity",
    "spectral",
    "toy",
]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
