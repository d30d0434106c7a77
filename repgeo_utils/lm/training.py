"""Pretraining a small causal LM from scratch, with checkpoints that load like Pythia's.

Paper 2 follows RankMe and alpha-ReQ of last-token representations over Pythia's pretraining
checkpoints (hub revisions ``step0``, ``step1``, ``step2``, ``step4``, ..., ``step512``,
``step1000``, ...). No causal LM with checkpoints installs offline, so :func:`pretrain` makes
one: the corpus and tokenizer of :mod:`~repgeo_utils.lm.corpus`, the model and optimizer of
:mod:`~repgeo_utils.lm.model`, trained from a seeded initialisation with AdamW, linear warmup
then (optionally) cosine decay and gradient clipping; resumable, because the batch of every step
is a pure function of (seed, step) and the optimizer state is saved with each checkpoint.
Checkpoints go to ``<run folder>/revisions/step<N>/`` (:mod:`~repgeo_utils.lm.checkpoints`).

A run folder is ``data/cache/pretrain/<name>-<hash>/`` where the hash digests the whole
:class:`~repgeo_utils.lm.model.PretrainConfig`. It counts as complete only once its
``meta.json`` (written last, atomically) matches the config; until then it holds the revisions
saved so far and ``state/resume.pt``, from which a rerun continues and reaches the same weights
bit for bit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import META, entry_path, entry_problem, is_complete, quarantine, seal
from ..config import seed_everything
from .checkpoints import (
    atomic_write_json,
    checkpoint_schedule,
    damaged_revisions,
    list_revisions,
    save_model_quietly,
    save_revision,
)
from .corpus import PreparedCorpus, TokenBatches, prepare_corpus
from .model import (
    PretrainConfig,
    build_model,
    count_parameters,
    make_optimizer,
    retain_freed_memory,
    train_step,
)

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns."""

    run_folder: Path
    config: PretrainConfig
    complete: bool
    revisions: list[str]  # saved so far, in step order
    train_log: list[dict[str, float]]  # per step: step, loss, lr, epoch
    tokens_per_second: float | None  # of the steps trained in this call (None if none were)
    holdout_texts: list[str]
    parameters: int = 0


def run_folder(config: PretrainConfig, root: Path | None = None) -> Path:
    """Where the run of ``config`` lives (whether or not it exists yet)."""
    return entry_path("pretrain", config.run_name(), config.run_key(), root)


def is_run_complete(folder: Path, config: PretrainConfig | None = None) -> bool:
    """True only for a finished run: its ``meta.json`` exists (it is written last) and, when
    ``config`` is given, records that config."""
    folder = Path(folder)
    if config is not None:
        return is_complete(folder, config.run_key())
    try:
        return bool(json.loads((folder / META).read_text()).get("complete"))
    except (OSError, json.JSONDecodeError):
        return False


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _save_state(
    folder: Path,
    step: int,
    model,
    optimizer,
    config: PretrainConfig,
    train_log: list[dict[str, float]],
) -> None:
    state_dir = folder / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".tmp-resume-{os.getpid()}.pt"
    torch.save(
        {
            "step": step,
            "run_key": config.run_key(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(),
            "train_log": train_log,
        },
        tmp,
    )
    os.replace(tmp, state_dir / "resume.pt")


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Within the block torch uses ``num_threads`` CPU threads (None: leave them as they are);
    the previous number is restored on leaving, also on an exception."""
    if num_threads is None:
        yield
        return
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1 or None, got {num_threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretrain(
    config: PretrainConfig,
    *,
    root: Path | None = None,
    stop_at_step: int | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Pretrain the model of ``config`` (or finish, or reuse, the run already in the cache).

    - A complete run with the same config is reused as it is.
    - An incomplete one (killed, or stopped with ``stop_at_step``) continues from its last
      saved state; because every batch is a pure function of (seed, step) and the optimizer
      and RNG states are restored, the result is the same as an uninterrupted run.
    - ``stop_at_step`` trains only up to that step, saves the state and returns an incomplete
      run (``complete=False``); a later call continues it.

    Checkpoints go to ``<run folder>/revisions/step<N>/`` on :func:`checkpoint_schedule`; on
    completion the final weights are also written to the run folder itself (the hub's "main")
    with ``train_log.json``, then ``meta.json``, last, marks the run complete.
    ``num_threads`` sets torch's CPU threads for the run and restores them afterwards (None
    leaves them as they are); ``benchmarks/results/pretrain.json`` has the tokens/s of each
    setting on one and two threads. The notebooks train on one thread, because another thread
    count changes the order of floating-point sums: weights then agree only to round-off (about
    1e-4 after 200 steps), and bit-for-bit resumes need the same thread count. Training first
    calls :func:`~repgeo_utils.lm.model.retain_freed_memory` (same bits, fewer page faults).
    """
    if stop_at_step is not None and not 0 <= stop_at_step <= config.steps:
        raise ValueError(f"stop_at_step must be in [0, {config.steps}], got {stop_at_step}")
    with torch_threads(num_threads):
        folder = run_folder(config, root)
        data = prepare_corpus(config, root=root)
        if is_run_complete(folder, config):
            log.info("pretraining run found complete in the cache: %s", folder)
            saved = json.loads((folder / "train_log.json").read_text())
            return PretrainResult(
                folder,
                config,
                True,
                list_revisions(folder),
                saved["log"],
                None,
                data.holdout_texts,
                int(saved.get("parameters", 0)),
            )
        problem = entry_problem(folder, config.run_key())
        if problem == "other key":  # a hash collision or a hand-edited meta.json
            raise RuntimeError(
                f"{folder} holds a run whose meta.json does not match this config; remove the "
                "folder (it is a cache entry) and run again."
            )
        if problem not in (None, "absent"):  # a finished run whose files changed: set aside
            quarantine(folder, str(problem))
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "run.json", {"key": config.run_key(), "complete": False})
        return _train_run(folder, config, data, stop_at_step, progress)


def _train_run(
    folder: Path,
    config: PretrainConfig,
    data: PreparedCorpus,
    stop_at_step: int | None,
    progress: bool,
) -> PretrainResult:
    """Build (or restore) the model in ``folder`` and train it to ``stop_at_step`` or the end."""
    retain_freed_memory()  # same bits, about 10% faster steps (see its docstring)
    tokenizer = data.load_tokenizer()
    seed_everything(config.seed)
    model = build_model(config, vocab_size=len(tokenizer))
    optimizer = make_optimizer(model, config)
    batches = TokenBatches(data.train_ids, config.context_length, config.batch_size, config.seed)
    schedule = checkpoint_schedule(config.steps, config.checkpoint_every)
    step, train_log = _restore(folder, config, model, optimizer)
    n_params = count_parameters(model)
    log.info(
        "pretraining %s: %d parameters, %d tokens per step, %d steps (%.2f epochs of %d "
        "tokens), checkpoints at %d steps",
        folder.name,
        n_params,
        config.tokens_per_step,
        config.steps,
        batches.epoch_of(config.steps),
        len(data.train_ids),
        len(schedule),
    )
    if step == 0 and 0 in schedule and "step0" not in list_revisions(folder):
        save_revision(folder, 0, model, tokenizer)
    target = config.steps if stop_at_step is None else stop_at_step
    step, tokens_per_second = _train_steps(
        folder, config, model, optimizer, tokenizer, batches, set(schedule), step, target,
        train_log, progress,
    )  # fmt: skip
    if step < config.steps:  # stopped early on request: save the state to resume from
        _save_state(folder, step, model, optimizer, config, train_log)
        complete = False
    else:
        _finish(folder, config, model, tokenizer, train_log, n_params, data)
        complete = True
    return PretrainResult(
        folder,
        config,
        complete,
        list_revisions(folder),
        train_log,
        tokens_per_second,
        data.holdout_texts,
        n_params,
    )


def _restore(folder: Path, config: PretrainConfig, model, optimizer) -> tuple[int, list]:
    """``(step, train_log)`` to continue from: the saved state of an interrupted run (model,
    optimizer and RNG states restored in place), else ``(0, [])``."""
    state_path = folder / "state" / "resume.pt"
    damaged = damaged_revisions(folder)
    if state_path.is_file() and damaged:
        log.warning(
            "%s: saved revisions %s are damaged; training again from step 0", folder, damaged
        )
        shutil.rmtree(folder / "revisions", ignore_errors=True)
        _set_aside(state_path, "a saved revision is damaged")
    if state_path.is_file():
        try:
            state = torch.load(state_path, weights_only=False)
        except Exception as err:  # truncated or overwritten: unusable, never fatal
            _set_aside(state_path, f"cannot be read: {type(err).__name__}: {err}")
            shutil.rmtree(folder / "revisions", ignore_errors=True)
            return 0, []
        if state.get("run_key") != config.run_key():
            raise RuntimeError(f"{state_path} was written by another config; remove {folder}.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        log.info("resuming %s at step %d of %d", folder.name, state["step"], config.steps)
        return int(state["step"]), list(state["train_log"])
    if list_revisions(folder):
        log.warning("%s has revisions but no saved state; starting again from step 0", folder)
    return 0, []


def _set_aside(path: Path, problem: str) -> None:
    """Move an unusable resume state next to itself (``*.damaged-<time>``) and say so."""
    target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    log.warning("%s %s: moved to %s; training again from step 0", path, problem, target)


def _train_steps(
    folder: Path,
    config: PretrainConfig,
    model,
    optimizer,
    tokenizer,
    batches: TokenBatches,
    checkpoints: set[int],
    step: int,
    target: int,
    train_log: list[dict[str, float]],
    progress: bool,
) -> tuple[int, float | None]:
    """Train from ``step`` to ``target``, appending to ``train_log`` and saving the scheduled
    revisions (with the resume state); returns the step reached and the tokens/s."""
    model.train()
    trained_tokens, start = 0, time.perf_counter()
    bar = tqdm(
        total=target,
        initial=step,
        desc=f"pretrain {folder.name[:40]}",
        disable=not progress,
        leave=False,
    )
    while step < target:
        lr = config.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        input_ids = batches.batch(step)
        loss = train_step(model, optimizer, input_ids, config.grad_clip)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"Loss became {loss} at step {step}; lower the learning rate "
                f"({config.learning_rate}) or enable gradient clipping."
            )
        step += 1
        trained_tokens += input_ids.numel()
        train_log.append({"step": step, "loss": loss, "lr": lr, "epoch": batches.epoch_of(step)})
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
        if step in checkpoints:
            save_revision(folder, step, model, tokenizer)
            if step < config.steps:
                _save_state(folder, step, model, optimizer, config, train_log)
    bar.close()
    elapsed = time.perf_counter() - start
    tokens_per_second = trained_tokens / elapsed if trained_tokens else None
    if tokens_per_second:
        log.info("trained %d tokens at %.0f tokens/s", trained_tokens, tokens_per_second)
    return step, tokens_per_second


def _finish(
    folder: Path,
    config: PretrainConfig,
    model,
    tokenizer,
    train_log: list[dict[str, float]],
    n_params: int,
    data: PreparedCorpus,
) -> None:
    """Write the final weights ("main"), the log and, last, ``meta.json``: the run is complete."""
    model.eval()
    save_model_quietly(model, tokenizer, folder)
    atomic_write_json(folder / "train_log.json", {"log": train_log, "parameters": n_params})
    shutil.rmtree(folder / "state", ignore_errors=True)
    (folder / "run.json").unlink(missing_ok=True)
    seal(  # meta.json with every file's size and digest, last: the run is complete
        folder,
        {
            "key": config.run_key(),
            "complete": True,
            "parameters": n_params,
            "revisions": list_revisions(folder),
            "corpus": str(data.path),
            "train_tokens": int(len(data.train_ids)),
        },
    )
    log.info("pretraining complete: %s", folder)
