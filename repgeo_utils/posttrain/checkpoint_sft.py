"""The same SFT from successive pretraining checkpoints (paper 2, Fig 6B and Fig 14).

Paper 2 fine-tunes intermediate OLMo-2 checkpoints on one chat dataset and finds that with
more pretraining the in-distribution (ID) loss after SFT falls while the out-of-distribution
(OOD) loss rises: "overtrained" bases are more sensitive to distribution shift. Here every base
revision of a pretraining run gets the same SFT budget on one prompt task, and we measure the
answer loss on held-out rows of that task (ID) and of a task with the same answers but other
texts (OOD), before and after SFT, beside the base's RankMe and alpha-ReQ.

The default pair shares the answer format, so OOD is measured at all: **ID = BBC topic from the
headline**, **OOD = BBC topic from the first sentence of the article body** (same five answers,
same prompt template ``"Headline: ...\\nTopic:"``; the articles of the test rows are never
trained on). 95% of the article bodies are part of the pretraining corpus (without their
labels); :func:`bbc_topic_pair` counts how many test rows that holds for.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from .. import validate
from ..cache import cache_entry
from ..data import read_bbc
from ..lm.checkpoints import quiet_progress_bars, revision_step
from ..lm.training import torch_threads
from ..models import load_model, load_tokenizer, resolve_model
from .measures import evaluate_model
from .stages import PosttrainConfig, SFTSettings, _train_stage
from .tasks import PROMPT_TASKS, PromptData, _fit_prompt

log = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def first_sentence(text: str) -> str:
    """The first sentence of a text (up to the first ``.``, ``!`` or ``?`` followed by white
    space), white space collapsed."""
    flat = " ".join(str(text).split())
    return _SENTENCE_END.split(flat, maxsplit=1)[0] if flat else ""


@dataclass
class TopicPair:
    """ID and OOD prompt data with the same answers, and the article split they share."""

    id_data: PromptData
    ood_data: PromptData
    test_bodies_in_pretraining: int  # OOD test rows whose article body the LM was pretrained on


def bbc_topic_pair(
    tokenizer,
    *,
    max_prompt_tokens: int = 48,
    test_fraction: float = 0.1,
    max_test: int | None = 200,
    seed: int = 0,
    pretraining_texts: Sequence[str] | None = None,
) -> TopicPair:
    """BBC topic from the headline (ID) and from the first sentence of the body (OOD), split
    by article (seeded, stratified by topic): an article's headline and body are on the same
    side, so no OOD test article is ever trained on. ``pretraining_texts`` (the training
    documents of the pretraining corpus, when known) lets the result say how many OOD test
    bodies the LM saw in pretraining."""
    validate.fraction("test_fraction", test_fraction, open_low=True, open_high=True)
    both = read_bbc("both")
    heads, bodies = [], []
    for text in both["text"]:
        head, _, body = str(text).partition("\n")
        heads.append(head.strip())
        bodies.append(body.strip())
    frame = pd.DataFrame({"headline": heads, "body": bodies, "label": both["label"]})
    frame = frame[(frame["headline"] != "") & (frame["body"] != "")]
    frame = frame.drop_duplicates("headline").reset_index(drop=True)
    answers = sorted(frame["label"].unique())
    train_idx, test_idx = train_test_split(
        np.arange(len(frame)), test_size=test_fraction, random_state=seed, stratify=frame["label"]
    )
    task = PROMPT_TASKS["bbc-news"]

    def rows(indices: np.ndarray, column: str) -> list[dict[str, str]]:
        out = []
        for i in sorted(indices.tolist()):
            text = frame.at[i, column]
            text = first_sentence(text) if column == "body" else text
            prompt = _fit_prompt(tokenizer, task, text, max_prompt_tokens)
            if prompt is not None:
                out.append({"prompt": prompt, "answer": frame.at[i, "label"], "article": str(i)})
        return out

    test_ids = np.asarray(sorted(test_idx.tolist()))[: max_test or None]
    id_data = PromptData(
        "bbc-news", answers, rows(train_idx, "headline"), rows(test_ids, "headline")
    )
    ood_data = PromptData(
        "bbc-first-sentence", answers, rows(train_idx, "body"), rows(test_ids, "body")
    )
    seen = 0
    if pretraining_texts is not None:
        known = set(pretraining_texts)
        seen = sum(frame.at[int(r["article"]), "body"] in known for r in ood_data.test)
    return TopicPair(id_data, ood_data, seen)


@dataclass(frozen=True)
class CheckpointSFTSettings:
    """The SFT budget every base checkpoint gets, and the evaluation."""

    sft: SFTSettings = field(
        default_factory=lambda: SFTSettings(
            steps=200, batch_size=16, learning_rate=1e-3, checkpoint_every=1000
        )
    )
    max_prompt_tokens: int = 48
    max_length: int = 64
    max_test: int | None = 200  # test rows of each task scored
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.sft, SFTSettings):
            raise TypeError(f"sft must be an SFTSettings, got {type(self.sft).__name__}")
        validate.integer("max_prompt_tokens", self.max_prompt_tokens, minimum=4)
        validate.integer("max_length", self.max_length, minimum=self.max_prompt_tokens + 1)
        if self.max_test is not None:
            validate.positive_int("max_test", self.max_test)
        validate.non_negative_int("seed", self.seed)


def sft_from_checkpoints(
    model: str | Path,
    revisions: Sequence[str],
    settings: CheckpointSFTSettings | None = None,
    *,
    pretraining_texts: Sequence[str] | None = None,
    num_threads: int | None = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """SFT each ``revisions`` of ``model`` (a pretraining run folder) with the same budget on
    BBC topic from headlines, and measure ID (headline) and OOD (first sentence) answer NLL and
    greedy accuracy of the base and of the fine-tuned model. One cache entry per base under
    ``data/cache/checkpoint-sft/``; columns ``revision, step, id_nll_base, ood_nll_base,
    id_accuracy_base, ood_accuracy_base, id_nll, ood_nll, id_accuracy, ood_accuracy,
    seconds``."""
    settings = settings or CheckpointSFTSettings()
    if not revisions:
        raise ValueError("sft_from_checkpoints needs at least one revision.")
    tokenizer = load_tokenizer(str(model), revisions[0])
    pair = bbc_topic_pair(tokenizer, max_prompt_tokens=settings.max_prompt_tokens,
                          max_test=settings.max_test, seed=settings.seed,
                          pretraining_texts=pretraining_texts)  # fmt: skip
    rows = []
    with torch_threads(num_threads):
        for revision in tqdm(list(revisions), desc="SFT from checkpoints", disable=not progress,
                             leave=False):  # fmt: skip
            ref = resolve_model(model, revision)
            key = {
                "base": {**ref.as_key(), "fingerprint": ref.fingerprint()},
                "id": pair.id_data.fingerprint(),
                "ood": pair.ood_data.fingerprint(),
                "settings": asdict(settings),
                "format": 1,
            }
            with cache_entry("checkpoint-sft", f"sft-{revision}", key) as entry:
                if not entry.exists:
                    result = _sft_one(str(model), revision, pair, settings, entry.build_dir,
                                      progress)  # fmt: skip
                    (entry.build_dir / "result.json").write_text(json.dumps(result))
            result = json.loads((entry.path / "result.json").read_text())
            rows.append({"revision": revision, "step": revision_step(revision), **result})
    table = pd.DataFrame(rows)
    table.attrs["ood_test_bodies_in_pretraining"] = pair.test_bodies_in_pretraining
    table.attrs["ood_test_rows"] = len(pair.ood_data.test)
    return table


def _sft_one(
    model: str, revision: str, pair: TopicPair, settings: CheckpointSFTSettings, out: Path,
    progress: bool,
) -> dict[str, Any]:  # fmt: skip
    with quiet_progress_bars():
        base, tokenizer = load_model(model, revision, kind="causal-lm")
    before = evaluate_model(base, tokenizer, pair.id_data.test, pair.ood_data.test)
    config = PosttrainConfig(
        base_model=model,
        base_revision=revision,
        max_prompt_tokens=settings.max_prompt_tokens,
        max_length=settings.max_length,
        seed=settings.seed,
        sft=settings.sft,
    )
    folder = out / "sft"
    summary = _train_stage("sft", (model, revision), config, pair.id_data, folder, progress)
    with quiet_progress_bars():
        tuned, tokenizer = load_model(folder, None, kind="causal-lm")
    after = evaluate_model(tuned, tokenizer, pair.id_data.test, pair.ood_data.test)
    # keep the result, not the weights (the table is what is compared across bases)
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and path.suffix in (".safetensors", ".bin"):
            path.unlink()
    return {
        **{f"{k}_base": v for k, v in before.items()},
        **after,
        "seconds": float(summary["seconds"]),
    }


__all__ = [
    "CheckpointSFTSettings",
    "TopicPair",
    "bbc_topic_pair",
    "first_sentence",
    "sft_from_checkpoints",
]
