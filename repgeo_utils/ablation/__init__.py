"""Eigen-direction ablation (paper 2, Table 2): keep or remove the top-k eigen-directions of a
model's representation inside its forward pass, and measure the task again.

``from repgeo_utils import ablation`` gives the whole API: the machinery in
:mod:`~repgeo_utils.ablation.hooks` (:class:`EigenBasis`, :func:`fit_eigenbasis`,
:func:`eigen_ablation`, :func:`ablation_sweep`) and the measurements of notebook 08 in
:mod:`~repgeo_utils.ablation.measures` (:func:`lm_loss_ablation`,
:func:`classifier_accuracy_ablation`, :func:`default_ks`, :func:`table2_row`).
"""

from .hooks import (
    ABLATION_COLUMNS,
    ABLATION_MODES,
    AblationHook,
    AblationMode,
    EigenBasis,
    ablation_sweep,
    check_ks,
    eigen_ablation,
    fit_eigenbasis,
)
from .measures import (
    classifier_accuracy_ablation,
    collect_module_outputs,
    default_ks,
    final_representation_module,
    lm_loss_ablation,
    table2_row,
)

__all__ = [
    "ABLATION_COLUMNS",
    "ABLATION_MODES",
    "AblationHook",
    "AblationMode",
    "EigenBasis",
    "ablation_sweep",
    "check_ks",
    "classifier_accuracy_ablation",
    "collect_module_outputs",
    "default_ks",
    "eigen_ablation",
    "final_representation_module",
    "fit_eigenbasis",
    "lm_loss_ablation",
    "table2_row",
]
