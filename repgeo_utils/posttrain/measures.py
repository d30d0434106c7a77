"""What each post-training checkpoint does: pass@k (unbiased estimator), generation, answer
NLL, greedy accuracy, RankMe / alpha-ReQ over every saved checkpoint
(:func:`measure_posttraining`), and the start -> end change of each stage
(:func:`stage_summary`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..cache import cache_entry, key_hash, read_meta
from ..lm.checkpoints import quiet_progress_bars, revision_step
from ..lm.sweeps import sweep_checkpoints
from ..models import load_model
from .stages import STAGE_TITLES, STAGES, PosttrainResult
from .tasks import exact_match_reward

log = logging.getLogger(__name__)


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


# --- measuring a checkpoint --------------------------------------------------------------------


def _left_padded(tokenizer, prompts: Sequence[str]):
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
            for i, (p, a) in enumerate(chunk):
                seq = p + a
                ids[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
                target[i, len(p) : len(seq)] = torch.tensor(a)
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
    out = []
    for i, stage in enumerate(STAGES):
        for rev, step in _saved_steps(result, stage):
            if i > 0 and step == 0:
                continue
            out.append((stage, rev, step))
    return out


def _saved_steps(result: PosttrainResult, stage: str) -> list[tuple[str, int]]:
    """(revision, step) of a stage's saved revisions, in step order."""
    out = []
    for rev in result.revisions(stage):
        step = revision_step(rev)
        if step is not None:  # list_revisions lists step<N> folders only
            out.append((rev, step))
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
    if not probe:
        raise ValueError("measure_posttraining needs probe texts.")
    id_rows = result.id_data.test[:max_eval_rows]
    ood_rows = result.ood_data.test[:max_eval_rows]
    points = _pass_at_k_points(result, pass_at_k_points)
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
            _evaluate_checkpoints(
                result, checkpoints, points, id_rows, ood_rows, n_samples, entry.build_dir, progress
            )
    evaluation = pd.read_csv(entry.path / "evaluation.csv")
    counts = json.loads((entry.path / "correct_counts.json").read_text())
    id_prompts = [r["prompt"] for r in id_rows]
    merged = evaluation.copy()
    for name, texts in (("probe", probe), ("prompts", id_prompts)):
        table = _spectral_table(result, checkpoints, name, texts, progress)
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


def _pass_at_k_points(
    result: PosttrainResult, requested: Sequence[tuple[str, int | None]] | None
) -> list[tuple[str, int]]:
    """The (stage, step) checkpoints of pass@k, checked against the saved revisions. Default:
    the end of SFT, the end of DPO, RL's saved step nearest half its steps and RL's end."""
    if requested is None:
        rl_revs = [step for _, step in _saved_steps(result, "rl")]
        half = result.config.rl.steps / 2
        middle = min(rl_revs, key=lambda s: (abs(s - half), s)) if rl_revs else None
        requested = [("sft", None), ("dpo", None), ("rl", middle), ("rl", None)]
    points = []
    for stage, step in requested:
        if stage not in STAGES:
            raise ValueError(f"Unknown stage {stage!r} in pass_at_k_points.")
        steps = [s for _, s in _saved_steps(result, stage)]
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ValueError(f"Stage {stage!r} has no checkpoint at step {step} ({steps}).")
        points.append((stage, int(step)))
    return points


def _evaluate_checkpoints(
    result: PosttrainResult,
    checkpoints: list[tuple[str, str, int]],
    points: list[tuple[str, int]],
    id_rows: Sequence[dict[str, str]],
    ood_rows: Sequence[dict[str, str]],
    n_samples: int,
    out: Path,
    progress: bool,
) -> None:
    """Write ``evaluation.csv`` (answer NLL and greedy accuracy of every checkpoint) and
    ``correct_counts.json`` (correct samples per ID prompt at each pass@k point) into ``out``."""
    max_new = result.config.rl.max_completion_tokens
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
                **evaluate_model(model, tokenizer, id_rows, ood_rows, max_new_tokens=max_new),
            }
        )
    counts: dict[str, list[int]] = {}
    for stage, step in points:
        with quiet_progress_bars():
            model, tokenizer = load_model(result.stages[stage], f"step{step}", kind="causal-lm")
        counts[f"{stage}:{step}"] = sample_correct_counts(
            model,
            tokenizer,
            id_rows,
            n=n_samples,
            max_new_tokens=max_new,
            seed=result.config.seed,
        ).tolist()
    pd.DataFrame(rows).to_csv(out / "evaluation.csv", index=False)
    (out / "correct_counts.json").write_text(json.dumps(counts))


def _spectral_table(
    result: PosttrainResult,
    checkpoints: list[tuple[str, str, int]],
    name: str,
    texts: Sequence[str],
    progress: bool,
) -> pd.DataFrame:
    """Loss, RankMe and alpha on ``texts`` of every checkpoint (each revision cached by
    :func:`~repgeo_utils.lm.sweep_checkpoints`), columns suffixed with ``_<name>``."""
    tables = []
    for stage in STAGES:
        revs = [rev for s, rev, _ in checkpoints if s == stage]
        sweep = sweep_checkpoints(result.stages[stage], revs, texts, progress=progress)
        if sweep.metrics is None:  # spectral_metrics is on by default
            raise RuntimeError("The checkpoint sweep returned no metrics table.")
        m = sweep.metrics.assign(stage=stage)
        m = m[["stage", "revision", "loss", "rankme_covariance", "rankme_singular", "alpha"]]
        tables.append(
            m.rename(
                columns={c: f"{c}_{name}" for c in m.columns if c not in ("stage", "revision")}
            )
        )
    return pd.concat(tables, ignore_index=True)


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
