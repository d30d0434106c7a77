"""Bad input is refused at the call (issue 10, part 4).

Every case calls one public entry point with one bad value and checks the error's type and
that its message names the bad value (and, where given, the argument): the package's rule is to
refuse early, name the value, say what would work, and never lose or silently reuse data.

The cases share a few small objects (a tiny random BERT, an activation set of it, an SAE, a
classifier, an explorer) built once per session by :class:`Kit`; a case is a function of the
kit. Behaviour that replaced a wrong result by a right one (the CSV reading rules, similarity of
large finite inputs, alpha-ReQ on a rank-deficient spectrum, the explorer's callback) has known
answer tests at the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from repgeo_utils import cache, spectral, validate
from repgeo_utils.ablation import (
    EigenBasis,
    check_ks,
    classifier_accuracy_ablation,
    default_ks,
    lm_loss_ablation,
    table2_row,
)
from repgeo_utils.activations import ActivationSet, activation_key, extract_activations
from repgeo_utils.config import FinetuneSettings, get_profile, seed_everything
from repgeo_utils.data import TaskNotFoundError, load_task
from repgeo_utils.explorer import FeatureExplorer
from repgeo_utils.finetune import finetune_profile, finetune_task, predict_logits
from repgeo_utils.models import (
    ModelNotFoundError,
    ModelUnavailableError,
    load_model,
    load_tokenizer,
    resolve_model,
)
from repgeo_utils.plotting import save_figure
from repgeo_utils.report import agreement, direction, pm
from repgeo_utils.sae import (
    SAEConfig,
    SparseAutoencoder,
    evaluate_sae,
    match_features,
    top_activating_tokens,
    top_variance_features,
    train_sae,
    train_sae_on_activations,
)
from repgeo_utils.sae.grid import GridData, GridSettings, feature_activations, grid_settings
from repgeo_utils.similarity import (
    cosine_of_means,
    layer_similarity,
    linear_cka,
    mean_token_cosine,
    similarity_measures,
)
from repgeo_utils.toy import ToyConfig, rise_then_fall, train_toy

TEXTS = [
    "the movie was very good",
    "i hate this app",
    "the director and the cast were brilliant but the plot was predictable",
    "the team lost the game",
    "news on sport and politics and tech for business",
    "awful acting and a terrible film",
    "this update is not easy to use",
    "love it",
]


class Kit:
    """The objects the cases call into, built on first use and shared by the session."""

    def __init__(self, tiny_bert: Path, folder: Path) -> None:
        self.tiny_bert = str(tiny_bert)
        self.folder = folder
        self.tmp: Path = folder  # the running case's own folder (set per case)
        self._acts: ActivationSet | None = None
        self._classifier: tuple[Any, Any] | None = None
        self._explorer: FeatureExplorer | None = None

    @property
    def acts(self) -> ActivationSet:
        """Every hidden state (3: embeddings and 2 layers, width 16) of the tiny BERT on TEXTS."""
        if self._acts is None:
            self._acts = extract_activations(
                self.tiny_bert, TEXTS, max_length=32, progress=False, root=self.folder / "cache"
            )
        return self._acts

    @property
    def classifier(self) -> tuple[Any, Any]:
        if self._classifier is None:
            self._classifier = load_model(
                self.tiny_bert, kind="classifier", label_names=["neg", "pos"], seed=0
            )
        return self._classifier

    def sae(self, d_in: int = 16, d_sae: int = 8) -> SparseAutoencoder:
        return SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae)).requires_grad_(False)

    def explorer(self, **changes: Any) -> FeatureExplorer:
        arguments: dict[str, Any] = dict(
            saes={("t", "late", "m"): self.sae()},
            layers={"late": 2},
            models={("t", "m"): self.tiny_bert},
        )
        arguments.update(changes)
        return FeatureExplorer(**arguments)

    def csv(self, content: str | bytes, name: str = "task.csv") -> str:
        """A CSV task file with ``content`` (text is written as UTF-8), as ``"csv:<path>"``."""
        path = self.tmp / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return f"csv:{path}"

    def dataset(self, **sizes: int) -> datasets.DatasetDict:
        """A two-class DatasetDict with ``sizes[split]`` rows per split (default 4)."""
        features = datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
        )
        return datasets.DatasetDict(
            {
                split: datasets.Dataset.from_dict(
                    {
                        "text": [f"good movie {i}" for i in range(sizes.get(split, 4))],
                        "label": [i % 2 for i in range(sizes.get(split, 4))],
                    },
                    features=features,
                )
                for split in ("train", "validation", "test")
            }
        )


@pytest.fixture(scope="module")
def module_kit(tiny_bert, tmp_path_factory) -> Kit:
    return Kit(tiny_bert, tmp_path_factory.mktemp("bad-inputs"))


@pytest.fixture
def kit(module_kit, tmp_path, monkeypatch) -> Kit:
    module_kit.tmp = tmp_path
    module_kit.monkeypatch = monkeypatch  # type: ignore[attr-defined]
    return module_kit


@dataclass(frozen=True)
class Case:
    call: Callable[[Kit], Any]
    error: type[BaseException]
    names: str | Callable[[Kit], str]  # the bad value, as the message must show it
    argument: str = ""  # and, where given, the argument it was passed as


def case(id: str, call: Callable[[Kit], Any], error: type[BaseException], names, argument=""):
    return pytest.param(Case(call, error, names, argument), id=id)


def _rank_deficient_spectrum() -> np.ndarray:
    """Eigenvalues of 200 x 64 features of rank 40: 40 real ones, then round-off."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 40)) @ rng.standard_normal((40, 64))
    return spectral.eigenspectrum(x.astype(np.float32))


def _set_env(kit: Kit, name: str, value: str) -> None:
    kit.monkeypatch.setenv(name, value)  # type: ignore[attr-defined]


def _use_cache_entry(kit: Kit) -> None:
    with cache.cache_entry("probe", "entry", {"a": 1}, root=kit.tmp / "cache") as entry:
        if not entry.exists:
            (entry.build_dir / "x.txt").write_text("x")
    with cache.cache_entry("probe", "entry", {"a": 1}, root=kit.tmp / "cache"):
        pass


def _figure():
    fig = plt.figure()
    return fig


nan, inf = math.nan, math.inf
X = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
Y = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
LAM = np.array([4.0, 2.0, 1.0, 0.5, 0.25])
T = torch.from_numpy(np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32))

# fmt: off
CASES = [
    # --- config.FinetuneSettings -----------------------------------------------------------
    case("finetune-lr-nan", lambda k: FinetuneSettings(learning_rate=nan), ValueError, "nan", "learning_rate"),
    case("finetune-lr-inf", lambda k: FinetuneSettings(learning_rate=inf), ValueError, "inf", "learning_rate"),
    case("finetune-lr-zero", lambda k: FinetuneSettings(learning_rate=0), ValueError, "0", "learning_rate"),
    case("finetune-lr-text", lambda k: FinetuneSettings(learning_rate="2e-5"), TypeError, "'2e-5'", "learning_rate"),
    case("finetune-epochs-nan", lambda k: FinetuneSettings(epochs=nan), ValueError, "nan", "epochs"),
    case("finetune-epochs-inf", lambda k: FinetuneSettings(epochs=inf), ValueError, "inf", "epochs"),
    case("finetune-epochs-negative", lambda k: FinetuneSettings(epochs=-1), ValueError, "-1", "epochs"),
    case("finetune-batch-float", lambda k: FinetuneSettings(batch_size=16.0), TypeError, "16", "batch_size"),
    case("finetune-batch-bool", lambda k: FinetuneSettings(batch_size=True), TypeError, "True", "batch_size"),
    case("finetune-batch-zero", lambda k: FinetuneSettings(batch_size=0), ValueError, "0", "batch_size"),
    case("finetune-decay-negative", lambda k: FinetuneSettings(weight_decay=-0.1), ValueError, "-0.1", "weight_decay"),
    case("finetune-decay-nan", lambda k: FinetuneSettings(weight_decay=nan), ValueError, "nan", "weight_decay"),
    case("finetune-warmup-negative", lambda k: FinetuneSettings(warmup_ratio=-0.1), ValueError, "-0.1", "warmup_ratio"),
    case("finetune-warmup-above-one", lambda k: FinetuneSettings(warmup_ratio=1.5), ValueError, "1.5", "warmup_ratio"),
    case("finetune-warmup-nan", lambda k: FinetuneSettings(warmup_ratio=nan), ValueError, "nan", "warmup_ratio"),
    case("finetune-max-length-one", lambda k: FinetuneSettings(max_length=1), ValueError, "1", "max_length"),
    case("finetune-max-length-float", lambda k: FinetuneSettings(max_length=64.0), TypeError, "64", "max_length"),
    case("finetune-optimizer-unknown", lambda k: FinetuneSettings(optimizer="adam"), ValueError, "'adam'", "optimizer"),
    case("finetune-scheduler-unknown", lambda k: FinetuneSettings(lr_scheduler="cosine_annealing"), ValueError, "'cosine_annealing'", "lr_scheduler"),
    # --- config.get_profile, seed_everything ------------------------------------------------
    case("profile-unknown", lambda k: get_profile("fast"), ValueError, "'fast'"),
    case("profile-case", lambda k: get_profile("Quick"), ValueError, "'Quick'"),
    case("profile-none", lambda k: get_profile(None), ValueError, "None"),
    case("seed-negative", lambda k: seed_everything(-3), ValueError, "-3", "seed"),
    case("seed-float", lambda k: seed_everything(1.5), TypeError, "1.5", "seed"),
    # --- cache settings from the environment ------------------------------------------------
    case("cache-verify-unknown", lambda k: (_set_env(k, "REPGEO_CACHE_VERIFY", "sha"), _use_cache_entry(k)), ValueError, "'sha'", "REPGEO_CACHE_VERIFY"),
    case("cache-lock-timeout-text", lambda k: (_set_env(k, "REPGEO_CACHE_LOCK_TIMEOUT", "ten"), _use_cache_entry(k)), ValueError, "'ten'", "REPGEO_CACHE_LOCK_TIMEOUT"),
    case("cache-lock-timeout-negative", lambda k: (_set_env(k, "REPGEO_CACHE_LOCK_TIMEOUT", "-5"), _use_cache_entry(k)), ValueError, "'-5'", "REPGEO_CACHE_LOCK_TIMEOUT"),
    case("cache-lock-timeout-nan", lambda k: (_set_env(k, "REPGEO_CACHE_LOCK_TIMEOUT", "nan"), _use_cache_entry(k)), ValueError, "'nan'", "REPGEO_CACHE_LOCK_TIMEOUT"),
    case("cache-lock-timeout-inf", lambda k: (_set_env(k, "REPGEO_CACHE_LOCK_TIMEOUT", "inf"), _use_cache_entry(k)), ValueError, "'inf'", "REPGEO_CACHE_LOCK_TIMEOUT"),
    # --- data.load_task: arguments ----------------------------------------------------------
    case("task-name-int", lambda k: load_task(3), TaskNotFoundError, "3"),
    case("task-name-unknown", lambda k: load_task("tweets"), TaskNotFoundError, "'tweets'"),
    case("task-max-rows-small", lambda k: load_task("bbc-news", max_rows=2), ValueError, "2", "max_rows"),
    case("task-max-rows-float", lambda k: load_task("bbc-news", max_rows=100.5), TypeError, "100.5", "max_rows"),
    case("task-max-rows-nan", lambda k: load_task("bbc-news", max_rows=nan), TypeError, "nan", "max_rows"),
    case("task-max-rows-bool", lambda k: load_task("bbc-news", max_rows=True), TypeError, "True", "max_rows"),
    case("task-fractions-two", lambda k: load_task("bbc-news", fractions=(0.8, 0.2)), ValueError, "(0.8, 0.2)", "fractions"),
    case("task-fractions-nan", lambda k: load_task("bbc-news", fractions=(0.8, 0.1, nan)), ValueError, "nan", "fractions"),
    case("task-fractions-zero", lambda k: load_task("bbc-news", fractions=(1.0, 0.0, 0.0)), ValueError, "0", "fractions"),
    case("task-fractions-text", lambda k: load_task("bbc-news", fractions="abc"), ValueError, "'abc'", "fractions"),
    case("task-seed-negative", lambda k: load_task("bbc-news", seed=-1), ValueError, "-1", "seed"),
    case("task-seed-float", lambda k: load_task("bbc-news", seed=0.5), TypeError, "0.5", "seed"),
    case("task-preprocess-text", lambda k: load_task("bbc-news", preprocess="lower"), TypeError, "'lower'", "preprocess"),
    case("task-label-names-for-package-task", lambda k: load_task("bbc-news", label_names=["a", "b"]), ValueError, "'bbc-news'", "label_names"),
    case("task-path-for-package-task", lambda k: load_task("bbc-news", path="/tmp/x"), ValueError, "'bbc-news'", "path"),
    case("task-revision-for-package-task", lambda k: load_task("bbc-news", revision="v1"), ValueError, "'v1'", "revision"),
    # --- data.load_task: CSV files ----------------------------------------------------------
    case("csv-missing-file", lambda k: load_task(f"csv:{k.tmp / 'nope.csv'}"), FileNotFoundError, "nope.csv"),
    case("csv-folder", lambda k: load_task(f"csv:{k.tmp}"), FileNotFoundError, lambda k: str(k.tmp)),
    case("csv-empty-file", lambda k: load_task(k.csv(b"", "empty.csv")), ValueError, "empty.csv"),
    case("csv-header-only", lambda k: load_task(k.csv("text,label\n", "header.csv")), ValueError, "header.csv"),
    case("csv-latin1", lambda k: load_task(k.csv("text,label\ncaf\xe9 good,a\n".encode("latin-1"), "latin.csv")), ValueError, "latin.csv"),
    case("csv-utf16-without-bom", lambda k: load_task(k.csv("text,label\nx,a\n".encode("utf-16-le"), "utf16.csv")), ValueError, "utf16.csv"),
    case("csv-binary", lambda k: load_task(k.csv(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01", "image.csv")), ValueError, "image.csv"),
    case("csv-no-label-column", lambda k: load_task(k.csv("sentence,y\na,1\n", "cols.csv")), ValueError, "'label'"),
    case("csv-missing-label", lambda k: load_task(k.csv("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(9)) + "t9,\n", "hole.csv")), ValueError, "row 10"),
    case("csv-ratings-shifted", lambda k: load_task(k.csv("text,label\n" + "".join(f"t{i},{1 + i % 3}\n" for i in range(30)), "stars.csv"), label_names=["1", "2", "3", "4"]), ValueError, "1 -> '2'"),
    case("csv-label-not-a-name", lambda k: load_task(k.csv("text,label\n" + "".join(f"t{i},{'abc'[i % 3]}\n" for i in range(30)), "names.csv"), label_names=["a", "b"]), ValueError, "'c'"),
    case("csv-positions-out-of-range", lambda k: load_task(k.csv("text,label\n" + "".join(f"t{i},{i % 3}\n" for i in range(30)), "ids.csv"), label_names=["x", "y"]), ValueError, "2"),
    case("csv-label-names-single-string", lambda k: load_task(k.csv("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(30)), "one.csv"), label_names="ab"), TypeError, "'ab'", "label_names"),
    case("csv-label-names-duplicate", lambda k: load_task(k.csv("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(30)), "dup.csv"), label_names=["a", "b", "a"]), ValueError, "'a'", "label_names"),
    case("csv-labels-as-unknown", lambda k: load_task(k.csv("text,label\nx,a\n", "m.csv"), labels_as="ids"), ValueError, "'ids'", "labels_as"),
    # --- models -------------------------------------------------------------------------------
    case("model-missing-relative-folder", lambda k: resolve_model("./data/cache/finetune/typo"), ModelNotFoundError, "./data/cache/finetune/typo"),
    case("model-missing-absolute-folder", lambda k: resolve_model("/tmp/nope"), ModelNotFoundError, "/tmp/nope"),
    case("model-file-not-folder", lambda k: resolve_model(k.csv("x", "model.bin")[4:]), ModelNotFoundError, "model.bin"),
    case("model-unknown-key", lambda k: resolve_model("bert-huge"), ModelNotFoundError, "'bert-huge'"),
    case("model-name-none", lambda k: resolve_model(None), TypeError, "None"),
    case("model-revision-int", lambda k: resolve_model("minilm-l6", revision=3), TypeError, "3", "revision"),
    case("model-revision-of-package", lambda k: resolve_model("minilm-l6", revision="v2"), ValueError, "'v2'"),
    case("model-local-revision-missing", lambda k: resolve_model(k.tiny_bert, revision="step9"), ModelNotFoundError, "'step9'"),
    case("model-kind-unknown", lambda k: load_model(k.tiny_bert, kind="decoder"), ValueError, "'decoder'", "kind"),
    case("model-label-names-string", lambda k: load_model(k.tiny_bert, kind="classifier", label_names="ab"), TypeError, "'ab'", "label_names"),
    case("model-label-names-one", lambda k: load_model(k.tiny_bert, kind="classifier", label_names=["only"]), ValueError, "['only']"),
    case("model-label-names-duplicate", lambda k: load_model(k.tiny_bert, kind="classifier", label_names=["a", "a"]), ValueError, "'a'", "label_names"),
    case("model-hub-offline", lambda k: load_model("someorg/not-cached-model"), ModelUnavailableError, "someorg/not-cached-model"),
    case("tokenizer-missing-folder", lambda k: load_tokenizer("/tmp/nope"), ModelNotFoundError, "/tmp/nope"),
    # --- activations.extract_activations and activation_key --------------------------------
    case("extract-single-string", lambda k: extract_activations(k.tiny_bert, "the movie was good", max_length=32, progress=False), TypeError, "'the movie was good'", "texts"),
    case("extract-empty", lambda k: extract_activations(k.tiny_bert, [], max_length=32, progress=False), ValueError, "empty", "texts"),
    case("extract-non-text", lambda k: extract_activations(k.tiny_bert, ["a", 3], max_length=32, progress=False), TypeError, "3", "texts[1]"),
    case("extract-layer-out-of-range", lambda k: extract_activations(k.tiny_bert, TEXTS, [5], max_length=32, progress=False), IndexError, "5"),
    case("extract-layer-float", lambda k: extract_activations(k.tiny_bert, TEXTS, [1.0], max_length=32, progress=False), TypeError, "1.0"),
    case("extract-max-length-below-specials", lambda k: extract_activations(k.tiny_bert, TEXTS, max_length=2, progress=False), ValueError, "2", "max_length"),
    case("extract-max-length-zero", lambda k: extract_activations(k.tiny_bert, TEXTS, max_length=0, progress=False), ValueError, "0", "max_length"),
    case("extract-max-length-float", lambda k: extract_activations(k.tiny_bert, TEXTS, max_length=32.0, progress=False), TypeError, "32", "max_length"),
    case("extract-max-length-beyond-positions", lambda k: extract_activations(k.tiny_bert, TEXTS, max_length=1000, progress=False), ValueError, "1000", "max_length"),
    case("extract-dtype", lambda k: extract_activations(k.tiny_bert, TEXTS, dtype="float16", max_length=32, progress=False), ValueError, "'float16'", "dtype"),
    case("extract-batch-tokens-zero", lambda k: extract_activations(k.tiny_bert, TEXTS, batch_tokens=0, max_length=32, progress=False), ValueError, "0", "batch_tokens"),
    case("extract-max-batch-size-negative", lambda k: extract_activations(k.tiny_bert, TEXTS, max_batch_size=-1, max_length=32, progress=False), ValueError, "-1", "max_batch_size"),
    case("extract-shard-mb-zero", lambda k: extract_activations(k.tiny_bert, TEXTS, shard_mb=0, max_length=32, progress=False), ValueError, "0", "shard_mb"),
    case("extract-shard-mb-nan", lambda k: extract_activations(k.tiny_bert, TEXTS, shard_mb=nan, max_length=32, progress=False), ValueError, "nan", "shard_mb"),
    case("extract-device-unknown", lambda k: extract_activations(k.tiny_bert, TEXTS, device="tpu", max_length=32, progress=False), ValueError, "'tpu'", "device"),
    case("extract-missing-folder", lambda k: extract_activations("./data/cache/finetune/typo", TEXTS, max_length=32, progress=False), ModelNotFoundError, "./data/cache/finetune/typo"),
    case("extract-hub-offline", lambda k: extract_activations("someorg/not-cached-model", TEXTS, max_length=32, progress=False), ModelUnavailableError, "someorg/not-cached-model"),
    case("activation-key-single-string", lambda k: activation_key(k.tiny_bert, "one text", max_length=32), TypeError, "'one text'", "texts"),
    # --- activations.ActivationSet accessors -------------------------------------------------
    case("set-tokens-out-of-range", lambda k: k.acts.tokens(7), IndexError, "7"),
    case("set-tokens-float-layer", lambda k: k.acts.tokens(1.5), TypeError, "1.5", "layer"),
    case("set-tokens-text-layer", lambda k: k.acts.tokens("1"), TypeError, "'1'", "layer"),
    case("set-pooled-unknown", lambda k: k.acts.pooled(1, "max"), ValueError, "'max'"),
    case("set-text-rows-out-of-range", lambda k: k.acts.text_rows(99), IndexError, "99"),
    case("set-text-rows-negative", lambda k: k.acts.text_rows(-1), IndexError, "-1"),
    case("set-locate-out-of-range", lambda k: k.acts.locate([0, 10**6]), IndexError, "1000000"),
    case("set-locate-negative", lambda k: k.acts.locate([-1]), IndexError, "-1"),
    # --- finetune ---------------------------------------------------------------------------
    case("finetune-empty-split", lambda k: finetune_task(k.tiny_bert, k.dataset(validation=0), FinetuneSettings(), task="t", progress=False), ValueError, "'validation'"),
    case("finetune-missing-split", lambda k: finetune_task(k.tiny_bert, datasets.DatasetDict({"train": k.dataset()["train"]}), FinetuneSettings(), task="t", progress=False), ValueError, "'validation'"),
    case("finetune-task-empty-name", lambda k: finetune_task(k.tiny_bert, k.dataset(), FinetuneSettings(), task="", progress=False), ValueError, "''", "task"),
    case("finetune-task-name-int", lambda k: finetune_task(k.tiny_bert, k.dataset(), FinetuneSettings(), task=3, progress=False), TypeError, "3", "task"),
    case("finetune-settings-dict", lambda k: finetune_task(k.tiny_bert, k.dataset(), {"learning_rate": 1e-3}, task="t", progress=False), TypeError, "dict", "settings"),
    case("finetune-seed-negative", lambda k: finetune_task(k.tiny_bert, k.dataset(), FinetuneSettings(epochs=1), task="t", seed=-1, progress=False, cache_root=k.tmp / "c"), ValueError, "-1", "seed"),
    case("finetune-missing-model-folder", lambda k: finetune_task("/tmp/nope", k.dataset(), FinetuneSettings(), task="t", progress=False), ModelNotFoundError, "/tmp/nope"),
    case("finetune-profile-single-string", lambda k: finetune_profile("quick", "bbc-news", progress=False), TypeError, "'bbc-news'", "tasks"),
    case("finetune-profile-unknown-task", lambda k: finetune_profile("quick", ["tweets"], progress=False), TaskNotFoundError, "'tweets'"),
    case("grid-data-single-string", lambda k: GridData.build("quick", "bbc-news"), TypeError, "'bbc-news'", "tasks"),
    case("predict-single-string", lambda k: predict_logits(*k.classifier, "a good movie"), TypeError, "'a good movie'", "texts"),
    case("predict-batch-size-zero", lambda k: predict_logits(*k.classifier, ["a good movie"], batch_size=0), ValueError, "0", "batch_size"),
    case("predict-max-length-zero", lambda k: predict_logits(*k.classifier, ["a good movie"], max_length=0), ValueError, "0", "max_length"),
    # --- similarity ---------------------------------------------------------------------------
    case("similarity-1d", lambda k: linear_cka(X[:, 0], Y), ValueError, "(6,)"),
    case("similarity-rows-differ", lambda k: cosine_of_means(X, Y[:5]), ValueError, "5"),
    case("similarity-widths-differ", lambda k: mean_token_cosine(X, Y[:, :3]), ValueError, "3"),
    case("similarity-empty", lambda k: linear_cka(X[:0], Y[:0]), ValueError, "(0, 4)"),
    case("similarity-nan", lambda k: linear_cka(np.where(np.arange(6)[:, None] == 2, nan, X), Y), ValueError, "row 2", "a"),
    case("similarity-inf", lambda k: cosine_of_means(X, np.where(np.arange(6)[:, None] == 4, inf, Y)), ValueError, "row 4", "b"),
    case("similarity-measure-unknown", lambda k: similarity_measures(X, Y, ["cka"]), ValueError, "'cka'"),
    case("similarity-measure-string", lambda k: similarity_measures(X, Y, "linear_cka"), TypeError, "'linear_cka'", "measures"),
    case("similarity-measures-empty", lambda k: similarity_measures(X, Y, []), ValueError, "[]", "measures"),
    case("similarity-chunk-rows-zero", lambda k: similarity_measures(X, Y, chunk_rows=0), ValueError, "0", "chunk_rows"),
    case("similarity-chunk-rows-float", lambda k: linear_cka(X, Y, chunk_rows=2.5), TypeError, "2.5", "chunk_rows"),
    case("similarity-mask-shape", lambda k: similarity_measures(X, Y, mask=np.ones(3, dtype=bool)), ValueError, "(3,)", "mask"),
    case("layer-similarity-layer-missing", lambda k: layer_similarity(k.acts, k.acts, layers=[9]), IndexError, "9"),
    # --- spectral -------------------------------------------------------------------------------
    case("rankme-variant", lambda k: spectral.rankme(LAM, variant="entropy"), ValueError, "'entropy'"),
    case("rankme-empty", lambda k: spectral.rankme([]), ValueError, "empty"),
    case("rankme-negative", lambda k: spectral.rankme([1.0, -1.0]), ValueError, "-1"),
    case("rankme-2d", lambda k: spectral.rankme(np.ones((2, 2))), ValueError, "(2, 2)"),
    case("rankme-nan", lambda k: spectral.rankme([1.0, nan]), ValueError, "index 1"),
    case("alpha-rank-deficient", lambda k: spectral.alpha_req(_rank_deficient_spectrum(), fit_range=(5, 50)), ValueError, "1..40"),
    case("alpha-fit-range-zero", lambda k: spectral.alpha_req(np.arange(200, 0, -1.0), fit_range=(0, 10)), ValueError, "(0, 10)"),
    case("alpha-fit-range-reversed", lambda k: spectral.alpha_req(np.arange(200, 0, -1.0), fit_range=(10, 5)), ValueError, "(10, 5)"),
    case("alpha-fit-range-float", lambda k: spectral.alpha_req(np.arange(200, 0, -1.0), fit_range=(1.5, 10)), TypeError, "1.5", "fit_range"),
    case("alpha-fit-range-one", lambda k: spectral.alpha_req(np.arange(200, 0, -1.0), fit_range=(12,)), ValueError, "(12,)", "fit_range"),
    case("alpha-fit-range-too-long", lambda k: spectral.alpha_req(np.arange(50, 0, -1.0), fit_range=(12, 100)), ValueError, "1..50"),
    case("alpha-unsorted", lambda k: spectral.alpha_req(np.r_[np.arange(200, 100, -1.0), 500.0, np.arange(99, 0, -1.0)], fit_range=(12, 100)), ValueError, "index 100"),
    case("eigenspectrum-max-zero", lambda k: spectral.eigenspectrum(X, max_eigenvalues=0), ValueError, "0", "max_eigenvalues"),
    case("eigenspectrum-max-float", lambda k: spectral.eigenspectrum(X, max_eigenvalues=2.5), TypeError, "2.5", "max_eigenvalues"),
    case("eigenspectrum-1d", lambda k: spectral.eigenspectrum(X[:, 0]), ValueError, "(6,)"),
    case("eigenspectrum-one-row", lambda k: spectral.eigenspectrum(X[:1]), ValueError, "1"),
    case("eigenspectrum-nan", lambda k: spectral.eigenspectrum(np.where(np.arange(6)[:, None] == 3, nan, X)), ValueError, "row 3"),
    case("layer-spectra-wraps", lambda k: spectral.layer_spectra(k.acts, layers=[5]), IndexError, "5"),
    case("layer-spectra-pooling", lambda k: spectral.layer_spectra(k.acts, pooling="max"), ValueError, "'max'"),
    case("layer-spectra-exclude-special", lambda k: spectral.layer_spectra(k.acts, pooling="mean", exclude_special=True), ValueError, "'mean'"),
    case("layer-spectra-fit-range", lambda k: spectral.layer_spectra(k.acts, fit_range=(12,)), ValueError, "(12,)", "fit_range"),
    case("spectral-summary-fit-range", lambda k: spectral.spectral_summary(LAM, fit_range=(3, 2)), ValueError, "(3, 2)", "fit_range"),
    case("bootstrap-resamples-one", lambda k: spectral.bootstrap_ci(X, spectral.rankme, n_resamples=1), ValueError, "1", "n_resamples"),
    case("bootstrap-resamples-float", lambda k: spectral.bootstrap_ci(X, spectral.rankme, n_resamples=2.5), TypeError, "2.5", "n_resamples"),
    case("bootstrap-confidence", lambda k: spectral.bootstrap_ci(X, spectral.rankme, confidence=1.5), ValueError, "1.5", "confidence"),
    case("bootstrap-method", lambda k: spectral.bootstrap_ci(X, spectral.rankme, method="bca"), ValueError, "'bca'"),
    case("phases-window-zero", lambda k: spectral.segment_phases([1, 2, 3], [1.0, 2.0, 1.0], smooth_window=0), ValueError, "0", "smooth_window"),
    case("phases-steps-not-increasing", lambda k: spectral.segment_phases([1, 3, 2], [1.0, 2.0, 1.0]), ValueError, "index 2"),
    case("phases-min-change", lambda k: spectral.segment_phases([1, 2, 3], [1.0, 2.0, 1.0], min_change=1.0), ValueError, "1", "min_change"),
    case("subsamples-fraction", lambda k: spectral.paired_subsamples(X, Y, spectral.rankme, fraction=0.0), ValueError, "0", "fraction"),
    case("subsamples-rows-differ", lambda k: spectral.paired_subsamples(X, Y[:4], spectral.rankme), ValueError, "4"),
    # --- sae ------------------------------------------------------------------------------------
    case("sae-config-d-in-zero", lambda k: SAEConfig(d_in=0, d_sae=8), ValueError, "0", "d_in"),
    case("sae-config-d-in-float", lambda k: SAEConfig(d_in=16.0, d_sae=8), ValueError, "16", "d_in"),
    case("sae-config-lr-nan", lambda k: SAEConfig(d_in=16, d_sae=8, lr=nan), ValueError, "nan", "lr"),
    case("sae-config-l1-nan", lambda k: SAEConfig(d_in=16, d_sae=8, l1_coefficient=nan), ValueError, "nan", "l1_coefficient"),
    case("sae-config-l1-inf", lambda k: SAEConfig(d_in=16, d_sae=8, l1_coefficient=inf), ValueError, "inf", "l1_coefficient"),
    case("sae-config-k-float", lambda k: SAEConfig(d_in=16, d_sae=8, architecture="topk", k=2.0), ValueError, "2", "k"),
    case("sae-config-k-too-large", lambda k: SAEConfig(d_in=16, d_sae=8, architecture="topk", k=9), ValueError, "9", "k"),
    case("sae-config-betas-nan", lambda k: SAEConfig(d_in=16, d_sae=8, adam_betas=(0.9, nan)), ValueError, "nan", "adam_betas"),
    case("sae-config-betas-one", lambda k: SAEConfig(d_in=16, d_sae=8, adam_betas=(0.9,)), ValueError, "(0.9,)", "adam_betas"),
    case("sae-config-seed-float", lambda k: SAEConfig(d_in=16, d_sae=8, seed=1.5), ValueError, "1.5", "seed"),
    case("sae-config-density-nan", lambda k: SAEConfig(d_in=16, d_sae=8, init_density=nan), ValueError, "nan", "init_density"),
    case("sae-config-flag-text", lambda k: SAEConfig(d_in=16, d_sae=8, normalize_decoder="no"), ValueError, "'no'", "normalize_decoder"),
    case("sae-preset-unknown", lambda k: SAEConfig.preset("sparse", 16, 8), ValueError, "'sparse'"),
    case("train-sae-width", lambda k: train_sae(SAEConfig(d_in=32, d_sae=8), T, progress=False), ValueError, "d_in=32"),
    case("train-sae-1d", lambda k: train_sae(SAEConfig(d_in=16, d_sae=8), T[0], progress=False), ValueError, "(16,)"),
    case("train-sae-device", lambda k: train_sae(SAEConfig(d_in=16, d_sae=8, epochs=1), T, device="tpu", progress=False), ValueError, "'tpu'", "device"),
    case("train-sae-means-without-offsets", lambda k: train_sae(SAEConfig(d_in=16, d_sae=8, train_on="sequence_means"), T, progress=False), ValueError, "offsets"),
    case("evaluate-sae-width", lambda k: evaluate_sae(k.sae(), T[:, :8]), ValueError, "(32, 8)"),
    case("evaluate-sae-empty", lambda k: evaluate_sae(k.sae(), T[:0]), ValueError, "(0, 16)"),
    case("evaluate-sae-batch-zero", lambda k: evaluate_sae(k.sae(), T, batch_size=0), ValueError, "0", "batch_size"),
    case("match-features-widths", lambda k: match_features(k.sae(16), k.sae(8)), ValueError, "8"),
    case("match-features-threshold-nan", lambda k: match_features(k.sae(), k.sae(), threshold=nan), ValueError, "nan", "threshold"),
    case("match-features-threshold-above-one", lambda k: match_features(k.sae(), k.sae(), threshold=2.0), ValueError, "2", "threshold"),
    case("match-features-alive-length", lambda k: match_features(k.sae(), k.sae(), alive_a=torch.ones(3, dtype=torch.bool)), ValueError, "3", "alive_a"),
    case("top-variance-n-zero", lambda k: top_variance_features(T[:, :8], 0), ValueError, "0"),
    case("top-variance-n-float", lambda k: top_variance_features(T[:, :8], 2.5), TypeError, "2.5"),
    case("top-tokens-n-negative", lambda k: top_activating_tokens(torch.ones(4), torch.arange(4), torch.tensor([0, 4]), None, n=-1), ValueError, "-1", "n"),
    case("top-tokens-context-negative", lambda k: top_activating_tokens(torch.ones(4), torch.arange(4), torch.tensor([0, 4]), None, context=-1), ValueError, "-1", "context"),
    case("sae-on-set-layer", lambda k: train_sae_on_activations(k.acts, 5, SAEConfig(d_in=16, d_sae=8), progress=False, root=k.tmp), IndexError, "5"),
    case("sae-on-set-eval-fraction", lambda k: train_sae_on_activations(k.acts, 1, SAEConfig(d_in=16, d_sae=8), eval_fraction=1.5, progress=False, root=k.tmp), ValueError, "1.5", "eval_fraction"),
    case("sae-on-set-width", lambda k: train_sae_on_activations(k.acts, 1, SAEConfig(d_in=32, d_sae=8), progress=False, root=k.tmp), ValueError, "d_in=32"),
    case("feature-activations-out-of-range", lambda k: feature_activations(k.sae(), T.numpy(), [99]), ValueError, "99"),
    case("feature-activations-int", lambda k: feature_activations(k.sae(), T.numpy(), 3), TypeError, "3", "features"),
    # --- sae.grid.GridSettings -----------------------------------------------------------------
    case("grid-splits-string", lambda k: GridSettings(splits="test"), ValueError, "'test'", "splits"),
    case("grid-splits-unknown", lambda k: GridSettings(splits=("dev",)), ValueError, "'dev'", "splits"),
    case("grid-max-tokens-float", lambda k: GridSettings(max_tokens=1e4), TypeError, "10000", "max_tokens"),
    case("grid-max-tokens-zero", lambda k: GridSettings(max_tokens=0), ValueError, "0", "max_tokens"),
    case("grid-preset-unknown", lambda k: GridSettings(preset="sparse"), ValueError, "'sparse'", "preset"),
    case("grid-d-sae-zero", lambda k: GridSettings(d_sae=0), ValueError, "0", "d_sae"),
    case("grid-epochs-float", lambda k: GridSettings(epochs=2.5), TypeError, "2.5", "epochs"),
    case("grid-seed-negative", lambda k: GridSettings(sae_seed=-1), ValueError, "-1", "sae_seed"),
    case("grid-settings-unknown", lambda k: grid_settings("fast"), ValueError, "'fast'"),
    # --- toy ------------------------------------------------------------------------------------
    case("toy-samples-float", lambda k: ToyConfig(n_samples=512.0), TypeError, "512", "n_samples"),
    case("toy-classes-one", lambda k: ToyConfig(n_classes=1), ValueError, "1", "n_classes"),
    case("toy-embed-zero", lambda k: ToyConfig(d_embed=0), ValueError, "0", "d_embed"),
    case("toy-zipf-nan", lambda k: ToyConfig(zipf_exponent=nan), ValueError, "nan", "zipf_exponent"),
    case("toy-smoothing-one", lambda k: ToyConfig(label_smoothing=1.0), ValueError, "1", "label_smoothing"),
    case("toy-smoothing-nan", lambda k: ToyConfig(label_smoothing=nan), ValueError, "nan", "label_smoothing"),
    case("toy-loss-unknown", lambda k: ToyConfig(loss="hinge"), ValueError, "'hinge'", "loss"),
    case("toy-lr-inf", lambda k: ToyConfig(learning_rate=inf), ValueError, "inf", "learning_rate"),
    case("toy-steps-float", lambda k: ToyConfig(steps=10.5), TypeError, "10.5", "steps"),
    case("toy-init-nan", lambda k: ToyConfig(init_scale=nan), ValueError, "nan", "init_scale"),
    case("toy-seed-float", lambda k: ToyConfig(seed=0.5), TypeError, "0.5", "seed"),
    case("train-toy-not-config", lambda k: train_toy({"steps": 10}), TypeError, "dict", "config"),
    case("rise-then-fall-min-fall", lambda k: rise_then_fall([0, 1, 2], [1.0, 2.0, 1.0], min_fall=nan), ValueError, "nan", "min_fall"),
    # --- ablation -------------------------------------------------------------------------------
    case("ablation-k-negative", lambda k: EigenBasis(np.zeros(3), np.eye(3), np.ones(3), 5).projector(-1), ValueError, "-1"),
    case("ablation-k-too-large", lambda k: EigenBasis(np.zeros(3), np.eye(3), np.ones(3), 5).projector(4), ValueError, "4"),
    case("ablation-k-float", lambda k: check_ks([1, 2.5], 3), ValueError, "2.5"),
    case("ablation-mode", lambda k: EigenBasis(np.zeros(3), np.eye(3), np.ones(3), 5).projector(1, "drop"), ValueError, "'drop'"),
    case("ablation-ks-empty", lambda k: check_ks([], 3), ValueError, "empty"),
    case("ablation-default-ks-float", lambda k: default_ks(2.5), TypeError, "2.5", "dim"),
    case("ablation-default-ks-zero", lambda k: default_ks(0), ValueError, "0", "dim"),
    case("ablation-table-row-missing", lambda k: table2_row(pd.DataFrame({"mode": ["none", "keep"], "k": [3, 1], "acc": [1.0, 0.5]}), "acc", [1]), ValueError, "'remove'"),
    case("ablation-lm-single-string", lambda k: lm_loss_ablation(None, None, "fit text", ["b"], [1]), TypeError, "'fit text'", "fit_texts"),
    case("ablation-classifier-single-string", lambda k: classifier_accuracy_ablation(None, None, ["a"], "eval text", [0], [1]), TypeError, "'eval text'", "eval_texts"),
    # --- report ---------------------------------------------------------------------------------
    case("pm-value-text", lambda k: pm("8.1", 0.5), TypeError, "'8.1'", "value"),
    case("pm-spread-nan", lambda k: pm(8.1, nan), ValueError, "nan", "spread"),
    case("pm-digits-float", lambda k: pm(8.1, None, digits=2.5), TypeError, "2.5", "digits"),
    case("direction-noise-negative", lambda k: direction(1.0, -0.5), ValueError, "-0.5", "noise"),
    case("direction-k-nan", lambda k: direction(1.0, 0.1, k=nan), ValueError, "nan", "k"),
    case("direction-change-inf", lambda k: direction(inf, 0.1), ValueError, "inf", "change"),
    case("agreement-unknown", lambda k: agreement("upward", "up"), ValueError, "'upward'"),
    # --- plotting.save_figure -------------------------------------------------------------------
    case("figure-name-empty", lambda k: save_figure(_figure(), ""), ValueError, "''", "name"),
    case("figure-name-folder", lambda k: save_figure(_figure(), "a/b"), ValueError, "'a/b'", "name"),
    case("figure-name-extension", lambda k: save_figure(_figure(), "fig.png"), ValueError, "'fig.png'", "name"),
    case("figure-profile-empty", lambda k: save_figure(_figure(), "fig", profile=""), ValueError, "''", "profile"),
    case("figure-profile-path", lambda k: save_figure(_figure(), "fig", profile="../x"), ValueError, "'../x'", "profile"),
    case("figure-not-a-figure", lambda k: save_figure("fig", "fig"), TypeError, "str", "fig"),
    # --- explorer -------------------------------------------------------------------------------
    case("explorer-layer-out-of-range", lambda k: k.explorer(layers={"late": 9}).token_values("t", "late", "m", 0, "a good movie"), IndexError, "9"),
    case("explorer-layer-text", lambda k: k.explorer(layers={"late": "2"}), TypeError, "'2'", "layers"),
    case("explorer-feature-out-of-range", lambda k: k.explorer(features={("t", "late", "m"): [99]}), ValueError, "99"),
    case("explorer-max-length-zero", lambda k: k.explorer(max_length=0), ValueError, "0", "max_length"),
    case("explorer-sentence-list", lambda k: k.explorer(sentence=["a good movie"]), TypeError, "['a good movie']", "sentence"),
    case("explorer-select-feature", lambda k: k.explorer().select(feature=99), ValueError, "99", "feature"),
    case("explorer-select-depth", lambda k: k.explorer().select(depth="middle"), ValueError, "'middle'", "depth"),
    # --- validate itself ------------------------------------------------------------------------
    case("validate-pair-text", lambda k: validate.pair("fit_range", "ab"), ValueError, "'ab'", "fit_range"),
]
# fmt: on


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_refused(bad: Case, kit: Kit) -> None:
    names = bad.names(kit) if callable(bad.names) else bad.names
    with pytest.raises(bad.error, match=re.escape(names)) as caught:
        bad.call(kit)
    assert bad.argument in str(caught.value), f"the message does not name {bad.argument!r}"


# --- what replaced a wrong result: known answers --------------------------------------------


def test_the_trainer_names_are_those_of_the_installed_transformers():
    """config keeps the optimiser and scheduler names so that making a FinetuneSettings does not
    load transformers; they must be exactly the ones TrainingArguments accepts."""
    from transformers import SchedulerType
    from transformers.training_args import OptimizerNames

    from repgeo_utils.config import TRAINER_OPTIMIZERS, TRAINER_SCHEDULERS

    assert set(TRAINER_OPTIMIZERS) == {o.value for o in OptimizerNames}
    assert set(TRAINER_SCHEDULERS) == {s.value for s in SchedulerType}


def _texts_and_labels(dd) -> dict[str, str]:
    names = dd["train"].features["label"].names
    return {
        text: names[label]
        for split in dd
        for text, label in zip(dd[split]["text"], dd[split]["label"], strict=True)
    }


def test_csv_labels_that_are_names_map_to_those_names(kit):
    """Star ratings 1-3 with the names "1".."4" went one class up (read as positions); read as
    names, with labels_as='names', each row keeps its rating. labels_as='positions' reads
    integer labels as indices, and 'auto' does so when they are not names."""
    rows = "text,label\n" + "".join(f"review {i},{1 + i % 3}\n" for i in range(30))
    stars = load_task(kit.csv(rows, "stars.csv"), label_names=["1", "2", "3", "4"],
                      labels_as="names", preprocess=None)  # fmt: skip
    by_text = _texts_and_labels(stars)
    assert all(by_text[f"review {i}"] == str(1 + i % 3) for i in range(30))
    shifted = load_task(kit.csv(rows, "stars.csv"), label_names=["1", "2", "3", "4"],
                        labels_as="positions", preprocess=None)  # fmt: skip
    assert _texts_and_labels(shifted)["review 0"] == "2"  # asked for: position 1 is "2"
    ids = "text,label\n" + "".join(f"t {i},{i % 2}\n" for i in range(20))
    auto = load_task(kit.csv(ids, "ids.csv"), label_names=["neg", "pos"], preprocess=None)
    assert _texts_and_labels(auto)["t 1"] == "pos"
    full = "text,label\n" + "".join(f"r {i},{1 + i % 5}\n" for i in range(50))
    five = load_task(kit.csv(full, "five.csv"), label_names=["1", "2", "3", "4", "5"])
    assert _texts_and_labels(five)["r 4"] == "5"  # rating 5: unambiguous, by name


def test_csv_texts_that_look_missing_are_kept_and_labels_stay_names(kit):
    texts = ["nan", "None", "NA", "null", "N/A", "n/a", "NaN", "-nan", "#N/A", "good"]
    rows = "text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(texts * 3))
    dd = load_task(kit.csv(rows, "na.csv"), preprocess=None)
    kept = {text for split in dd for text in dd[split]["text"]}
    assert kept == set(texts)
    assert dd["train"].features["label"].names == ["0", "1"]  # not "0.0" / "1.0"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-8"])
def test_csv_encodings_with_a_mark_are_read(kit, encoding):
    rows = "text,label\n" + "".join(f"café {i},{'ab'[i % 2]}\n" for i in range(12))
    dd = load_task(kit.csv(rows.encode(encoding), "enc.csv"), preprocess=None)
    assert {t for s in dd for t in dd[s]["text"]} == {f"café {i}" for i in range(12)}


def test_similarity_of_large_finite_float32_inputs_is_finite():
    """Near 1e30 a float32 square overflows: the measures said 'NaN or infinite values' for
    finite inputs. They are computed again in float64 and match the rescaled inputs."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 8)).astype(np.float32)
    b = (a @ rng.standard_normal((8, 8)) + rng.standard_normal((50, 8))).astype(np.float32)
    for measure in (cosine_of_means, mean_token_cosine, linear_cka):
        big = measure(a * np.float32(1e30), b * np.float32(1e30))
        assert math.isfinite(big) and big == pytest.approx(measure(a, b), rel=1e-5)


def test_alpha_req_fits_only_the_numerical_rank():
    """A rank-50 spectrum that falls as r^-1, then round-off: the fit over ranks 12..100 read the
    round-off as a steep fall. It is refused, naming the 50 nonzero eigenvalues; within them the
    exponent is 1, and spectral_summary(clip_to_rank=True) says which ranks it used."""
    r = np.arange(1, 101, dtype=np.float64)
    lam = np.where(r <= 50, 1.0 / r, 1e-17 * r[::-1] / 100)
    with pytest.raises(ValueError, match=re.escape("only 50 of the 100 eigenvalues are nonzero")):
        spectral.alpha_req(lam, fit_range=(12, 100))
    assert spectral.alpha_req(lam, fit_range=(12, 50)).alpha == pytest.approx(1.0)
    summary = spectral.spectral_summary(lam, fit_range=(12, 100), clip_to_rank=True)
    assert summary["alpha"] == pytest.approx(1.0) and summary["alpha_fit_hi"] == 50


def test_explorer_callback_shows_a_bad_layer_instead_of_raising(kit):
    explorer = kit.explorer(layers={"late": 9})
    page = explorer.update()
    assert "layer 9 (depth &#x27;late&#x27;) is out of range" in page and "0..2" in page


def test_max_length_just_above_the_special_tokens_truncates(kit):
    acts = extract_activations(kit.tiny_bert, TEXTS, max_length=3, progress=False,
                               root=kit.tmp / "cache")  # fmt: skip
    assert acts.lengths.max() == 3 and acts.n_tokens == 3 * len(TEXTS)


def test_a_mistyped_folder_is_no_hub_failure():
    with pytest.raises(ModelNotFoundError) as caught:
        extract_activations("./data/cache/finetune/typo", TEXTS, max_length=32, progress=False)
    assert "No such folder" in str(caught.value) and "hub" not in str(caught.value)
