"""The language-model side: a small causal LM pretrained from scratch, its checkpoints as
loadable revisions, and sweeps of representations over those checkpoints (paper 2).

``from repgeo_utils import lm`` gives the public API (``lm.pretrain``, ``lm.PRETRAIN_SETTINGS``,
``lm.sweep_checkpoints``, ...); the modules say where each part lives:

- :mod:`~repgeo_utils.lm.corpus`: BBC bodies + tweets, held-out probe texts, the BPE tokenizer,
  the cached token stream and its deterministic batches;
- :mod:`~repgeo_utils.lm.model`: :class:`PretrainConfig`, :data:`PRETRAIN_SETTINGS`, the
  GPT-NeoX model, the optimizer and one training step;
- :mod:`~repgeo_utils.lm.training`: :func:`pretrain` (resumable, cached run folders);
- :mod:`~repgeo_utils.lm.checkpoints`: Pythia's checkpoint schedule and revisions on disk, shared
  with :mod:`repgeo_utils.posttrain`;
- :mod:`~repgeo_utils.lm.sweeps`: last-token features, loss and RankMe / alpha-ReQ per revision.
"""

from .checkpoints import (
    LOG_SPACED_STEPS,
    checkpoint_schedule,
    damaged_revisions,
    list_revisions,
    pythia_revisions,
    revision_step,
)
from .corpus import (
    EOS_TOKEN,
    PAD_TOKEN,
    PreparedCorpus,
    PretrainCorpus,
    TokenBatches,
    bbc_bodies,
    build_corpus,
    prepare_corpus,
    probe_texts,
    train_tokenizer,
    tweets,
)
from .model import (
    FORMAT_VERSION,
    PRETRAIN_SETTINGS,
    PretrainConfig,
    build_model,
    count_parameters,
    make_optimizer,
    train_step,
)
from .sweeps import (
    CheckpointSweep,
    RevisionFeatures,
    causal_lm_batches,
    last_token_features,
    sweep_checkpoints,
)
from .training import PretrainResult, is_run_complete, pretrain, run_folder

__all__ = [
    "EOS_TOKEN",
    "FORMAT_VERSION",
    "LOG_SPACED_STEPS",
    "PAD_TOKEN",
    "PRETRAIN_SETTINGS",
    "CheckpointSweep",
    "PreparedCorpus",
    "PretrainConfig",
    "PretrainCorpus",
    "PretrainResult",
    "RevisionFeatures",
    "TokenBatches",
    "bbc_bodies",
    "build_corpus",
    "build_model",
    "causal_lm_batches",
    "checkpoint_schedule",
    "count_parameters",
    "is_run_complete",
    "last_token_features",
    "damaged_revisions",
    "list_revisions",
    "make_optimizer",
    "prepare_corpus",
    "pretrain",
    "probe_texts",
    "pythia_revisions",
    "revision_step",
    "run_folder",
    "sweep_checkpoints",
    "train_step",
    "train_tokenizer",
    "tweets",
]
