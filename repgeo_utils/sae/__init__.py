"""Sparse autoencoders (SAEs) on layer activations: the model, training, metrics, features,
save/load and SAEs trained on cached activations.

``from repgeo_utils import sae`` gives the whole public API (``sae.train_sae``,
``sae.SAEConfig.preset``, ``sae.match_features``, ...); the modules say where each part lives:

- :mod:`~repgeo_utils.sae.model`: :class:`SAEConfig`, :data:`PRESETS`, :class:`SparseAutoencoder`;
- :mod:`~repgeo_utils.sae.sources`: what activations an SAE can read (matrix, shards, stream);
- :mod:`~repgeo_utils.sae.training`: :func:`train_sae` (hand-written gradients, sparse CPU route);
- :mod:`~repgeo_utils.sae.metrics`: :class:`SAEMetrics`, :func:`evaluate_sae`, FVU, sparsity,
  shrinkage and cosine;
- :mod:`~repgeo_utils.sae.features`: latent statistics, top features and tokens, matching;
- :mod:`~repgeo_utils.sae.io`: :func:`save_sae`, :func:`load_sae`, and SAELens's format
  (:func:`export_saelens`, :func:`load_saelens`);
- :mod:`~repgeo_utils.sae.cached`: :func:`train_sae_on_activations` and its cache key;
- :mod:`~repgeo_utils.sae.crosscoder`: a crosscoder on row-paired pre/post activations
  (:class:`CrosscoderConfig`, :func:`train_crosscoder`, relative decoder norms, latent scaling,
  :func:`train_crosscoder_on_activations`);
- :mod:`~repgeo_utils.sae.grid`: the task x depth x model grid of notebooks 03 and 04 (import it
  as ``from repgeo_utils.sae import grid``; it needs fine-tuning and activation extraction, so
  ``import repgeo_utils.sae`` does not load it);
- :mod:`~repgeo_utils.sae.diffing`: splice-in fidelity, SAE transfer, crosscoders against
  matching and SAELens export on that grid (``from repgeo_utils.sae import diffing``; not loaded
  by ``import repgeo_utils.sae`` either).
"""

from .cached import TrainedSAE, sae_cache_key, split_texts, train_sae_on_activations
from .crosscoder import (
    RELATIVE_NORM_BANDS,
    Crosscoder,
    CrosscoderConfig,
    TrainedCrosscoder,
    band_counts,
    evaluate_crosscoder,
    latent_scaling,
    latent_table,
    train_crosscoder,
    train_crosscoder_on_activations,
)
from .features import (
    FeatureMatch,
    LatentStatistics,
    TokenActivation,
    decoder_directions,
    latent_statistics,
    latent_variance,
    match_features,
    top_activating_tokens,
    top_variance_features,
)
from .io import (
    CONFIG_FILE,
    FORMAT,
    LEGACY_WEIGHTS_FILES,
    WEIGHTS_FILE,
    export_saelens,
    fold_decoder_norms,
    load_sae,
    load_saelens,
    log10_sparsity,
    read_saelens_sparsity,
    saelens_hook_name,
    save_sae,
)
from .metrics import (
    SAEMetrics,
    SparsityStats,
    encode_batches,
    evaluate_sae,
    fraction_of_variance_unexplained,
    reconstruction_cosine,
    shrinkage,
    sparsity_stats,
)
from .model import PRESETS, Architecture, SAEConfig, SparseAutoencoder, TrainOn
from .sources import ActivationSource, RowSelection
from .training import TrainHistory, train_sae

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "LEGACY_WEIGHTS_FILES",
    "PRESETS",
    "RELATIVE_NORM_BANDS",
    "WEIGHTS_FILE",
    "ActivationSource",
    "Architecture",
    "Crosscoder",
    "CrosscoderConfig",
    "FeatureMatch",
    "LatentStatistics",
    "RowSelection",
    "SAEConfig",
    "SAEMetrics",
    "SparseAutoencoder",
    "SparsityStats",
    "TokenActivation",
    "TrainHistory",
    "TrainOn",
    "TrainedCrosscoder",
    "TrainedSAE",
    "band_counts",
    "decoder_directions",
    "encode_batches",
    "evaluate_crosscoder",
    "evaluate_sae",
    "export_saelens",
    "fold_decoder_norms",
    "fraction_of_variance_unexplained",
    "latent_scaling",
    "latent_statistics",
    "latent_table",
    "latent_variance",
    "load_sae",
    "load_saelens",
    "log10_sparsity",
    "match_features",
    "sae_cache_key",
    "read_saelens_sparsity",
    "reconstruction_cosine",
    "saelens_hook_name",
    "save_sae",
    "shrinkage",
    "sparsity_stats",
    "split_texts",
    "top_activating_tokens",
    "top_variance_features",
    "train_crosscoder",
    "train_crosscoder_on_activations",
    "train_sae",
    "train_sae_on_activations",
]
