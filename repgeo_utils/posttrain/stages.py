"""The three post-training stages and their settings: SFT, DPO and GRPO with TRL, each built
by one entry of :data:`TRAINER_BUILDERS`, cached stage by stage by :func:`posttrain`."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from .. import validate
from ..cache import cache_entry, key_hash
from ..config import seed_everything
from ..finetune import no_datasets_bars
from ..lm import PRETRAIN_SETTINGS, pretrain
from ..lm.checkpoints import (
    checkpoint_schedule,
    list_revisions,
    quiet_progress_bars,
    save_model_quietly,
    save_revision,
)
from ..lm.training import torch_threads
from ..models import load_model, load_tokenizer, resolve_model
from .tasks import (
    PROMPT_TASKS,
    SYNTHETIC_TASKS,
    PromptData,
    build_prompt_data,
    dpo_pairs,
    exact_match_reward,
)

log = logging.getLogger(__name__)

#: Bumped whenever the stage code changes what a config produces (part of every stage key).
FORMAT_VERSION = 1

STAGES: tuple[str, ...] = ("sft", "dpo", "rl")
STAGE_TITLES = {"sft": "SFT", "dpo": "DPO", "rl": "RL (GRPO)"}


# --- configuration -----------------------------------------------------------------------------


def _check_fields(owner: str, settings: Any, rules: dict[str, Callable[[str, Any], Any]]) -> None:
    """Apply ``rules`` (field -> check of :mod:`repgeo_utils.validate`) to ``settings``; one
    error naming every bad field, its value and what would work."""
    problems = []
    for name, rule in rules.items():
        try:
            value = rule(name, getattr(settings, name))
        except (TypeError, ValueError) as err:
            problems.append(str(err))
            continue
        if isinstance(value, int) and not isinstance(getattr(settings, name), bool):
            object.__setattr__(settings, name, value)  # a NumPy integer becomes an int
    if problems:
        raise ValueError(f"Invalid {owner}: " + "; ".join(problems) + ".")


_STEP_RULES: dict[str, Callable[[str, Any], Any]] = {
    "steps": validate.positive_int,
    "batch_size": validate.positive_int,
    "learning_rate": validate.positive_float,
    "checkpoint_every": validate.positive_int,
}


@validate.refuse_unknown_names
@dataclass(frozen=True)
class SFTSettings:
    """Supervised fine-tuning (TRL ``SFTTrainer``, prompt-completion data, loss on the
    completion only)."""

    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        _check_fields("SFTSettings", self, _STEP_RULES)


@validate.refuse_unknown_names
@dataclass(frozen=True)
class DPOSettings:
    """Direct preference optimisation (TRL ``DPOTrainer``, sigmoid loss, reference = the SFT
    model)."""

    steps: int = 150
    batch_size: int = 16
    learning_rate: float = 5e-5
    beta: float = 0.1
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        _check_fields("DPOSettings", self, {**_STEP_RULES, "beta": validate.positive_float})


@validate.refuse_unknown_names
@dataclass(frozen=True)
class RLSettings:
    """Verifiable-reward RL (TRL ``GRPOTrainer``): ``batch_size`` completions per step,
    ``num_generations`` per prompt, rewards normalised within each prompt's group.
    ``kl_beta`` = 0 trains without a reference model (TRL's default); ``kl_beta`` > 0 adds
    TRL's KL penalty (``GRPOConfig.beta``) towards the stage's starting model."""

    steps: int = 300
    batch_size: int = 32
    num_generations: int = 8
    learning_rate: float = 1e-3
    temperature: float = 1.0
    max_completion_tokens: int = 8
    kl_beta: float = 0.0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        _check_fields(
            "RLSettings",
            self,
            {
                **_STEP_RULES,
                "num_generations": lambda n, v: validate.integer(n, v, minimum=2),
                "temperature": validate.positive_float,
                "max_completion_tokens": validate.positive_int,
                "kl_beta": validate.non_negative_float,
            },
        )
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"Invalid RLSettings: batch_size ({self.batch_size}) must be a multiple of "
                f"num_generations ({self.num_generations}), e.g. batch_size="
                f"{self.num_generations * max(1, round(self.batch_size / self.num_generations))}."
            )


@validate.refuse_unknown_names
@dataclass(frozen=True)
class PosttrainConfig:
    """Everything that determines a post-training run (with the base model's weights, its
    cache key).

    ``base_model`` is a run folder of :func:`repgeo_utils.lm.pretrain`, a registry key,
    hub id or local folder (``None``: the quick pretraining run, trained if needed).
    ``max_prompt_tokens`` cuts long texts so that prompt + answer fit ``max_length`` (the
    small LM's context is 64 tokens).
    """

    base_model: str | None = None
    base_revision: str | None = None
    id_task: str = "bbc-news"
    ood_task: str = "tweets-3way"
    max_rows: int | None = 2500  # rows per task before the 80/10/10 split
    seed: int = 0
    max_prompt_tokens: int = 48
    max_length: int = 64
    sft: SFTSettings = field(default_factory=SFTSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    rl: RLSettings = field(default_factory=RLSettings)

    def __post_init__(self) -> None:
        problems = []
        known = (*PROMPT_TASKS, *SYNTHETIC_TASKS)
        for name in ("id_task", "ood_task"):
            if getattr(self, name) not in known:
                problems.append(f"unknown prompt task {getattr(self, name)!r} for {name} (known: "
                                f"{', '.join(known)})")  # fmt: skip
        if self.id_task == self.ood_task:
            problems.append("id_task and ood_task must differ (OOD = a task no stage trains on)")
        for name, cls in (("sft", SFTSettings), ("dpo", DPOSettings), ("rl", RLSettings)):
            if not isinstance(getattr(self, name), cls):
                problems.append(f"{name} must be a {cls.__name__}, got "
                                f"{type(getattr(self, name)).__name__} {getattr(self, name)!r}")  # fmt: skip
        for name, rule in (
            ("seed", validate.non_negative_int),
            ("max_prompt_tokens", lambda n, v: validate.integer(n, v, minimum=4)),
            ("max_length", validate.positive_int),
        ):
            try:
                rule(name, getattr(self, name))
            except (TypeError, ValueError) as err:
                problems.append(str(err))
        if self.max_rows is not None:
            try:
                validate.integer("max_rows", self.max_rows, minimum=10)
            except (TypeError, ValueError) as err:
                problems.append(str(err))
        if not problems and self.max_length <= self.max_prompt_tokens:
            problems.append(
                f"need 4 <= max_prompt_tokens < max_length, got {self.max_prompt_tokens}, "
                f"{self.max_length}"
            )
        for name in ("base_model", "base_revision"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                problems.append(
                    f"{name} must be a str or None, got {type(value).__name__} {value!r}"
                )
        if problems:
            raise ValueError("Invalid PosttrainConfig: " + "; ".join(problems))


#: ``quick``: the defaults (the small LM of ``lm.PRETRAIN_SETTINGS["quick"]``, about a
#: minute for all three stages on one thread); ``tiny``: a few steps each, for tests.
POSTTRAIN_SETTINGS: dict[str, PosttrainConfig] = {
    "quick": PosttrainConfig(),
    # the standard run's post-training: ID = addition (199 possible sums; a random guess passes
    # 64 tries with probability 0.28), OOD = addition of larger numbers; enough steps that
    # each stage's change beats the seed-to-seed spread (benchmarks/standard_run_search.md)
    "standard": PosttrainConfig(
        id_task="addition",
        ood_task="addition-large",
        max_rows=None,
        max_prompt_tokens=16,
        max_length=32,
        sft=SFTSettings(steps=800, batch_size=32, learning_rate=1e-3, checkpoint_every=200),
        dpo=DPOSettings(
            steps=200, batch_size=32, learning_rate=1e-4, beta=0.1, checkpoint_every=50
        ),
        rl=RLSettings(
            steps=300,
            batch_size=32,
            num_generations=8,
            learning_rate=3e-4,
            max_completion_tokens=6,
            checkpoint_every=50,
        ),
    ),  # fmt: skip
    "tiny": PosttrainConfig(
        max_rows=300,
        sft=SFTSettings(steps=6, batch_size=4, checkpoint_every=3),
        dpo=DPOSettings(steps=4, batch_size=4, checkpoint_every=2),
        rl=RLSettings(steps=4, batch_size=8, num_generations=4, checkpoint_every=2),
    ),
}


# --- the stages --------------------------------------------------------------------------------


def _base_identity(config: PosttrainConfig, progress: bool) -> tuple[str, str | None, dict]:
    """(model to load, revision, cache identity) of the base model; trains the quick
    pretraining run when ``base_model`` is None."""
    name, revision = config.base_model, config.base_revision
    if name is None:
        run = pretrain(PRETRAIN_SETTINGS["quick"], num_threads=1, progress=progress)
        name, revision = str(run.run_folder), None
    ref = resolve_model(name, revision)
    identity = {"model": ref.name if ref.source == "hub" else None, "revision": ref.revision}
    if ref.source != "hub":  # the weights themselves, not where they lie
        identity["fingerprint"] = ref.fingerprint()
    else:
        identity["model"] = ref.path
    return name, revision, identity


class SaveRevisions(TrainerCallback):
    """Writes ``revisions/step<N>/`` of ``folder`` at the scheduled ``steps`` of a Trainer."""

    def __init__(self, folder: Path, steps: Sequence[int], tokenizer: Any) -> None:
        self.folder, self.steps, self.tokenizer = folder, set(steps), tokenizer

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps and model is not None:
            save_revision(self.folder, state.global_step, model, self.tokenizer)
        return control


@dataclass
class StageRun:
    """What a stage's trainer is built from: the model it starts from (``init``, loaded as
    ``model`` and ``tokenizer``), the run's config, the prompt data and the output folder."""

    stage: str
    init: tuple[str, str | None]
    model: Any
    tokenizer: Any
    config: PosttrainConfig
    data: PromptData
    out: Path
    progress: bool
    use_gpu: bool
    callback: TrainerCallback

    @property
    def settings(self) -> SFTSettings | DPOSettings | RLSettings:
        """This stage's settings (``config.sft``, ``config.dpo`` or ``config.rl``)."""
        return getattr(self.config, self.stage)

    def training_args(self, cls: type, **extra: Any) -> Any:
        """TRL config shared by the three stages: constant learning rate, no warmup, seeded data
        order, CPU unless ``use_gpu``, no saving by the Trainer itself (the callback writes the
        revisions)."""
        settings, config = self.settings, self.config
        return cls(
            output_dir=str(self.out / "trainer"),
            max_steps=settings.steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="constant",
            warmup_steps=0,
            logging_steps=max(1, min(10, settings.steps // 10)),
            save_strategy="no",
            report_to="none",
            seed=config.seed,
            data_seed=config.seed,
            use_cpu=not self.use_gpu,
            disable_tqdm=not self.progress,
            dataloader_num_workers=0,
            **extra,
        )


def build_sft(run: StageRun) -> SFTTrainer:
    """Supervised fine-tuning on prompt -> " " + answer (loss on the completion only)."""
    rows = [{"prompt": r["prompt"], "completion": " " + r["answer"]} for r in run.data.train]
    return SFTTrainer(
        model=run.model,
        args=run.training_args(SFTConfig, max_length=run.config.max_length),
        train_dataset=Dataset.from_list(rows),
        processing_class=run.tokenizer,
        callbacks=[run.callback],
    )


def build_dpo(run: StageRun) -> DPOTrainer:
    """DPO on (right answer, seeded wrong answer) pairs; the reference is the stage's start."""
    settings = run.config.dpo
    args = run.training_args(DPOConfig, beta=settings.beta, max_length=run.config.max_length)
    with quiet_progress_bars():
        reference, _ = load_model(run.init[0], run.init[1], kind="causal-lm")
    return DPOTrainer(
        model=run.model,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(dpo_pairs(run.data, run.config.seed)),
        processing_class=run.tokenizer,
        callbacks=[run.callback],
    )


def build_rl(run: StageRun) -> GRPOTrainer:
    """GRPO with the exact-match reward (:func:`~repgeo_utils.posttrain.exact_match_reward`)."""
    settings = run.config.rl
    args = run.training_args(
        GRPOConfig,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_tokens,
        temperature=settings.temperature,
        beta=settings.kl_beta,
    )
    rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in run.data.train]
    # TRL types a reward function as returning list[float | None]; ours never returns None
    reward = cast(Callable[..., list[float | None]], exact_match_reward)
    return GRPOTrainer(
        model=run.model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=run.tokenizer,
        callbacks=[run.callback],
    )


#: The trainer of each stage, in :data:`STAGES` order: a function of a :class:`StageRun`.
TRAINER_BUILDERS: dict[str, Callable[[StageRun], Any]] = {
    "sft": build_sft,
    "dpo": build_dpo,
    "rl": build_rl,
}


def _train_stage(
    stage: str,
    init: tuple[str, str | None],
    config: PosttrainConfig,
    data: PromptData,
    out: Path,
    progress: bool,
    use_gpu: bool = False,
) -> dict[str, Any]:
    """Train one stage from ``init`` (model, revision) into ``out``; returns its summary."""
    if stage not in TRAINER_BUILDERS:
        raise ValueError(f"Unknown stage {stage!r}; stages are {', '.join(STAGES)}.")
    with _quiet_stage(progress):
        return _run_stage(stage, init, config, data, out, progress, use_gpu)


@contextmanager
def _quiet_stage(progress: bool):
    """Without progress: no datasets bars, and none of transformers' deprecation warnings
    that TRL's trainers trigger (``gradient_checkpointing`` renamed in transformers 5)."""
    if progress:
        yield
        return
    with no_datasets_bars(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        yield


def _run_stage(
    stage: str,
    init: tuple[str, str | None],
    config: PosttrainConfig,
    data: PromptData,
    out: Path,
    progress: bool,
    use_gpu: bool,
) -> dict[str, Any]:
    seed_everything(config.seed)
    with quiet_progress_bars():
        model, tokenizer = load_model(init[0], init[1], kind="causal-lm")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    settings = getattr(config, stage)
    steps = checkpoint_schedule(settings.steps, settings.checkpoint_every)
    save_revision(out, 0, model, tokenizer)
    callback = SaveRevisions(out, steps, tokenizer)
    start = time.perf_counter()
    run = StageRun(stage, init, model, tokenizer, config, data, out, progress, use_gpu, callback)
    trainer = TRAINER_BUILDERS[stage](run)
    if not progress:  # no per-log printing either (the history is kept in stage.json)
        trainer.remove_callback(PrinterCallback)
    trainer.train()
    seconds = time.perf_counter() - start
    history = [
        {k: v for k, v in h.items() if isinstance(v, (int, float))}
        for h in trainer.state.log_history
    ]
    for h in history:
        for name, value in h.items():
            if isinstance(value, float) and not math.isfinite(value) and "loss" in name:
                raise FloatingPointError(
                    f"{stage}: {name} became {value} at step {h.get('step')}; lower the "
                    f"learning rate ({settings.learning_rate})."
                )
    trainer.model.eval()
    save_model_quietly(trainer.model, tokenizer, out)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    summary = {"stage": stage, "seconds": seconds, "steps": settings.steps, "log": history}
    (out / "stage.json").write_text(json.dumps(summary, indent=1))
    return summary


@dataclass
class PosttrainResult:
    """What :func:`posttrain` returns: the folder of each stage (load its revisions with
    ``models.load_model(folder, revision="step<N>", kind="causal-lm")``)."""

    config: PosttrainConfig
    base: tuple[str, str | None]
    stages: dict[str, Path]
    logs: dict[str, list[dict[str, float]]]
    seconds: dict[str, float]
    id_data: PromptData
    ood_data: PromptData
    cached: dict[str, bool]

    def revisions(self, stage: str) -> list[str]:
        return list_revisions(self.stages[stage])

    def history(self) -> pd.DataFrame:
        """The trainers' logged values (loss, reward, ...) by stage and step."""
        rows = [{"stage": s, **h} for s in STAGES for h in self.logs.get(s, []) if "step" in h]
        return pd.DataFrame(rows)


def posttrain(
    config: PosttrainConfig | str = "quick",
    *,
    num_threads: int | None = 1,
    use_gpu: bool = False,
    progress: bool = True,
) -> PosttrainResult:
    """Run (or reuse) SFT, then DPO, then GRPO from the config's base model.

    Each stage is cached separately (key: the base weights, both tasks' data, this stage's
    and the earlier stages' settings, the seed), so a run stopped during DPO keeps its SFT
    stage. ``num_threads`` sets torch's CPU threads while training (1, the default, keeps the
    result bit-for-bit the same on any machine; no benchmark has timed the stages at other
    thread counts, and pretraining the same LM was faster on two, see
    :func:`repgeo_utils.lm.pretrain`). ``use_gpu`` trains on the GPU
    (for a hub base model in the paper profile); a GPU run is cached apart from CPU runs.
    """
    if use_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError("use_gpu=True but torch sees no CUDA device.")
    if isinstance(config, str):
        if config not in POSTTRAIN_SETTINGS:
            raise ValueError(
                f"Unknown post-training setting {config!r}; known: {', '.join(POSTTRAIN_SETTINGS)}"
            )
        config = POSTTRAIN_SETTINGS[config]
    with torch_threads(num_threads):
        name, revision, identity = _base_identity(config, progress)
        tokenizer = load_tokenizer(name, revision)
        id_data = build_prompt_data(
            config.id_task,
            tokenizer,
            max_prompt_tokens=config.max_prompt_tokens,
            max_rows=config.max_rows,
            seed=config.seed,
        )
        ood_data = build_prompt_data(
            config.ood_task,
            tokenizer,
            max_prompt_tokens=config.max_prompt_tokens,
            max_rows=config.max_rows,
            seed=config.seed,
        )
        key: dict[str, Any] = {
            "base": identity,
            "id_data": id_data.fingerprint(),
            "format": FORMAT_VERSION,
            "max_length": config.max_length,
            "seed": config.seed,
        }
        if use_gpu:  # GPU kernels round differently: never mix with CPU results
            key["device"] = "cuda"
        init: tuple[str, str | None] = (name, revision)
        stages: dict[str, Path] = {}
        logs: dict[str, list] = {}
        seconds: dict[str, float] = {}
        cached: dict[str, bool] = {}
        for stage in STAGES:
            key = {**key, stage: asdict(getattr(config, stage)), "after": key_hash(key)}
            with cache_entry("posttrain", f"{stage}", key) as entry:
                cached[stage] = entry.exists
                if not entry.exists:
                    log.info("post-training stage %s from %s", stage, init[0])
                    _train_stage(stage, init, config, id_data, entry.build_dir, progress, use_gpu)
            summary = json.loads((entry.path / "stage.json").read_text())
            stages[stage], logs[stage], seconds[stage] = (
                entry.path,
                summary["log"],
                summary["seconds"],
            )
            init = (str(entry.path), None)
    return PosttrainResult(
        config, (name, revision), stages, logs, seconds, id_data, ood_data, cached
    )
