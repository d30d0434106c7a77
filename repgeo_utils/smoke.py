"""The paper profile's smoke run: tiny stand-ins for its hub models and data sets.

Nothing else executes the notebooks' ``PROFILE = "paper"`` branches on this machine (they need
bert-base, Pythia-160m and the paper's data from the hub, and a GPU), so
``python -m repgeo_utils.smoke build <folder>`` writes a *hub mirror* that
``$REPGEO_HUB_MIRROR`` points the package at (:func:`repgeo_utils.config.hub_mirror`): the
same hub ids, layouts, file formats, column names and label values as the real ones, at a size
a 2-core CPU runs in minutes. ``make smoke`` builds it (once; it is reused while
:data:`FIXTURE_VERSION` is unchanged) and runs ``make figures PROFILE=paper`` against it.

What the mirror holds:

- every hub BERT of :data:`repgeo_utils.models.MODELS` (``google-bert/bert-base-uncased`` and the
  four ``google/bert_uncased_L-*``): a randomly initialised BERT with :data:`BERT_LAYERS` layers
  and :data:`BERT_HIDDEN` dimensions, 512 positions, an uncased WordPiece vocabulary of the
  fixture texts' words. As on the hub, bert-base is a ``BertForMaskedLM`` checkpoint with
  ``tokenizer.json`` and a ``tokenizer_config.json`` (512 tokens), the Google BERTs
  ``BertForPreTraining`` checkpoints with a ``vocab.txt`` only (no tokenizer config, so no
  length limit of their own);
- ``EleutherAI/pythia-160m``: a 2-layer GPT-NeoX pretrained here with
  :func:`repgeo_utils.lm.pretrain` for :data:`PYTHIA_STEPS` steps, with every one of Pythia's
  154 revisions (:func:`~repgeo_utils.lm.pythia_revisions`): revision ``step<N>`` is the tiny
  run's last checkpoint at or before step ``N * PYTHIA_STEPS / 143000``, and the folder itself
  (``main``) is the last one. Like the hub's copy its weights are stored in float16, its
  config says 2,048 positions, its embedding matrices have more rows than the tokenizer has
  tokens (Pythia: 50,304 vs 50,277) and its tokenizer sets no padding token;
- the paper's data sets in their own formats: ``datasets/stanfordnlp/imdb`` (parquet files
  ``plain_text/{train,test,unsupervised}-00000-of-00001.parquet``, columns ``text`` and
  ``label`` 0/1, -1 in the unlabelled split, some reviews longer than 512 tokens, HTML line
  breaks), ``datasets/heegyu/news-category-dataset`` (``data/train-00000-of-00001.parquet``,
  columns ``link, headline, category, short_description, authors, date``, upper-case
  categories, including ones the task drops) and ``datasets/spotify/reviews.csv`` (the Kaggle
  export's columns ``Time_submitted, Review, Rating, Total_thumbsup, Reply``, ratings 1-5, one
  review left empty). The texts are made from class-specific word lists, so a model can learn
  the labels.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers import models as tokenizer_models
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertModel,
    BertTokenizer,
    GPTNeoXForCausalLM,
    PreTrainedModel,
)

from .lm import PretrainConfig, pretrain, pythia_revisions
from .lm.checkpoints import checkpoint_schedule, quiet_progress_bars, revision_step
from .models import MODELS, quiet_hf

log = logging.getLogger(__name__)

#: Bumped whenever the builder writes something different; a mirror of another version is
#: rebuilt by ``build``.
FIXTURE_VERSION = 1
#: The file that marks a finished mirror (written last) and records its version.
STAMP = "smoke-fixtures.json"

#: Layers of each tiny BERT: bert-base gets four, so that the SAE grid's early, middle and
#: late layers (1, 2, 4) are three different layers, as bert-base's 3, 6 and 12; the others two.
BERT_LAYERS = {"bert-base": 4, "bert-medium": 2, "bert-small": 2, "bert-mini": 2, "bert-tiny": 2}
#: So narrow that notebooks 03-04 run with the ``smoke`` SAE grid (64 latents; ``make smoke``
#: passes ``GRID=smoke``): the paper grid's 1,024 latents do not train on 32 dimensions.
BERT_HIDDEN = 32
#: The Pythia hub id the notebooks' paper branches use (06: PYTHIA_MODEL, 08: PAPER_BASE_MODEL).
PYTHIA_ID = "EleutherAI/pythia-160m"
#: Pythia's last step and the tiny run's: Pythia's step N is the tiny run's N * 1430 / 143000.
PYTHIA_LAST_STEP = 143_000
PYTHIA_STEPS = 1430
#: The tiny GPT-NeoX (quick setting's shape, a smaller corpus, fewer steps).
PYTHIA_CONFIG = PretrainConfig(steps=PYTHIA_STEPS, checkpoint_every=10, max_documents=400)
#: Extra embedding rows beyond the tokenizer's tokens (Pythia-160m: 50,304 - 50,277 = 27).
PYTHIA_EXTRA_ROWS = 64
PYTHIA_POSITIONS = 2048

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# --- tiny BERTs ------------------------------------------------------------------------------


def wordpiece_vocab(words: Iterable[str]) -> list[str]:
    """An uncased WordPiece vocabulary: BERT's special tokens, ``words`` (lower-cased, sorted),
    then every letter and digit alone and as a ``##`` continuation, so that any word of
    letters and digits tokenizes without ``[UNK]``."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    known = sorted({w.lower() for w in words})
    return list(dict.fromkeys([*BERT_SPECIALS, *known, *chars, *("##" + c for c in chars)]))


def wordpiece_tokenizer(vocab: Sequence[str], *, model_max_length: int | None = None):
    """A fast ``BertTokenizer`` (transformers 5: the ``tokenizers``-backed one) over ``vocab`` (lower-casing, BERT's pre-tokenizer,
    ``[CLS] text [SEP]``)."""
    ids = {w: i for i, w in enumerate(vocab)}
    wordpiece = Tokenizer(tokenizer_models.WordPiece(ids, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    wordpiece.decoder = decoders.WordPiece()
    extra: dict[str, Any] = (
        {} if model_max_length is None else {"model_max_length": model_max_length}
    )
    return BertTokenizer(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=True,
        **extra,
    )


def save_tiny_bert(
    folder: Path,
    words: Iterable[str],
    *,
    layers: int = 2,
    hidden: int = 16,
    max_positions: int = 64,
    model_class: type[PreTrainedModel] = BertModel,
    vocab_only: bool = False,
    model_max_length: int | None = None,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised BERT (seeded) in the hub's layout: config, safetensors and
    a WordPiece tokenizer over ``words`` (:func:`wordpiece_vocab`). ``model_class`` picks the
    checkpoint's layout (``BertModel``; ``BertForMaskedLM`` or ``BertForPreTraining`` store the
    encoder under ``bert.`` with the pretraining heads). ``vocab_only`` writes the tokenizer as
    ``vocab.txt`` alone (as the Google BERT repositories do), else ``tokenizer.json`` and its
    config too (with ``model_max_length`` when given)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = wordpiece_vocab(words)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(seed)
    with quiet_hf():
        model_class(config).save_pretrained(folder)
    if vocab_only:
        (folder / "vocab.txt").write_text("".join(f"{w}\n" for w in vocab), encoding="utf-8")
    else:
        wordpiece_tokenizer(vocab, model_max_length=model_max_length).save_pretrained(folder)
    return folder


def build_berts(mirror: Path, words: Sequence[str]) -> None:
    """Every hub BERT of the registry, in ``mirror/<hub id>/``."""
    for key, spec in MODELS.items():
        if spec.source != "hub":
            continue
        base = key == "bert-base"
        save_tiny_bert(
            mirror / spec.location,
            words,
            layers=BERT_LAYERS[key],
            hidden=BERT_HIDDEN,
            max_positions=512,
            model_class=BertForMaskedLM if base else BertForPreTraining,
            vocab_only=not base,
            model_max_length=512 if base else None,
            seed=len(key),
        )


# --- tiny Pythia -----------------------------------------------------------------------------


def pythia_step_map(tiny_steps: Sequence[int]) -> dict[str, int]:
    """Pythia revision name -> the tiny run's checkpoint that stands for it: the last one at or
    before ``N * PYTHIA_STEPS / PYTHIA_LAST_STEP``."""
    saved = np.array(sorted(tiny_steps))
    out = {}
    for revision in pythia_revisions(PYTHIA_LAST_STEP):
        step = revision_step(revision)
        assert step is not None
        scaled = step * PYTHIA_STEPS / PYTHIA_LAST_STEP
        out[revision] = int(saved[np.searchsorted(saved, scaled, side="right") - 1])
    return out


def _as_pythia(source: Path, target: Path) -> None:
    """Re-save the tiny run's checkpoint ``source`` the way the hub stores Pythia: float16
    weights, 2,048 positions in the config, extra embedding rows, no pad token."""
    with quiet_hf(), quiet_progress_bars():
        model = GPTNeoXForCausalLM.from_pretrained(source, dtype=torch.float32)
        tokenizer = _tokenizer_without_pad(source)
        model.resize_token_embeddings(len(tokenizer) + PYTHIA_EXTRA_ROWS, mean_resizing=False)
        model.config.max_position_embeddings = PYTHIA_POSITIONS
        model.config.pad_token_id = None
        model = model.half()
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)


def _tokenizer_without_pad(source: Path):
    """The run's tokenizer with no padding token set (Pythia's tokenizer sets none)."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.pad_token = None
    return tokenizer


def build_pythia(mirror: Path, work: Path) -> None:
    """Pretrain the tiny GPT-NeoX (cached under ``work``) and lay it out as
    ``mirror/EleutherAI/pythia-160m`` with all of Pythia's revisions."""
    run = pretrain(PYTHIA_CONFIG, root=work, num_threads=None, progress=False)
    tiny = checkpoint_schedule(PYTHIA_CONFIG.steps, PYTHIA_CONFIG.checkpoint_every)
    mapping = pythia_step_map(tiny)
    converted = work / "converted"
    for step in sorted(set(mapping.values())):
        _as_pythia(run.run_folder / "revisions" / f"step{step}", converted / f"step{step}")
    root = mirror / PYTHIA_ID
    for revision, step in mapping.items():
        _link_tree(converted / f"step{step}", root / "revisions" / revision)
    _link_tree(converted / f"step{PYTHIA_STEPS}", root)


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or, across file systems, copy) the files of ``source`` into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copy2(path, target / path.name)


# --- the paper's data sets -------------------------------------------------------------------

_FILLER = (
    "the it this that and but so then with of to in on for at as was is were be really just "
    "quite also still even"
).split()

IMDB_WORDS = {
    0: "terrible awful boring dull predictable bad worst waste disappointing weak clumsy "
    "tedious lifeless painful forgettable".split(),
    1: "brilliant wonderful great superb moving best masterpiece beautiful gripping charming "
    "delightful clever memorable stunning excellent".split(),
}
IMDB_TOPICS = (
    "film movie plot acting director cast script ending soundtrack camera scenes story dialogue "
    "performance characters sequel"
).split()

NEWS_WORDS = {
    "WELLNESS": "sleep stress yoga health habits anxiety meditation exercise mind body".split(),
    "SPORTS": "team game season coach playoffs score league player championship win".split(),
    "ENTERTAINMENT": "film star album actor singer premiere trailer oscars concert show".split(),
    "POLITICS": "senate vote election president congress campaign bill governor policy".split(),
    "FOOD & DRINK": "recipe dinner cookies wine chef kitchen pasta baking coffee salad".split(),
    # categories outside the paper's five: the task drops these rows
    "TRAVEL": "flight hotel beach trip island passport airport cruise".split(),
    "TECH": "app phone software startup robot internet chip gadget".split(),
}

SPOTIFY_WORDS = {
    1: "crashes unusable garbage terrible deleted refund worst broken".split(),
    2: "annoying ads glitchy slow disappointing buggy worse frustrating".split(),
    3: "okay average fine decent mixed sometimes meh alright".split(),
    4: "good nice smooth useful enjoy solid handy pleasant".split(),
    5: "amazing perfect love excellent awesome fantastic best flawless".split(),
}
SPOTIFY_TOPICS = "app music playlist songs shuffle update premium podcast offline ads".split()


def _sentence(rng: np.random.Generator, class_words: Sequence[str], topics: Sequence[str]) -> str:
    words = [
        str(rng.choice(class_words)) if rng.random() < 0.35 else
        str(rng.choice(topics)) if rng.random() < 0.5 else str(rng.choice(_FILLER))
        for _ in range(int(rng.integers(6, 14)))
    ]  # fmt: skip
    return " ".join(words).capitalize() + "."


def imdb_frame(n: int, rng: np.random.Generator, *, label: int | None = None) -> pd.DataFrame:
    """``n`` IMDb-like reviews (``text``, ``label``): several sentences with HTML line breaks,
    every tenth one long (past 512 word pieces). ``label`` None: balanced 0/1; -1 marks the
    unlabelled split."""
    rows = []
    for i in range(n):
        y = i % 2 if label is None else label
        words = IMDB_WORDS[y if y in IMDB_WORDS else int(rng.integers(2))]
        sentences = int(rng.integers(30, 45)) if i % 10 == 0 else int(rng.integers(2, 6))
        text = " ".join(_sentence(rng, words, IMDB_TOPICS) for _ in range(sentences))
        rows.append((text.replace(". ", ". <br /><br />", 1), y))
    return pd.DataFrame(rows, columns=["text", "label"])


def news_frame(per_class: int, rng: np.random.Generator) -> pd.DataFrame:
    """HuffPost News Category rows in the hub copy's columns, ``per_class`` per category."""
    rows = []
    for category, words in NEWS_WORDS.items():
        n = per_class if category in ("TRAVEL", "TECH") else 3 * per_class
        for i in range(n):
            headline = _sentence(rng, words, _FILLER[:8]).rstrip(".")
            rows.append(
                {
                    "link": f"https://www.huffpost.com/entry/smoke-{category.lower()}-{i}",
                    "headline": headline.title(),
                    "category": category,
                    "short_description": _sentence(rng, words, _FILLER),
                    "authors": "Smoke Fixture",
                    "date": f"2022-0{1 + i % 9}-1{i % 10}",
                }
            )
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def spotify_frame(per_rating: int, rng: np.random.Generator) -> pd.DataFrame:
    """Kaggle "Spotify App Reviews" rows (its five columns), ``per_rating`` per star rating,
    and one row whose review is empty."""
    rows = []
    for rating, words in SPOTIFY_WORDS.items():
        for i in range(per_rating):
            review = " ".join(_sentence(rng, words, SPOTIFY_TOPICS) for _ in range(1 + i % 3))
            rows.append((f"2022-07-09 {i % 24:02d}:00:00", review, rating, i % 7, ""))
    rows.append(("2022-07-10 00:00:00", "", 3, 0, ""))
    columns = ["Time_submitted", "Review", "Rating", "Total_thumbsup", "Reply"]
    return pd.DataFrame(rows, columns=columns).sample(frac=1.0, random_state=0)


def build_datasets(mirror: Path, seed: int = 0) -> list[str]:
    """Write the three data sets under ``mirror/datasets/``; returns every text written (the
    BERTs' vocabulary is made from their words)."""
    rng = np.random.default_rng(seed)
    imdb = mirror / "datasets" / "stanfordnlp" / "imdb" / "plain_text"
    imdb.mkdir(parents=True, exist_ok=True)
    parts = {
        "train": imdb_frame(100, rng),
        "test": imdb_frame(100, rng),
        "unsupervised": imdb_frame(20, rng, label=-1),
    }
    for split, frame in parts.items():
        frame.to_parquet(imdb / f"{split}-00000-of-00001.parquet", index=False)
    news_folder = mirror / "datasets" / "heegyu" / "news-category-dataset" / "data"
    news_folder.mkdir(parents=True, exist_ok=True)
    news = news_frame(20, rng)
    news.to_parquet(news_folder / "train-00000-of-00001.parquet", index=False)
    spotify_folder = mirror / "datasets" / "spotify"
    spotify_folder.mkdir(parents=True, exist_ok=True)
    spotify = spotify_frame(40, rng)
    spotify.to_csv(spotify_folder / "reviews.csv", index=False)
    return [
        *(t for frame in parts.values() for t in frame["text"]),
        *news["headline"],
        *news["short_description"],
        *spotify["Review"],
    ]


def _words(texts: Iterable[str]) -> set[str]:
    """The words of ``texts`` as BERT's pre-tokenizer splits them (letters and digits)."""
    out: set[str] = set()
    for text in texts:
        out.update("".join(c if c.isalnum() else " " for c in text.lower()).split())
    return out


# --- the whole mirror ------------------------------------------------------------------------


def is_built(folder: str | Path) -> bool:
    """True when ``folder`` holds a finished mirror of this :data:`FIXTURE_VERSION`."""
    try:
        stamp = json.loads((Path(folder) / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return stamp.get("version") == FIXTURE_VERSION


def build(folder: str | Path, *, force: bool = False) -> Path:
    """Write the smoke run's hub mirror to ``folder`` (reused when already built with this
    :data:`FIXTURE_VERSION`, unless ``force``). Built in a temporary folder beside it and
    renamed into place, so a killed build leaves no half mirror."""
    folder = Path(folder).absolute()
    if is_built(folder) and not force:
        log.info("smoke fixtures: %s is up to date", folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        texts = build_datasets(tmp)
        build_berts(tmp, sorted(_words(texts)))
        with tempfile.TemporaryDirectory(dir=folder.parent) as work:
            build_pythia(tmp, Path(work))
        seconds = time.perf_counter() - start
        stamp = {"version": FIXTURE_VERSION, "seconds": round(seconds, 1)}
        (tmp / STAMP).write_text(json.dumps(stamp, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("smoke fixtures: built %s in %.0f s", folder, time.perf_counter() - start)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m repgeo_utils.smoke",
        description="Tiny stand-ins for the paper profile's hub models and data sets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="write the hub mirror (REPGEO_HUB_MIRROR) to FOLDER")
    cmd.add_argument("folder")
    cmd.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    built = build(args.folder, force=args.force)
    print(f"hub mirror ready: REPGEO_HUB_MIRROR={built}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
