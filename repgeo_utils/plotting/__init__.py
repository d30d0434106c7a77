"""Figures: one style for every notebook, ``save_figure``, and the plots grouped by the notebook
step they serve.

``from repgeo_utils import plotting`` gives every plot (``plotting.plot_layer_similarity``,
``plotting.save_figure``, ...); the modules are :mod:`~repgeo_utils.plotting.style` (style,
colours, ``save_figure``, shared axis helpers), :mod:`~repgeo_utils.plotting.finetuning`
(notebook 01), :mod:`~repgeo_utils.plotting.similarity` (02), :mod:`~repgeo_utils.plotting.sae`
(03-04), :mod:`~repgeo_utils.plotting.sae_diffing` (03: splice-in fidelity, SAE transfer,
crosscoders), :mod:`~repgeo_utils.plotting.spectral` (05), :mod:`~repgeo_utils.plotting.training`
(06-08: pretraining, toy model and post-training trajectories, pass@k),
:mod:`~repgeo_utils.plotting.ablation` (08) and :mod:`~repgeo_utils.plotting.memorization` (09:
memorization and downstream accuracy over checkpoints).
"""

from .ablation import plot_ablation
from .finetuning import (
    plot_classification_reports,
    plot_confusion_matrices,
    plot_pre_post_accuracy,
    plot_training_curves,
)
from .memorization import plot_downstream, plot_memorization
from .posttraining import plot_checkpoint_sft, plot_pass_at_k_seeds, plot_seed_changes
from .sae import (
    DEPTH_COLORS,
    plot_feature_matching,
    plot_latent_density,
    plot_latent_density_grid,
    plot_sae_settings,
    plot_sae_training,
    plot_sae_training_grid,
    plot_token_strip_pairs,
    plot_token_strips,
)
from .sae_diffing import (
    BAND_COLORS,
    SPLICE_COLORS,
    plot_crosscoder_vs_matching,
    plot_relative_norms,
    plot_sae_transfer,
    plot_splice_fidelity,
)
from .similarity import plot_layer_similarity, plot_similarity_by_size
from .spectral import SPECTRAL_METRIC_LABELS, plot_eigenspectra, plot_layer_spectra
from .style import DPI, MODEL_COLORS, POST_COLOR, PRE_COLOR, save_figure, use_style
from .training import (
    PHASE_COLORS,
    STAGE_COLORS,
    TRAJECTORY_LABELS,
    plot_checkpoint_trajectory,
    plot_layer_trajectories,
    plot_pass_at_k,
    plot_posttrain_trajectory,
    plot_toy_geometry,
    plot_toy_rankme,
)

__all__ = [
    "BAND_COLORS",
    "DEPTH_COLORS",
    "DPI",
    "MODEL_COLORS",
    "PHASE_COLORS",
    "POST_COLOR",
    "PRE_COLOR",
    "SPECTRAL_METRIC_LABELS",
    "SPLICE_COLORS",
    "STAGE_COLORS",
    "TRAJECTORY_LABELS",
    "plot_ablation",
    "plot_downstream",
    "plot_memorization",
    "plot_checkpoint_sft",
    "plot_checkpoint_trajectory",
    "plot_classification_reports",
    "plot_confusion_matrices",
    "plot_crosscoder_vs_matching",
    "plot_eigenspectra",
    "plot_feature_matching",
    "plot_latent_density",
    "plot_latent_density_grid",
    "plot_layer_similarity",
    "plot_layer_spectra",
    "plot_layer_trajectories",
    "plot_pass_at_k",
    "plot_pass_at_k_seeds",
    "plot_posttrain_trajectory",
    "plot_pre_post_accuracy",
    "plot_relative_norms",
    "plot_sae_settings",
    "plot_sae_training",
    "plot_sae_training_grid",
    "plot_sae_transfer",
    "plot_seed_changes",
    "plot_similarity_by_size",
    "plot_splice_fidelity",
    "plot_toy_geometry",
    "plot_toy_rankme",
    "plot_token_strip_pairs",
    "plot_token_strips",
    "plot_training_curves",
    "save_figure",
    "use_style",
]
