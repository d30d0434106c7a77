"""The closing "What we saw" of each notebook, written from the run's numbers.

One module per notebook step, like :mod:`repgeo_utils.plotting`: each builds the sentences of a
notebook's summary from its results (a number is quoted with the digits its spread leaves, a
verdict is computed, never typed) and records the headline numbers as
:class:`repgeo_utils.report.Findings` for the overview notebook and the reproducibility record.
"""

from . import features, finetuning, posttraining, sae, similarity, spectral

__all__ = ["features", "finetuning", "posttraining", "sae", "similarity", "spectral"]
