"""Interventions inside the forward pass: eigen-direction ablation (paper 2, Table 2: keep or
remove the top-k eigen-directions of a model's representation, and measure the task again) and
splice-in fidelity (replace a layer's output with an SAE's reconstruction and measure what the
model loses).

``from repgeo_utils import ablation`` gives the whole API: the machinery in
:mod:`~repgeo_utils.ablation.hooks` (:class:`EigenBasis`, :func:`fit_eigenbasis`,
:func:`eigen_ablation`, :func:`ablation_sweep`) and the measurements of notebook 08 in
:mod:`~repgeo_utils.ablation.measures` (:func:`lm_loss_ablation`,
:func:`classifier_accuracy_ablation`, :func:`default_ks`, :func:`table2_row`); splice-in
fidelity in :mod:`~repgeo_utils.ablation.splice` (:func:`hidden_state_module`, :func:`splice`,
:func:`splice_fidelity`, :func:`classifier_splice_fidelity`, :func:`lm_splice_fidelity`,
:class:`ProbeClassifier`, :func:`fit_linear_probe`).
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
from .splice import (
    REFERENCES,
    ProbeClassifier,
    SpliceBatch,
    SpliceHook,
    classifier_splice_fidelity,
    encoder_batches,
    fit_linear_probe,
    fraction_recovered,
    hidden_state_module,
    layer_means,
    lm_batches,
    lm_splice_fidelity,
    splice,
    splice_fidelity,
)

__all__ = [
    "ABLATION_COLUMNS",
    "ABLATION_MODES",
    "REFERENCES",
    "AblationHook",
    "AblationMode",
    "EigenBasis",
    "ProbeClassifier",
    "SpliceBatch",
    "SpliceHook",
    "ablation_sweep",
    "check_ks",
    "classifier_accuracy_ablation",
    "classifier_splice_fidelity",
    "collect_module_outputs",
    "default_ks",
    "eigen_ablation",
    "encoder_batches",
    "final_representation_module",
    "fit_eigenbasis",
    "fit_linear_probe",
    "fraction_recovered",
    "hidden_state_module",
    "layer_means",
    "lm_batches",
    "lm_loss_ablation",
    "lm_splice_fidelity",
    "splice",
    "splice_fidelity",
    "table2_row",
]
