"""The SAE feature explorer (notebook 04's last tool) in a real browser: JupyterLab on a free
local port with a token, headless Chromium driven by Playwright, the explorer cell run, the
feature, the layer and the sentence changed through the widgets, and the rendered token strip
checked against the package's own computation (:meth:`FeatureExplorer.token_values`) for each
selection. A screenshot of each step is kept under ``build/test-artifacts/``.

What it needs, and where it comes from: the ``playwright`` Python package (the ``dev`` extra;
its browser download is never used) and a Chromium on the machine (Debian's ``chromium``
package: ``make setup`` installs it where it runs as root with apt; elsewhere install it by
hand or point ``REPGEO_CHROMIUM`` at a Chromium or Chrome binary). Without either the test
skips and says which is missing.

The notebook is built cheaply: a copy of notebook 04's explorer cell (``explorer.show(...)``
with ``live=None``, so the widgets appear only because a real frontend is attached) on SAEs of
two tiny BERTs written by the test, so it does not need notebook 03's cached grid. Measured on
the 2-core machine under a load of about 14 (other notebooks running): 194 s in all, of which
116 s in the browser (JupyterLab's first page load, the kernel's torch import, four renders).

It found that the explorer never went live in a new JupyterLab session (the widget manager
opens its control comm only when it reconnects to a running kernel); ``widget_frontend_attached``
now also reads the server's ``JPY_SESSION_NAME``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
KERNEL = "repgeo-browser-test"
SENTENCE = "the movie was great but the plot was terrible"
SENTENCE_2 = "i love this phone and the music app"
#: seconds for JupyterLab to answer, the kernel to run the cell, a widget change to render
SERVER_TIMEOUT = 180
CELL_TIMEOUT_MS = 120_000
CHANGE_TIMEOUT_MS = 60_000


def find_chromium() -> str | None:
    """``REPGEO_CHROMIUM``, else the first of Debian's and Chrome's binary names on PATH."""
    named = os.environ.get("REPGEO_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    debian = Path("/usr/lib/chromium/chromium")  # the binary behind Debian's wrapper script
    if debian.is_file():
        return str(debian)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (pip install playwright, or make setup): the browser "
    "test of the explorer needs it",
)
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (apt-get install chromium, or set REPGEO_CHROMIUM to a Chromium "
    "binary): the browser test of the explorer needs one",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- what the notebook shows -----------------------------------------------------------------


def write_explorer_inputs(folder: Path, bert_pre: Path, bert_post: Path) -> dict:
    """Two untrained SAEs per model (layers 1 and 2 of the tiny BERTs), saved to ``folder``;
    returns the spec the notebook cell reads. Untrained SAEs are enough: the test checks that
    the browser shows what the package computes, not what the features mean."""
    from repgeo_utils.sae import SAEConfig, SparseAutoencoder, save_sae

    spec: dict = {
        "layers": {"early": 1, "late": 2},
        "models": {"toy|pre-trained": str(bert_pre), "toy|fine-tuned": str(bert_post)},
        "saes": {},
        "sentence": SENTENCE,
    }
    for i, (depth, model) in enumerate(
        [(d, m) for d in ("early", "late") for m in ("pre-trained", "fine-tuned")]
    ):
        torch.manual_seed(i)
        sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=24, seed=i))
        path = folder / f"sae_{depth}_{model}"
        save_sae(sae, path)
        spec["saes"][f"toy|{depth}|{model}"] = str(path)
    return spec


def load_explorer(spec: dict, features: dict | None = None):
    """The explorer the notebook cell builds (the same code runs in the kernel)."""
    from repgeo_utils.explorer import FeatureExplorer
    from repgeo_utils.sae import load_sae

    saes = {tuple(k.split("|")): load_sae(p) for k, p in spec["saes"].items()}
    models = {tuple(k.split("|")): p for k, p in spec["models"].items()}
    offered = {tuple(k.split("|")): v for k, v in (features or spec.get("features", {})).items()}
    return FeatureExplorer(
        saes, spec["layers"], models, features=offered, max_length=32, sentence=spec["sentence"]
    )


def offered_features(explorer) -> dict[str, list[int]]:
    """For each SAE, its three latents with the largest summed activation on the sentence (so
    each strip has tokens that fire), as notebook 04 offers its top-variance features."""
    out = {}
    for task, depth, model in explorer.saes:
        sae = explorer.saes[(task, depth, model)]
        sums = np.zeros(sae.d_sae)
        for f in range(sae.d_sae):
            sums[f] = explorer.token_values(task, depth, model, f, SENTENCE)[1].sum()
        out[f"{task}|{depth}|{model}"] = [int(f) for f in np.argsort(-sums)[:3]]
    return out


EXPLORER_CELL = """\
import json
from pathlib import Path

from repgeo_utils.explorer import FeatureExplorer
from repgeo_utils.sae import load_sae

spec = json.loads(Path("explorer_spec.json").read_text())
split = lambda mapping: {tuple(k.split("|")): v for k, v in mapping.items()}
explorer = FeatureExplorer({k: load_sae(p) for k, p in split(spec["saes"]).items()}, spec["layers"],
                           split(spec["models"]), features=split(spec["features"]), max_length=32,
                           sentence=spec["sentence"])
explorer.select(task="toy", depth="late", model="fine-tuned", feature=spec["features"]["toy|late|fine-tuned"][0])
explorer.show(live=None)  # notebook 04's call: live widgets only when a frontend is attached
"""


def write_notebook(folder: Path) -> Path:
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "explorer",
                "metadata": {},
                "outputs": [],
                "source": EXPLORER_CELL.splitlines(keepends=True),
            }
        ],
        "metadata": {
            "kernelspec": {
                "name": KERNEL,
                "display_name": "repgeo (browser test)",
                "language": "python",
            }
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = folder / "explorer.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    return path


# --- the server --------------------------------------------------------------------------------


class Lab:
    def __init__(self, root: Path, jupyter_dir: Path, env: dict[str, str]):
        self.port = free_port()
        self.token = os.urandom(16).hex()
        kernels = jupyter_dir / "share" / "kernels" / KERNEL
        kernels.mkdir(parents=True)
        (kernels / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "repgeo (browser test)",
                    "language": "python",
                }
            )
        )
        env = {
            **env,
            "JUPYTER_PATH": str(jupyter_dir / "share"),
            "JUPYTER_CONFIG_DIR": str(jupyter_dir / "config"),
            "JUPYTER_RUNTIME_DIR": str(jupyter_dir / "runtime"),
        }
        self.log = (jupyter_dir / "lab.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "jupyter", "lab", "--no-browser",
                "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
                f"--LabApp.workspaces_dir={jupyter_dir / 'workspaces'}",
                "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            env=env, cwd=root, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.jupyter_dir = jupyter_dir

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}?token={self.token}"

    def wait(self) -> None:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with {self.process.returncode}: {self.tail()}"
                )
            try:
                with urllib.request.urlopen(self.url("/api/status"), timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"JupyterLab did not answer in {SERVER_TIMEOUT} s: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return (self.jupyter_dir / "lab.log").read_text()[-3000:]

    def stop(self) -> None:
        """Shut the server down (it stops its kernels), then end its process group."""
        if self.process.poll() is None:
            try:
                request = urllib.request.Request(self.url("/api/shutdown"), method="POST")
                urllib.request.urlopen(request, timeout=10).close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
def lab(tmp_path, tiny_bert_factory):
    from conftest import make_tiny_bert

    root = tmp_path / "lab"
    root.mkdir()
    bert_pre = tiny_bert_factory(2, 16)
    bert_post = make_tiny_bert(tmp_path / "bert-post", layers=2, hidden=16, seed=1)
    spec = write_explorer_inputs(tmp_path, bert_pre, bert_post)
    spec["features"] = offered_features(load_explorer(spec, features={}))
    (root / "explorer_spec.json").write_text(json.dumps(spec))
    write_notebook(root)
    server = Lab(root, tmp_path / "jupyter", dict(os.environ))
    try:
        server.wait()
        yield server, spec
    finally:
        server.stop()
    assert server.process.poll() is not None, "the JupyterLab server is still running"


# --- the test ----------------------------------------------------------------------------------


def _dropdown(page, label: str):
    return page.locator(f".widget-dropdown:has(label:text-is('{label}')) select")


def _strip(page) -> tuple[str, list[str], list[float]]:
    """The explorer output's header, tokens and per-token values (each token's title)."""
    out = page.locator(".widget-html-content").last
    header = out.locator("div").first.inner_text()
    spans = out.locator("span[title]")
    tokens = spans.all_inner_texts()
    values = [float(v) for v in spans.evaluate_all("els => els.map(e => e.title)")]
    return header, tokens, values


def _wait_for_header(page, text: str) -> None:
    page.locator(".widget-html-content", has_text=text).last.wait_for(timeout=CHANGE_TIMEOUT_MS)


def _check(page, explorer, depth: str, feature: int, sentence: str) -> list[float]:
    """The strip shown is the package's own computation for (late/early, fine-tuned, feature)."""
    header, tokens, values = _strip(page)
    layer = explorer.layers[depth]
    assert f"{depth} layer ({layer})" in header and f"feature #{feature} ·" in header, header
    expected_tokens, expected = explorer.token_values("toy", depth, "fine-tuned", feature, sentence)
    assert tokens == expected_tokens
    np.testing.assert_allclose(values, expected, atol=2e-3)
    return values


def test_explorer_in_jupyterlab_in_chromium(lab):
    server, spec = lab
    explorer = load_explorer(spec)
    features = spec["features"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(server.url("/lab/tree/explorer.ipynb"))
            page.wait_for_function("() => window.jupyterapp !== undefined", timeout=CELL_TIMEOUT_MS)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=CELL_TIMEOUT_MS)
            # the kernel is up when the status bar says so; then run the cell as a person does
            page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(
                timeout=CELL_TIMEOUT_MS
            )
            page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()
            page.keyboard.press("Shift+Enter")
            # the live widget, not the static picture: a frontend is attached
            _dropdown(page, "top features").wait_for(timeout=CELL_TIMEOUT_MS)
            assert page.locator("text=Static picture").count() == 0
            first = features["toy|late|fine-tuned"][0]
            _wait_for_header(page, f"feature #{first} ·")
            before = _check(page, explorer, "late", first, SENTENCE)
            page.screenshot(path=str(ARTIFACTS / "explorer_1_first.png"), full_page=True)

            # another feature through the top-features dropdown
            second = features["toy|late|fine-tuned"][1]
            _dropdown(page, "top features").select_option(index=1)
            _wait_for_header(page, f"feature #{second} ·")
            after = _check(page, explorer, "late", second, SENTENCE)
            assert not np.allclose(before, after), "another feature drew the same strip"
            page.screenshot(path=str(ARTIFACTS / "explorer_2_feature.png"), full_page=True)

            # another layer: the explorer offers that SAE's first feature
            _dropdown(page, "layer").select_option("early")
            early = features["toy|early|fine-tuned"][0]
            _wait_for_header(page, "early layer (1)")
            _wait_for_header(page, f"feature #{early} ·")
            _check(page, explorer, "early", early, SENTENCE)
            page.screenshot(path=str(ARTIFACTS / "explorer_3_layer.png"), full_page=True)

            # another sentence: other tokens
            box = page.locator(".widget-text:has(label:text-is('sentence')) input")
            box.fill(SENTENCE_2)
            box.press("Enter")
            _wait_for_header(page, f"feature #{early} ·")
            page.locator(".widget-html-content span[title]", has_text="phone").first.wait_for(
                timeout=CHANGE_TIMEOUT_MS
            )
            _check(page, explorer, "early", early, SENTENCE_2)
            page.screenshot(path=str(ARTIFACTS / "explorer_4_sentence.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "explorer_failure.png"), full_page=True)
            print(server.tail())
            raise
        finally:
            browser.close()
    print(f"browser part: {time.perf_counter() - started:.1f} s")
