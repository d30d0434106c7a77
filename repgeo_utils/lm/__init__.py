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
- :mod:`~repgeo_utils.lm.sweeps`: last-token features, loss and RankMe / alpha-ReQ per revision;
- :mod:`~repgeo_utils.lm.phases`: the phases of a trajectory with their noise, alpha per phase,
  bases spread over the phases;
- :mod:`~repgeo_utils.lm.memorization`: distributional memorization with an infini-gram index
  of the training tokens (paper 2, Fig 4 and Table 1);
- :mod:`~repgeo_utils.lm.downstream`: linear probes and few-shot accuracy over checkpoints, and
  their correlation with RankMe and alpha (appendix C.2);
- :mod:`~repgeo_utils.lm.generations`: early checkpoints' continuations and their repetition
  (Fig 7);
- :mod:`~repgeo_utils.lm.standard`: the standard run end to end in one command, its recorded
  tables (:func:`load_recorded`).
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
from .downstream import (
    DownstreamSettings,
    correlation_table,
    downstream_over_checkpoints,
    few_shot_accuracy,
    linear_probe_accuracy,
)
from .generations import (
    DEFAULT_PROMPTS,
    early_revisions,
    generations_over_checkpoints,
    repetition_by_checkpoint,
    repetition_measures,
)
from .memorization import (
    MemorizationResult,
    NgramIndex,
    corpus_ngram_index,
    memorization_over_checkpoints,
    memorization_peak,
    suffix_length_table,
)
from .model import (
    FORMAT_VERSION,
    OPTIMIZER_IMPLEMENTATIONS,
    PRETRAIN_SETTINGS,
    TRAINING_VERSION,
    PretrainConfig,
    build_model,
    count_parameters,
    make_optimizer,
    retain_freed_memory,
    train_step,
)
from .phases import (
    bases_across_phases,
    checkpoint_noise,
    phase_table,
    seed_spread,
    values_by_phase,
)
from .standard import (
    RECORDED_DIR,
    STANDARD_SETTINGS,
    RecordedRun,
    StandardSetting,
    load_recorded,
    run_standard,
)
from .sweeps import (
    CheckpointSweep,
    RevisionFeatures,
    causal_lm_batches,
    last_token_features,
    resolve_max_length,
    sweep_checkpoints,
)
from .training import PretrainResult, is_run_complete, pretrain, run_folder

__all__ = [
    "DEFAULT_PROMPTS",
    "OPTIMIZER_IMPLEMENTATIONS",
    "RECORDED_DIR",
    "STANDARD_SETTINGS",
    "TRAINING_VERSION",
    "DownstreamSettings",
    "MemorizationResult",
    "NgramIndex",
    "RecordedRun",
    "StandardSetting",
    "bases_across_phases",
    "checkpoint_noise",
    "corpus_ngram_index",
    "correlation_table",
    "downstream_over_checkpoints",
    "early_revisions",
    "few_shot_accuracy",
    "generations_over_checkpoints",
    "linear_probe_accuracy",
    "load_recorded",
    "memorization_over_checkpoints",
    "memorization_peak",
    "phase_table",
    "repetition_by_checkpoint",
    "repetition_measures",
    "resolve_max_length",
    "run_standard",
    "seed_spread",
    "suffix_length_table",
    "values_by_phase",
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
    "retain_freed_memory",
    "revision_step",
    "run_folder",
    "sweep_checkpoints",
    "train_step",
    "train_tokenizer",
    "tweets",
]
