"""An interactive explorer of SAE features on free text (notebook 04).

Pick a task, a depth (early / middle / late layer), a model (pre-trained or fine-tuned), a
feature and type a sentence: the explorer runs the sentence through that model, encodes the
layer's hidden states with that SAE and colours every token by the feature's activation.

:class:`FeatureExplorer` keeps the logic in plain methods that need no browser:
:meth:`~FeatureExplorer.token_values` (the numbers), :meth:`~FeatureExplorer.render_html` (the
picture as a small HTML string) and :meth:`~FeatureExplorer.update` (the widget callback: it
reads the controls and rewrites the output). :meth:`~FeatureExplorer.show` displays the live
ipywidgets controls when a widget frontend (JupyterLab) is attached to the kernel and a static
HTML picture of the current selection otherwise (papermill, nbval, ``jupyter nbconvert``), so a
notebook executed headless keeps a readable output and no widget state.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from IPython.display import HTML, display

from . import validate
from .models import load_model
from .sae import SparseAutoencoder

log = logging.getLogger(__name__)

#: (task, depth, model)
Key = tuple[str, str, str]


@dataclass(frozen=True)
class Selection:
    """What the explorer shows: one feature of one SAE on one sentence."""

    task: str
    depth: str
    model: str
    feature: int
    sentence: str


def widget_frontend_attached() -> bool:
    """True when the kernel runs under a notebook frontend that can draw widgets.

    Two signs, either is enough: the kernel was started by a Jupyter server for a notebook
    session (JupyterLab, Notebook 7: the server sets ``JPY_SESSION_NAME`` in the kernel's
    environment), or JupyterLab's widget manager has opened the ``jupyter.widget.control``
    comm (ipywidgets 8; it does so only to restore widgets when it reconnects to a running
    kernel, not for a fresh one, so this sign alone missed every new JupyterLab session: the
    browser test found it). Headless runners (papermill, nbclient, nbval, ``jupyter nbconvert
    --execute``) start their own kernels and show neither.
    """
    if os.environ.get("JPY_SESSION_NAME"):
        return True
    return getattr(widgets.Widget, "_control_comm", None) is not None


class FeatureExplorer:
    """Token-level activations of any SAE feature of the grid on any sentence.

    Args:
        saes: (task, depth, model) -> SAE.
        layers: depth -> ``hidden_states`` index the SAEs of that depth read.
        models: (task, model) -> what :func:`repgeo_utils.models.load_model` loads (registry
            key or checkpoint folder); each is loaded once, on first use.
        features: (task, depth, model) -> features offered first (e.g. the top-variance ones).
        feature_scale: (task, depth, model) -> per-latent activation that maps to full colour
            (e.g. each latent's maximum over the data set); by default the sentence's own max.
        notes: (task, depth, model, feature) -> a line shown under the strip (e.g. the
            feature's top-activating tokens in the data).
        preprocess: applied to the typed sentence (the texts the models were fine-tuned on
            were lowercased and stripped of punctuation); ``None`` keeps it as typed.
        max_length: truncation of the sentence, special tokens included.
        sentence: the sentence shown first.
        loader: ``name -> (model, tokenizer)``; default :func:`repgeo_utils.models.load_model`.
    """

    def __init__(
        self,
        saes: Mapping[Key, SparseAutoencoder],
        layers: Mapping[str, int],
        models: Mapping[tuple[str, str], str | Path],
        *,
        features: Mapping[Key, Sequence[int]] | None = None,
        feature_scale: Mapping[Key, np.ndarray] | None = None,
        notes: Mapping[tuple[str, str, str, int], str] | None = None,
        preprocess: Callable[[str], str] | None = None,
        max_length: int = 64,
        sentence: str = "the plot was predictable and the acting was terrible",
        loader: Callable[[str | Path], tuple[Any, Any]] | None = None,
    ) -> None:
        if not saes:
            raise ValueError("saes is empty: the explorer needs at least one SAE.")
        for task, depth, model in saes:
            if depth not in layers:
                raise ValueError(f"No layer given for depth {depth!r} (layers: {dict(layers)}).")
            if (task, model) not in models:
                raise ValueError(f"No model given for ({task!r}, {model!r}).")
        for depth, layer in layers.items():
            if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
                raise TypeError(
                    f"layers[{depth!r}] must be an int (a hidden_states index), got "
                    f"{type(layer).__name__} {layer!r}"
                )
        for key, offered in (features or {}).items():
            if key not in saes:
                raise ValueError(f"features names {key!r}, which has no SAE in saes.")
            d_sae = saes[key].d_sae
            outside = [f for f in offered if not 0 <= int(f) < d_sae]
            if outside:
                raise ValueError(
                    f"features[{key!r}] offers {outside}, outside the SAE's latents 0..{d_sae - 1}."
                )
        max_length = validate.integer("max_length", max_length, minimum=2)
        if not isinstance(sentence, str):
            raise TypeError(
                f"sentence must be a str (the text shown first), got {type(sentence).__name__} "
                f"{sentence!r}"
            )
        self.saes = dict(saes)
        self.layers = dict(layers)
        self.models = dict(models)
        self.features = {k: [int(f) for f in v] for k, v in (features or {}).items()}
        self.feature_scale = dict(feature_scale or {})
        self.notes = dict(notes or {})
        self.preprocess = preprocess
        self.max_length = max_length
        if loader is None:
            loader = load_model
        self._load = lru_cache(maxsize=None)(loader)
        task, depth, model = next(iter(self.saes))
        key = (task, depth, model)
        first = self.features.get(key, [0])
        self.selection = Selection(task, depth, model, first[0] if first else 0, sentence)
        self._controls: dict[str, Any] | None = None
        self._output = None

    # --- options -------------------------------------------------------------------------
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.saes))

    def depths(self, task: str) -> list[str]:
        return list(dict.fromkeys(k[1] for k in self.saes if k[0] == task))

    def model_labels(self, task: str, depth: str) -> list[str]:
        return [k[2] for k in self.saes if k[0] == task and k[1] == depth]

    def feature_options(self, key: Key) -> list[tuple[str, int]]:
        """Dropdown entries for the offered features of one SAE: ``(label, index)``."""
        return [
            (f"#{f} (variance rank {i + 1})", f) for i, f in enumerate(self.features.get(key, []))
        ]

    # --- the numbers ---------------------------------------------------------------------
    def _sae(self, task: str, depth: str, model: str) -> SparseAutoencoder:
        try:
            return self.saes[(task, depth, model)]
        except KeyError:
            raise KeyError(f"No SAE for task {task!r}, depth {depth!r}, model {model!r}.") from None

    @torch.no_grad()
    def token_values(
        self, task: str, depth: str, model: str, feature: int, sentence: str
    ) -> tuple[list[str], np.ndarray]:
        """The sentence's tokens (after preprocessing) and the feature's value on each."""
        sae = self._sae(task, depth, model)
        if not 0 <= int(feature) < sae.d_sae:
            raise ValueError(f"feature must be in 0..{sae.d_sae - 1}, got {feature}")
        text = self.preprocess(sentence) if self.preprocess is not None else sentence
        if not text.strip():
            return [], np.zeros(0)
        net, tokenizer = self._load(self.models[(task, model)])
        layer = self._layer(depth, net)
        enc = tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = net(**enc, output_hidden_states=True)
        hidden = out.hidden_states[layer][0]
        values = sae.encode(hidden.float())[:, int(feature)].double().cpu().numpy()
        tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
        return tokens, values

    def _layer(self, depth: str, net: Any) -> int:
        """The ``hidden_states`` index of ``depth``, checked against the model that runs."""
        layer = self.layers[depth]
        states = getattr(getattr(net, "config", None), "num_hidden_layers", None)
        if states is not None and not -(states + 1) <= layer <= states:
            raise IndexError(
                f"layer {layer} (depth {depth!r}) is out of range: the model has {states + 1} "
                f"hidden states, valid layers are 0..{states} (0 = embeddings)."
            )
        return int(layer)

    def scale(self, key: Key, feature: int, values: np.ndarray) -> float:
        """The activation drawn at full colour: the feature's data-set scale if known, else the
        largest value on this sentence (1 when nothing fires)."""
        known = self.feature_scale.get(key)
        if known is not None and float(known[int(feature)]) > 0:
            return float(known[int(feature)])
        peak = float(np.max(values)) if len(values) else 0.0
        return peak if peak > 0 else 1.0

    # --- the picture ---------------------------------------------------------------------
    def render_html(self, task: str, depth: str, model: str, feature: int, sentence: str) -> str:
        """The selection as HTML: a header, one coloured cell per token (hover for the value)
        and the feature's note."""
        key = (task, depth, model)
        tokens, values = self.token_values(task, depth, model, feature, sentence)
        scale = self.scale(key, feature, values)
        cells = []
        for token, value in zip(tokens, values, strict=True):
            alpha = float(np.clip(value / scale, 0.0, 1.0))
            color = "white" if alpha > 0.6 else "black"
            cells.append(
                f'<span title="{value:.3f}" style="background: rgba(214, 39, 40, {alpha:.2f}); '
                f"color: {color}; padding: 2px 4px; margin: 1px; border-radius: 3px; "
                f'font-family: monospace; display: inline-block">{html.escape(token)}</span>'
            )
        peak = float(np.max(values)) if len(values) else 0.0
        header = (
            f"<b>{html.escape(task)}</b> · {html.escape(depth)} layer "
            f"({self.layers[depth]}) · {html.escape(model)} · feature #{int(feature)} · "
            f"max on this sentence {peak:.2f} (full colour = {scale:.2f})"
        )
        note = self.notes.get((task, depth, model, int(feature)))
        footer = (
            f'<div style="font-size: 85%; color: #555">{html.escape(note)}</div>' if note else ""
        )
        strip = "".join(cells) if cells else "<i>(no tokens)</i>"
        return f"<div>{header}</div><div style='margin: 4px 0'>{strip}</div>{footer}"

    # --- the widget ----------------------------------------------------------------------
    def widget(self):
        """The live explorer: dropdowns (task, depth, model, feature), a feature index box and a
        sentence box above the coloured strip. Every change calls :meth:`update`."""
        s = self.selection
        key = (s.task, s.depth, s.model)
        c = {
            "task": widgets.Dropdown(options=self.tasks(), value=s.task, description="task"),
            "depth": widgets.Dropdown(
                options=self.depths(s.task), value=s.depth, description="layer"
            ),
            "model": widgets.Dropdown(
                options=self.model_labels(s.task, s.depth), value=s.model, description="model"
            ),
            "top": widgets.Dropdown(
                options=self.feature_options(key) or [(f"#{s.feature}", s.feature)],
                value=s.feature if s.feature in self.features.get(key, []) else None,
                description="top features",
            ),
            "feature": widgets.BoundedIntText(
                value=s.feature, min=0, max=self._sae(*key).d_sae - 1, description="feature"
            ),
            "sentence": widgets.Text(
                value=s.sentence,
                description="sentence",
                continuous_update=False,
                layout=widgets.Layout(width="90%"),
            ),  # fmt: skip
        }
        self._controls = c
        self._output = widgets.HTML(value=self.render_html(*self._selection_tuple()))
        c["task"].observe(self._on_task, names="value")
        c["depth"].observe(self._on_key, names="value")
        c["model"].observe(self._on_key, names="value")
        c["top"].observe(self._on_top, names="value")
        c["feature"].observe(self.update, names="value")
        c["sentence"].observe(self.update, names="value")
        rows = [
            widgets.HBox([c["task"], c["depth"], c["model"]]),
            widgets.HBox([c["top"], c["feature"]]),
            c["sentence"],
            self._output,
        ]
        return widgets.VBox(rows)

    def _selection_tuple(self) -> tuple[str, str, str, int, str]:
        s = self.selection
        return s.task, s.depth, s.model, s.feature, s.sentence

    def _live_controls(self) -> dict[str, Any]:
        """The widget's controls (the callbacks run only once :meth:`widget` has built them)."""
        if self._controls is None:
            raise RuntimeError("The explorer has no widget yet; call widget() or show(live=True).")
        return self._controls

    def _on_task(self, change=None) -> None:
        c = self._live_controls()
        depths = self.depths(c["task"].value)
        keep = c["depth"].value if c["depth"].value in depths else depths[0]
        c["depth"].options = depths
        c["depth"].value = keep
        self._on_key()

    def _on_key(self, change=None) -> None:
        c = self._live_controls()
        models = self.model_labels(c["task"].value, c["depth"].value)
        if c["model"].value not in models or list(c["model"].options) != models:
            keep = c["model"].value if c["model"].value in models else models[0]
            c["model"].options = models
            c["model"].value = keep
        key = (c["task"].value, c["depth"].value, c["model"].value)
        options = self.feature_options(key)
        c["feature"].max = self._sae(*key).d_sae - 1
        if options:
            c["top"].options = options
            c["top"].value = options[0][1]  # triggers _on_top -> update
        else:
            self.update()

    def _on_top(self, change=None) -> None:
        c = self._live_controls()
        if c["top"].value is not None and c["feature"].value != c["top"].value:
            c["feature"].value = c["top"].value  # triggers update
        else:
            self.update()

    def update(self, change=None) -> str:
        """The widget callback: read the controls (if any), update :attr:`selection` and
        rewrite the output; returns the HTML shown. Without a widget it re-renders the
        current selection."""
        c = self._controls
        if c is not None:
            self.selection = Selection(
                c["task"].value,
                c["depth"].value,
                c["model"].value,
                int(c["feature"].value),
                c["sentence"].value,
            )
        try:
            out = self.render_html(*self._selection_tuple())
        except Exception as err:  # a widget callback shows the problem; raising would hide it
            log.info("explorer selection %s: %s", self.selection, err)
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            out = f"<span style='color: #b00'>{html.escape(str(message))}</span>"
        if self._output is not None:
            self._output.value = out
        return out

    def select(self, **changes: Any) -> str:
        """Change the selection in code (``select(depth="late", feature=12)``) and re-render;
        with a widget shown, the controls follow."""
        unknown = set(changes) - set(Selection.__dataclass_fields__)
        if unknown:
            raise TypeError(f"Unknown selection fields: {', '.join(sorted(unknown))}")
        chosen = Selection(**{**self.selection.__dict__, **changes})
        key = (chosen.task, chosen.depth, chosen.model)
        if key not in self.saes:
            for field, value, options in (
                ("task", chosen.task, self.tasks()),
                ("depth", chosen.depth, self.depths(chosen.task)),
                ("model", chosen.model, self.model_labels(chosen.task, chosen.depth)),
            ):
                if value not in options:
                    raise ValueError(
                        f"{field} {value!r} has no SAE here; choose one of {options} "
                        f"(task {chosen.task!r}, depth {chosen.depth!r})."
                    )
        feature = validate.integer("feature", chosen.feature)
        if not 0 <= feature < self.saes[key].d_sae:
            raise ValueError(
                f"feature must be in 0..{self.saes[key].d_sae - 1} for {key}, got {feature}"
            )
        if not isinstance(chosen.sentence, str):
            raise TypeError(f"sentence must be a str, got {chosen.sentence!r}")
        self.selection = chosen
        if self._controls is not None:
            c, s = self._controls, self.selection
            c["task"].value, c["depth"].value, c["model"].value = s.task, s.depth, s.model
            c["feature"].value, c["sentence"].value = s.feature, s.sentence
        return self.update()

    def show(self, live: bool | None = None) -> None:
        """Display the explorer: the live widget when ``live`` (default: when a widget frontend
        is attached, see :func:`widget_frontend_attached`), else a static HTML picture of the
        current selection."""
        if live is None:
            live = widget_frontend_attached()
        if live:
            display(self.widget())
        else:
            note = (
                "<div style='font-size: 85%; color: #555'>Static picture of the explorer's "
                "current selection (no widget frontend attached). Open the notebook in "
                "JupyterLab and run this cell for the live controls.</div>"
            )
            display(HTML(self.render_html(*self._selection_tuple()) + note))
