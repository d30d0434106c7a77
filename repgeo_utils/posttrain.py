"""Post-training a causal LM in three stages (SFT, DPO, verifiable-reward RL) and measuring
what each stage does to its representations and its answers.

Paper 2 (Li et al. 2025, section 3.4 and Fig. 6) follows RankMe and alpha-ReQ through the
Tulu-3 recipe on Llama-3.1-8B: supervised fine-tuning and DPO expand the representation
("entropy-seeking"), RL from verifiable rewards (RLVR) compresses it ("compression-seeking"),
and RLVR raises pass@k at small k while the base model catches up or overtakes it at large k.
This module runs the same three stages, with TRL's ``SFTTrainer``, ``DPOTrainer`` and
``GRPOTrainer``, on a model this machine can train: by default the small GPT-NeoX pretrained
from scratch by :mod:`repgeo_utils.lm` (any causal LM in the hub's format works, e.g.
``EleutherAI/pythia-160m`` in the paper profile).

The stage data come from the offline classification tasks, so every answer can be checked:

- a **prompt task** (:data:`PROMPT_TASKS`) turns a labelled text into ``prompt`` ->
  ``answer``, e.g. ``"Headline: Ad sales boost Time Warner profit\\nTopic:"`` -> ``business``;
- **SFT** trains on prompt + ``" " + answer`` (loss on the answer and the end-of-text token);
- **DPO** pairs the correct answer (chosen) with a seeded wrong one (rejected), reference =
  the SFT model;
- **RL** is GRPO with the exact-match reward :func:`exact_match_reward` (1 for the right
  label word, 0 otherwise);
- **in-distribution (ID)** = held-out test rows of the training task, **out-of-distribution
  (OOD)** = test rows of another task (e.g. tweet sentiment) that no stage trains on.

Each stage is a cache entry ``data/cache/posttrain/<stage>-<hash>/`` whose key chains the
base model's weights, the data and every setting of this and the earlier stages; it holds the
final weights and ``revisions/step<N>/`` on Pythia's checkpoint schedule (step 0 = the
stage's starting point), so :func:`repgeo_utils.lm.sweep_checkpoints` measures it like a
pretraining run. A stage is written to a temporary folder and renamed only when complete:
an interrupted run keeps the finished stages and redoes only the interrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .cache import cache_entry, key_hash
from .config import seed_everything
from .lm.training import torch_threads

log = logging.getLogger(__name__)

#: Bumped whenever the stage code changes what a config produces (part of every stage key).
FORMAT_VERSION = 1

STAGES: tuple[str, ...] = ("sft", "dpo", "rl")
STAGE_TITLES = {"sft": "SFT", "dpo": "DPO", "rl": "RL (GRPO)"}


# --- prompt tasks and rewards ------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTask:
    """How a classification task of :mod:`repgeo_utils.data` becomes prompt -> answer.

    ``template`` has one ``{text}`` field; the answer is the class name (a single word for
    the offline tasks), which the model must write after the prompt.
    """

    task: str
    template: str

    def prompt(self, text: str) -> str:
        return self.template.format(text=" ".join(str(text).split()))


PROMPT_TASKS: dict[str, PromptTask] = {
    "bbc-news": PromptTask("bbc-news", "Headline: {text}\nTopic:"),
    "tweets-3way": PromptTask("tweets-3way", "Tweet: {text}\nSentiment:"),
    "tweets-binary": PromptTask("tweets-binary", "Tweet: {text}\nSentiment:"),
}

_TRAILING = ".,;:!?\"'"


def normalise_answer(text: str) -> str:
    """The answer a completion gives: its first line, lower-cased, stripped of surrounding
    white space and trailing punctuation (``" Business.\\nmore"`` -> ``"business"``)."""
    first = str(text).strip().split("\n", 1)[0] if str(text).strip() else ""
    return first.strip().rstrip(_TRAILING).strip().lower()


def exact_match_reward(completions: Sequence[Any], answer: Sequence[str], **_: Any) -> list[float]:
    """Verifiable reward: 1.0 when a completion's answer (:func:`normalise_answer`) is exactly
    the reference answer, else 0.0. ``completions`` are strings (or TRL's conversational form,
    a list of messages whose last ``content`` is used). Signature as TRL's GRPO reward
    functions expect: extra dataset columns arrive as keyword arguments."""
    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers.")
    rewards = []
    for completion, ref in zip(completions, answer, strict=True):
        if isinstance(completion, list):  # conversational: [{"role": ..., "content": ...}]
            completion = completion[-1]["content"] if completion else ""
        rewards.append(1.0 if normalise_answer(completion) == normalise_answer(ref) else 0.0)
    return rewards


# --- pass@k ------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021):
    ``1 - C(n - c, k) / C(n, k)``, the chance that ``k`` samples drawn without replacement
    from the ``n`` include a correct one. Computed as a product, which stays exact for large
    ``n``: ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got {n}, {c}, {k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_curve(correct_counts: Sequence[int], n: int) -> pd.DataFrame:
    """Mean pass@k over problems for k = 1..n (``correct_counts``: correct samples per
    problem, out of ``n`` each)."""
    counts = [int(c) for c in correct_counts]
    if not counts:
        raise ValueError("pass_at_k_curve needs at least one problem.")
    rows = [
        {"k": k, "pass_at_k": float(np.mean([pass_at_k(n, c, k) for c in counts]))}
        for k in range(1, n + 1)
    ]
    return pd.DataFrame(rows)


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SFTSettings:
    """Supervised fine-tuning (TRL ``SFTTrainer``, prompt-completion data, loss on the
    completion only)."""

    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    checkpoint_every: int = 50


@dataclass(frozen=True)
class DPOSettings:
    """Direct preference optimisation (TRL ``DPOTrainer``, sigmoid loss, reference = the SFT
    model)."""

    steps: int = 150
    batch_size: int = 16
    learning_rate: float = 5e-5
    beta: float = 0.1
    checkpoint_every: int = 50


@dataclass(frozen=True)
class RLSettings:
    """Verifiable-reward RL (TRL ``GRPOTrainer``): ``batch_size`` completions per step,
    ``num_generations`` per prompt, rewards normalised within each prompt's group.
    ``kl_beta`` = 0 trains without a reference model (TRL's default)."""

    steps: int = 300
    batch_size: int = 32
    num_generations: int = 8
    learning_rate: float = 1e-3
    temperature: float = 1.0
    max_completion_tokens: int = 8
    kl_beta: float = 0.0
    checkpoint_every: int = 50


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
        for name in (self.id_task, self.ood_task):
            if name not in PROMPT_TASKS:
                problems.append(f"unknown prompt task {name!r} (known: {', '.join(PROMPT_TASKS)})")
        if self.id_task == self.ood_task:
            problems.append("id_task and ood_task must differ (OOD = a task no stage trains on)")
        if self.max_prompt_tokens < 4 or self.max_length <= self.max_prompt_tokens:
            problems.append(
                f"need 4 <= max_prompt_tokens < max_length, got {self.max_prompt_tokens}, "
                f"{self.max_length}"
            )
        for stage in STAGES:
            settings = getattr(self, stage)
            if settings.steps < 1 or settings.batch_size < 1 or settings.checkpoint_every < 1:
                problems.append(f"{stage}: steps, batch_size and checkpoint_every must be >= 1")
            if not settings.learning_rate > 0:
                problems.append(f"{stage}: learning_rate must be positive")
        if self.rl.num_generations < 2:
            problems.append("rl.num_generations must be >= 2 (GRPO compares completions)")
        elif self.rl.batch_size % self.rl.num_generations:
            problems.append(
                f"rl.batch_size ({self.rl.batch_size}) must be a multiple of "
                f"rl.num_generations ({self.rl.num_generations})"
            )
        if self.rl.temperature <= 0:
            problems.append("rl.temperature must be positive")
        if self.dpo.beta <= 0:
            problems.append("dpo.beta must be positive")
        if problems:
            raise ValueError("Invalid PosttrainConfig: " + "; ".join(problems))


#: ``quick``: the defaults (the small LM of ``lm.PRETRAIN_SETTINGS["quick"]``, about a
#: minute for all three stages on one thread); ``tiny``: a few steps each, for tests.
POSTTRAIN_SETTINGS: dict[str, PosttrainConfig] = {
    "quick": PosttrainConfig(),
    "tiny": PosttrainConfig(
        max_rows=300,
        sft=SFTSettings(steps=6, batch_size=4, checkpoint_every=3),
        dpo=DPOSettings(steps=4, batch_size=4, checkpoint_every=2),
        rl=RLSettings(steps=4, batch_size=8, num_generations=4, checkpoint_every=2),
    ),
}


# --- data --------------------------------------------------------------------------------------


@dataclass
class PromptData:
    """Prompt / answer rows of one task: ``train`` for the stages, ``test`` held out."""

    task: str
    answers: list[str]  # the label words, in label order
    train: list[dict[str, str]]  # {"prompt", "answer"}
    test: list[dict[str, str]]

    def fingerprint(self) -> str:
        return key_hash({"train": self.train, "test": self.test, "answers": self.answers}, 16)


def _fit_prompt(tokenizer, task: PromptTask, text: str, max_tokens: int) -> str | None:
    """The prompt of ``text``, with words dropped from the end of the text until it fits in
    ``max_tokens`` tokens (None if even one word does not fit)."""
    words = " ".join(str(text).split()).split(" ")
    prompt = task.prompt(" ".join(words))
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    while n > max_tokens and len(words) > 1:
        # drop words in proportion to the excess, then one at a time
        cut = max(1, min(len(words) - 1, (n - max_tokens) // 2))
        words = words[:-cut]
        prompt = task.prompt(" ".join(words))
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return prompt if n <= max_tokens else None


def build_prompt_data(
    task: str,
    tokenizer,
    *,
    max_prompt_tokens: int = 48,
    max_rows: int | None = 2500,
    seed: int = 0,
) -> PromptData:
    """Prompt / answer rows of an offline task (raw text, no preprocessing), split as
    :func:`repgeo_utils.data.load_task` splits it (seeded, stratified): its train split for
    the stages, its test split held out."""
    from .data import load_task

    if task not in PROMPT_TASKS:
        raise ValueError(f"Unknown prompt task {task!r}; known: {', '.join(PROMPT_TASKS)}.")
    spec = PROMPT_TASKS[task]
    dataset = load_task(task, max_rows=max_rows, preprocess=None, seed=seed)
    answers = list(dataset["train"].features["label"].names)
    splits: dict[str, list[dict[str, str]]] = {}
    for split in ("train", "test"):
        rows = []
        for text, label in zip(dataset[split]["text"], dataset[split]["label"], strict=True):
            prompt = _fit_prompt(tokenizer, spec, text, max_prompt_tokens)
            if prompt is not None:
                rows.append({"prompt": prompt, "answer": answers[label]})
        if not rows:
            raise ValueError(f"Task {task!r} has no usable rows in its {split!r} split.")
        splits[split] = rows
    return PromptData(task, answers, splits["train"], splits["test"])


def dpo_pairs(data: PromptData, seed: int = 0) -> list[dict[str, str]]:
    """Preference pairs: chosen = the right answer, rejected = a wrong answer drawn with a
    seeded RNG (completions carry a leading space, as in SFT)."""
    if len(data.answers) < 2:
        raise ValueError("DPO pairs need at least two answers.")
    rng = random.Random(seed)
    return [
        {
            "prompt": row["prompt"],
            "chosen": " " + row["answer"],
            "rejected": " " + rng.choice([a for a in data.answers if a != row["answer"]]),
        }
        for row in data.train
    ]


# --- the stages --------------------------------------------------------------------------------


def _weights_digest(folder: Path) -> str:
    """Content digest of a local model's weights (size only for files over 256 MB)."""
    import hashlib

    parts = []
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        size = path.stat().st_size
        if size <= 256 << 20:
            parts.append(f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}")
        else:
            parts.append(f"{path.name}:{size}")
    return ";".join(parts)


def _base_identity(config: PosttrainConfig, progress: bool) -> tuple[str, str | None, dict]:
    """(model to load, revision, cache identity) of the base model; trains the quick
    pretraining run when ``base_model`` is None."""
    from .models import resolve_model

    name, revision = config.base_model, config.base_revision
    if name is None:
        from .lm import PRETRAIN_SETTINGS, pretrain

        run = pretrain(PRETRAIN_SETTINGS["quick"], num_threads=1, progress=progress)
        name, revision = str(run.run_folder), None
    ref = resolve_model(name, revision)
    identity = {"model": ref.name if ref.source == "hub" else None, "revision": ref.revision}
    if ref.source != "hub":
        identity["weights"] = _weights_digest(Path(ref.path))
    else:
        identity["model"] = ref.path
    return name, revision, identity


def _checkpoint_callback(folder: Path, steps: list[int], tokenizer):
    """A TrainerCallback that writes ``revisions/step<N>/`` at the scheduled steps."""
    from transformers import TrainerCallback

    from .lm.checkpoints import save_revision

    wanted = set(steps)

    class SaveRevisions(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in wanted and model is not None:
                save_revision(folder, state.global_step, model, tokenizer)
            return control

    return SaveRevisions()


def _training_args(
    cls, settings, config: PosttrainConfig, out: Path, progress: bool, use_gpu: bool, **extra
):
    """TRL config shared by the three stages: constant learning rate, no warmup, seeded data
    order, CPU unless ``use_gpu``, no saving by the Trainer itself (the callback writes the
    revisions)."""
    return cls(
        output_dir=str(out / "trainer"),
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
        use_cpu=not use_gpu,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        **extra,
    )


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
    with _quiet_stage(progress):
        return _train_stage_inner(stage, init, config, data, out, progress, use_gpu)


@contextmanager
def _quiet_stage(progress: bool):
    """Without progress: no datasets bars, and none of transformers' deprecation warnings
    that TRL's trainers trigger (``gradient_checkpointing`` renamed in transformers 5)."""
    import warnings

    from .finetune import no_datasets_bars

    if progress:
        yield
        return
    with no_datasets_bars(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        yield


def _train_stage_inner(
    stage: str,
    init: tuple[str, str | None],
    config: PosttrainConfig,
    data: PromptData,
    out: Path,
    progress: bool,
    use_gpu: bool,
) -> dict[str, Any]:
    import time

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    from .lm.checkpoints import (
        checkpoint_schedule,
        quiet_progress_bars,
        save_model_quietly,
        save_revision,
    )
    from .models import load_model

    seed_everything(config.seed)
    with quiet_progress_bars():
        model, tokenizer = load_model(init[0], init[1], kind="causal-lm")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    settings = getattr(config, stage)
    steps = checkpoint_schedule(settings.steps, settings.checkpoint_every)
    save_revision(out, 0, model, tokenizer)
    callback = _checkpoint_callback(out, steps, tokenizer)
    start = time.perf_counter()
    if stage == "sft":
        rows = [{"prompt": r["prompt"], "completion": " " + r["answer"]} for r in data.train]
        args = _training_args(
            SFTConfig, settings, config, out, progress, use_gpu, max_length=config.max_length
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[callback],
        )
    elif stage == "dpo":
        args = _training_args(
            DPOConfig,
            settings,
            config,
            out,
            progress,
            use_gpu,
            beta=settings.beta,
            max_length=config.max_length,
        )
        with quiet_progress_bars():
            reference, _ = load_model(init[0], init[1], kind="causal-lm")
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=args,
            train_dataset=Dataset.from_list(dpo_pairs(data, config.seed)),
            processing_class=tokenizer,
            callbacks=[callback],
        )
    elif stage == "rl":
        args = _training_args(
            GRPOConfig,
            settings,
            config,
            out,
            progress,
            use_gpu,
            num_generations=settings.num_generations,
            max_completion_length=settings.max_completion_tokens,
            temperature=settings.temperature,
            beta=settings.kl_beta,
        )
        rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in data.train]
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=exact_match_reward,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[callback],
        )
    else:
        raise ValueError(f"Unknown stage {stage!r}; stages are {', '.join(STAGES)}.")
    if not progress:  # no per-log printing either (the history is kept in stage.json)
        from transformers.trainer_callback import PrinterCallback

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
        from .lm.checkpoints import list_revisions

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
    stage. ``num_threads`` sets torch's CPU threads while training (1 is fastest for the
    small LM, and keeps the result bit-for-bit reproducible). ``use_gpu`` trains on the GPU
    (for a hub base model in the paper profile); a GPU run is cached apart from CPU runs.
    """
    if use_gpu:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("use_gpu=True but torch sees no CUDA device.")
    if isinstance(config, str):
        if config not in POSTTRAIN_SETTINGS:
            raise ValueError(
                f"Unknown post-training setting {config!r}; known: {', '.join(POSTTRAIN_SETTINGS)}"
            )
        config = POSTTRAIN_SETTINGS[config]
    from .models import load_tokenizer

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
                    _train_stage(stage, init, config, id_data, entry.tmp, progress, use_gpu)
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


# --- measuring a checkpoint --------------------------------------------------------------------


def _left_padded(tokenizer, prompts: Sequence[str]):
    import torch

    enc = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    width = max(len(ids) for ids in enc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(enc), width), pad, dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for row, seq in enumerate(enc):
        if not seq:
            raise ValueError(f"Prompt {row} tokenizes to nothing.")
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 8,
    batch_size: int = 64,
    seed: int = 0,
) -> list[list[str]]:
    """``samples`` completions per prompt (greedy when ``temperature`` is 0, else sampled
    from the full softmax at that temperature, seeded), decoded up to the end-of-text token.
    Returns one list of completions per prompt."""
    import torch

    if not prompts:
        raise ValueError("generate_answers needs at least one prompt.")
    if samples < 1 or temperature < 0:
        raise ValueError(f"need samples >= 1 and temperature >= 0, got {samples}, {temperature}")
    if temperature == 0 and samples > 1:
        raise ValueError("greedy decoding (temperature 0) gives one answer per prompt.")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    expanded = [p for p in prompts for _ in range(samples)]
    out: list[str] = [""] * len(expanded)
    generator_seed = seed
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(expanded), batch_size):
            chunk = expanded[start : start + batch_size]
            ids, mask = _left_padded(tokenizer, chunk)
            torch.manual_seed(generator_seed + start)
            kwargs: dict[str, Any] = (
                {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature > 0
                else {"do_sample": False}
            )
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
                **kwargs,
            )
            new = gen[:, ids.shape[1] :]
            for row, tokens in enumerate(new.tolist()):
                if eos in tokens:
                    tokens = tokens[: tokens.index(eos)]
                out[start + row] = tokenizer.decode(tokens, skip_special_tokens=True)
    return [out[i * samples : (i + 1) * samples] for i in range(len(prompts))]


def answer_nll(
    model, tokenizer, rows: Sequence[dict[str, str]], *, batch_size: int = 64
) -> np.ndarray:
    """Negative log-likelihood (nats) of each row's answer given its prompt:
    ``-log p(" " + answer + <eos> | prompt)``, summed over the answer's tokens."""
    import torch

    if not rows:
        raise ValueError("answer_nll needs at least one row.")
    eos = tokenizer.eos_token_id
    pairs = []
    for row in rows:
        p = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        a = tokenizer(" " + row["answer"], add_special_tokens=False)["input_ids"] + [eos]
        pairs.append((p, a))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    result = np.empty(len(pairs))
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            width = max(len(p) + len(a) for p, a in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            target = torch.full_like(ids, -100)
            for row, (p, a) in enumerate(chunk):
                seq = p + a
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
                target[row, len(p) : len(seq)] = torch.tensor(a)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            labels = target[:, 1:]
            logp = torch.log_softmax(logits, -1)
            picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nll = -(picked * (labels != -100)).sum(1)
            result[start : start + len(chunk)] = nll.numpy()
    return result


def evaluate_model(
    model,
    tokenizer,
    id_rows: Sequence[dict[str, str]],
    ood_rows: Sequence[dict[str, str]],
    *,
    max_new_tokens: int = 8,
) -> dict[str, float]:
    """ID / OOD answer NLL (mean over rows) and greedy exact-match accuracy."""
    row: dict[str, float] = {}
    for name, rows in (("id", id_rows), ("ood", ood_rows)):
        row[f"{name}_nll"] = float(answer_nll(model, tokenizer, rows).mean())
        greedy = generate_answers(
            model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens
        )
        row[f"{name}_accuracy"] = float(
            np.mean(exact_match_reward([g[0] for g in greedy], [r["answer"] for r in rows]))
        )
    return row


def sample_correct_counts(
    model,
    tokenizer,
    rows: Sequence[dict[str, str]],
    *,
    n: int = 16,
    temperature: float = 1.0,
    max_new_tokens: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """How many of ``n`` sampled completions per row are exactly right (for pass@k)."""
    samples = generate_answers(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        samples=n,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    return np.array(
        [sum(exact_match_reward(s, [r["answer"]] * n)) for s, r in zip(samples, rows, strict=True)],
        dtype=int,
    )


@dataclass
class PosttrainMeasurements:
    """What :func:`measure_posttraining` returns."""

    # per (stage, step): rankme/alpha on the probe texts and on the ID prompts, LM loss on the
    # probe texts, ID / OOD answer NLL and greedy accuracy; `position` runs across stages
    trajectory: pd.DataFrame
    # pass@k for k = 1..n per checkpoint label ("after SFT", "after DPO", "RL step N", ...)
    pass_at_k: pd.DataFrame
    correct_counts: dict[str, list[int]]


def _stage_checkpoints(result: PosttrainResult) -> list[tuple[str, str, int]]:
    """(stage, revision, step) of every saved revision; a stage's step 0 is the previous
    stage's end, so it is listed once (under the earlier stage), except for SFT's step 0
    (the base model)."""
    from .lm.checkpoints import revision_step

    out = []
    for i, stage in enumerate(STAGES):
        for rev in result.revisions(stage):
            step = revision_step(rev)
            if i > 0 and step == 0:
                continue
            out.append((stage, rev, step))
    return out


def measure_posttraining(
    result: PosttrainResult,
    probe: Sequence[str],
    *,
    n_samples: int = 16,
    pass_at_k_points: Sequence[tuple[str, int | None]] | None = None,
    max_eval_rows: int | None = 200,
    progress: bool = True,
) -> PosttrainMeasurements:
    """Measure every saved checkpoint of a post-training run.

    - RankMe (covariance and singular variants) and alpha-ReQ of the final layer's
      last-token states, via :func:`repgeo_utils.lm.sweep_checkpoints`, on ``probe``
      (held-out running text, as for pretraining) and on the ID test prompts (the state that
      predicts the answer); the LM loss on ``probe``;
    - ID and OOD answer NLL and greedy accuracy (:func:`evaluate_model`) on up to
      ``max_eval_rows`` test rows of each task;
    - pass@k (k = 1..``n_samples``, temperature 1) on the ID test rows at
      ``pass_at_k_points``: (stage, step) pairs, step None = the stage's end. Default: the
      end of SFT, the end of DPO (= RL step 0), RL's checkpoint nearest half its steps and
      RL's end.

    The whole table is cached (key: the stage folders' keys, the probe texts, the settings).
    """
    from .cache import read_meta
    from .lm.checkpoints import quiet_progress_bars, revision_step
    from .lm.sweeps import sweep_checkpoints
    from .models import load_model

    if not probe:
        raise ValueError("measure_posttraining needs probe texts.")
    id_rows = result.id_data.test[:max_eval_rows]
    ood_rows = result.ood_data.test[:max_eval_rows]
    rl_revs = [revision_step(r) for r in result.revisions("rl")]
    if pass_at_k_points is None:  # RL's middle: the saved step nearest half its steps
        half = result.config.rl.steps / 2
        middle = min(rl_revs, key=lambda s: (abs(s - half), s)) if rl_revs else None
        pass_at_k_points = [("sft", None), ("dpo", None), ("rl", middle), ("rl", None)]
    points = []
    for stage, step in pass_at_k_points:
        if stage not in STAGES:
            raise ValueError(f"Unknown stage {stage!r} in pass_at_k_points.")
        steps = [revision_step(r) for r in result.revisions(stage)]
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ValueError(f"Stage {stage!r} has no checkpoint at step {step} ({steps}).")
        points.append((stage, int(step)))
    max_new = result.config.rl.max_completion_tokens
    key = {
        "stages": {s: read_meta(p)["key"] for s, p in result.stages.items()},
        "id_data": result.id_data.fingerprint(),
        "ood_data": result.ood_data.fingerprint(),  # the stages never see it: not in their keys
        "probe": key_hash({"probe": list(probe)}, 16),
        "n_samples": n_samples,
        "points": points,
        "max_eval_rows": max_eval_rows,
        "format": 1,
    }
    checkpoints = _stage_checkpoints(result)
    with cache_entry("posttrain-eval", "measurements", key) as entry:
        if not entry.exists:
            rows = []
            for position, (stage, rev, step) in enumerate(
                tqdm(checkpoints, desc="measure checkpoints", disable=not progress, leave=False)
            ):
                with quiet_progress_bars():
                    model, tokenizer = load_model(result.stages[stage], rev, kind="causal-lm")
                rows.append(
                    {
                        "position": position,
                        "stage": stage,
                        "step": step,
                        "revision": rev,
                        **evaluate_model(
                            model, tokenizer, id_rows, ood_rows, max_new_tokens=max_new
                        ),
                    }
                )
            counts: dict[str, list[int]] = {}
            for stage, step in points:
                with quiet_progress_bars():
                    model, tokenizer = load_model(
                        result.stages[stage], f"step{step}", kind="causal-lm"
                    )
                label = f"{stage}:{step}"
                counts[label] = sample_correct_counts(
                    model,
                    tokenizer,
                    id_rows,
                    n=n_samples,
                    max_new_tokens=max_new,
                    seed=result.config.seed,
                ).tolist()
            pd.DataFrame(rows).to_csv(entry.tmp / "evaluation.csv", index=False)
            (entry.tmp / "correct_counts.json").write_text(json.dumps(counts))
    evaluation = pd.read_csv(entry.path / "evaluation.csv")
    counts = json.loads((entry.path / "correct_counts.json").read_text())

    # spectral metrics (each revision cached by sweep_checkpoints)
    id_prompts = [r["prompt"] for r in id_rows]
    spectra = []
    for stage in STAGES:
        revs = [rev for s, rev, _ in checkpoints if s == stage]
        for name, texts in (("probe", probe), ("prompts", id_prompts)):
            sweep = sweep_checkpoints(result.stages[stage], revs, texts, progress=progress)
            m = sweep.metrics.assign(stage=stage)
            m = m[["stage", "revision", "loss", "rankme_covariance", "rankme_singular", "alpha"]]
            m = m.rename(
                columns={c: f"{c}_{name}" for c in m.columns if c not in ("stage", "revision")}
            )
            spectra.append((stage, name, m))
    merged = evaluation.copy()
    for name in ("probe", "prompts"):
        table = pd.concat([m for _, n, m in spectra if n == name], ignore_index=True)
        merged = merged.merge(table, on=["stage", "revision"], how="left")
    merged = merged.rename(columns={"loss_probe": "probe_loss"}).drop(
        columns=["loss_prompts"], errors="ignore"
    )
    curves = []
    for label, c in counts.items():
        curve = pass_at_k_curve(c, n_samples)
        stage, step = label.split(":")
        curves.append(
            curve.assign(
                stage=stage, step=int(step), checkpoint=_point_label(stage, int(step), result)
            )
        )
    return PosttrainMeasurements(merged, pd.concat(curves, ignore_index=True), counts)


def _point_label(stage: str, step: int, result: PosttrainResult) -> str:
    last = getattr(result.config, stage).steps
    if step == last:
        return f"after {STAGE_TITLES[stage]}"
    if step == 0:
        previous = STAGES[STAGES.index(stage) - 1] if stage != "sft" else None
        return f"after {STAGE_TITLES[previous]}" if previous else "base model"
    return f"{STAGE_TITLES[stage]} step {step}"


def solved_counts(correct_counts: dict[str, Sequence[int]], n: int) -> pd.DataFrame:
    """Per checkpoint: how many prompts no sample solved (0 of ``n``), how many every sample
    solved (``n`` of ``n``), and the mean share of correct samples (= pass@1). A policy that
    narrows moves prompts to both ends."""
    rows = []
    for label, counts in correct_counts.items():
        c = np.asarray(counts)
        rows.append(
            {
                "checkpoint": label,
                "prompts": len(c),
                f"solved 0/{n}": int((c == 0).sum()),
                f"solved {n}/{n}": int((c == n).sum()),
                "mean share correct": float(c.mean() / n),
            }
        )
    return pd.DataFrame(rows)


#: Relative changes smaller than this count as "no clear change" in :func:`stage_summary`.
DEAD_BAND = 0.02


def change_direction(change: float, start: float, dead_band: float = DEAD_BAND) -> str:
    """``"up"``, ``"down"`` or ``"no clear change"`` (a change of less than ``dead_band`` of
    the starting value's magnitude, or exactly zero)."""
    if change == 0 or (start and abs(change / start) < dead_band):
        return "no clear change"
    return "up" if change > 0 else "down"


def stage_summary(
    trajectory: pd.DataFrame, columns: Sequence[str], *, dead_band: float = DEAD_BAND
) -> pd.DataFrame:
    """Value of ``columns`` at the start and end of each stage (start = the previous stage's
    end), the change, the change relative to the start (NaN when the start is 0) and its
    direction (:func:`change_direction`)."""
    rows = []
    trajectory = trajectory.sort_values("position")
    start = trajectory.iloc[0]
    for stage in STAGES:
        part = trajectory[trajectory["stage"] == stage]
        if part.empty:
            continue
        end = part.iloc[-1]
        for col in columns:
            first, last = float(start[col]), float(end[col])
            rows.append(
                {
                    "stage": STAGE_TITLES[stage],
                    "measure": col,
                    "start": first,
                    "end": last,
                    "change": last - first,
                    "relative": (last - first) / abs(first) if first else float("nan"),
                    "direction": change_direction(last - first, first, dead_band),
                }
            )
        start = end
    return pd.DataFrame(rows)


__all__ = [
    "PROMPT_TASKS",
    "POSTTRAIN_SETTINGS",
    "STAGES",
    "DPOSettings",
    "PosttrainConfig",
    "PosttrainMeasurements",
    "PosttrainResult",
    "PromptData",
    "PromptTask",
    "RLSettings",
    "SFTSettings",
    "answer_nll",
    "build_prompt_data",
    "change_direction",
    "dpo_pairs",
    "evaluate_model",
    "exact_match_reward",
    "generate_answers",
    "measure_posttraining",
    "normalise_answer",
    "pass_at_k",
    "pass_at_k_curve",
    "posttrain",
    "sample_correct_counts",
    "solved_counts",
    "stage_summary",
]
