"""summaries.overview: the verdict rules on hand-made findings, missing files, the markdown, and
notebook 00 executed against a temporary findings folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repgeo_utils.config import ROOT
from repgeo_utils.report import Findings
from repgeo_utils.summaries import overview as ov


def _toy(paper: str, ours: str, controls: str = "no fall") -> Findings:
    f = Findings("07_toy_model_phases")
    f.verdict("paper.verdict", paper)
    f.verdict("paper.reproduction", {"rises then falls": "reproduced", "no fall": "not reproduced"}
              .get(paper, "reproduced on some seeds only"))  # fmt: skip
    f.verdict("ours.verdict", ours)
    for c in ("MSE loss", "no bottleneck", "uniform classes"):
        f.verdict(f"control.{c}", controls)
    return f


def _phases(quick: str, seeds: str) -> Findings:
    f = Findings("06_pretraining_phases")
    f.verdict("quick.compression", quick)
    f.verdict("standard.compression_seeds", seeds)
    return f


def _verdicts(*found: Findings) -> dict[str, str]:
    table = ov.overview_table({f.notebook: f for f in found})
    return {f"{r['paper']}:{r['item']}": r["verdict"] for _, r in table.iterrows()}


def test_nothing_run_yet_never_crashes():
    v = _verdicts()
    assert v["2:Figs 1-2"] == v["1:Table 2"] == v["2:Fig 5B-D"] == "not run yet"
    # the two items without an offline counterpart need no findings
    assert [k for k, x in v.items() if x != "not run yet"] == ["1:Fig 2", "2:Fig 10"]
    assert v["1:Fig 2"] == v["2:Fig 10"] == "paper profile only"


@pytest.mark.parametrize(
    ("quick", "seeds", "want"),
    [
        ("compression present", "2 of 2", "reproduced"),
        ("no compression beyond the noise", "2 of 2", "reproduced differently"),
        ("compression present", "1 of 2", "reproduced differently"),
        ("compression present", "0 of 2", "reproduced differently"),
        ("no compression beyond the noise", "0 of 2", "not reproduced"),
    ],
)
def test_phases_rule(quick, seeds, want):
    assert _verdicts(_phases(quick, seeds))["2:Figs 1-2"] == want


def test_phases_without_the_recorded_run_is_not_run_yet():
    f = Findings("06_pretraining_phases")
    f.verdict("quick.compression", "compression present")
    table = ov.overview_table({f.notebook: f})
    row = table[table["item"] == "Figs 1-2"].iloc[0]
    assert row["verdict"] == "not run yet"
    assert "standard.compression_seeds" in row["evidence"]
    assert table[table["item"] == "Fig 3"].iloc[0]["verdict"] == "shown, not judged"


@pytest.mark.parametrize(
    ("paper", "ours", "controls", "fig5a", "fig12"),
    [
        ("rises then falls", "rises then falls", "no fall", "reproduced", "reproduced"),
        ("no fall", "rises then falls", "no fall", "reproduced differently", "reproduced differently"),
        ("rises then falls on 2 of 5 seeds", "no fall", "no fall", "reproduced differently",
         "not reproduced"),
        ("no fall", "no fall", "no fall", "not reproduced", "not reproduced"),
        ("rises then falls", "rises then falls", "rises then falls", "reproduced", "not reproduced"),
    ],
)  # fmt: skip
def test_toy_rules(paper, ours, controls, fig5a, fig12):
    v = _verdicts(_toy(paper, ours, controls))
    assert v["2:section 3.3, Fig 5A"] == fig5a
    assert v["2:Fig 12"] == v["2:Fig 13"] == fig12


def _finetuning(learned: str, accuracies: dict[str, tuple[float, float]], weakest: str) -> Findings:
    f = Findings("01_finetuning")
    for task, (pre, post) in accuracies.items():
        f.number(f"{task}.pre_accuracy", pre)
        f.number(f"{task}.post_accuracy", post)
    f.verdict("tweets-3way.lowest_recall_class", weakest)
    f.verdict("every_task_learned", learned)
    return f


def test_finetuning_rules():
    acc = {"tweets-binary": (0.5, 0.8), "tweets-3way": (0.4, 0.6)}
    v = _verdicts(_finetuning("yes", acc, "neutral"))
    assert (v["1:Table 2"], v["1:Fig 6"]) == ("reproduced", "reproduced")
    v = _verdicts(_finetuning("no", {**acc, "bbc-news": (0.3, 0.3)}, "negative"))
    assert (v["1:Table 2"], v["1:Fig 6"]) == ("reproduced differently", "reproduced differently")
    v = _verdicts(_finetuning("no", {"tweets-3way": (0.4, 0.39)}, "neutral"))
    assert v["1:Table 2"] == "not reproduced"


def test_similarity_rule_counts_curves():
    f = Findings("02_activation_similarity")
    f.verdict("falls_with_depth", "no")
    f.number("a.cka.layer0", 1.0)
    f.number("a.cka.layer6", 0.5)  # falls
    f.number("b.cka.layer0", 0.9)
    f.number("b.cka.layer6", 0.95)  # rises
    table = ov.overview_table({f.notebook: f})
    row = table[table["item"] == "Fig 1"].iloc[0]
    assert row["verdict"] == "reproduced differently"
    assert "1 of 2" in row["evidence"]


def test_posttraining_rules():
    f = Findings("08_post_training_geometry")
    for stage, word in (("sft", "direction as in the paper"), ("dpo", "change within seed spread"),
                        ("rl", "direction as in the paper")):  # fmt: skip
        f.verdict(f"standard.no_KL.{stage}.rankme_covariance_probe.verdict", word)
    f.verdict("standard.checkpoint_sft.id_nll_vs_step", "as in the paper (rho = -0.90, p = 0.01)")
    f.verdict("standard.checkpoint_sft.ood_nll_vs_step", "as in the paper (rho = +0.90, p = 0.01)")
    f.verdict(
        "standard.no_KL.pass_at_k", "no clear change of pass@1 or pass@K beyond the seed spread"
    )
    v = _verdicts(f)
    assert (v["2:Fig 6A"], v["2:Fig 6B"], v["2:Fig 6C"]) == (
        "reproduced differently", "reproduced", "not reproduced",
    )  # fmt: skip
    f.verdict(
        "standard.with_KL.pass_at_k", "RL wins at k = 1 without a clear loss at the largest k"
    )
    assert _verdicts(f)["2:Fig 6C"] == "reproduced differently"


def test_markdown_groups_by_paper_and_counts():
    md = ov.overview_markdown({"06_pretraining_phases": _phases("compression present", "2 of 2")})
    assert md.index("### Paper 1") < md.index("### Paper 2")
    assert "| Figs 1-2 |" in md and "**reproduced**" in md
    n = len(ov.ITEMS)
    assert md.endswith(f"{n} items: 1 reproduced, 2 shown, not judged, 2 paper profile only, "
                       f"{n - 5} not run yet.")  # fmt: skip


def test_load_all_reads_only_existing_files(tmp_path):
    _phases("compression present", "1 of 2").save(tmp_path)
    found = ov.load_all(folder=tmp_path)
    assert list(found) == ["06_pretraining_phases"]
    assert found["06_pretraining_phases"]["standard.compression_seeds"].value == "1 of 2"


def test_unknown_notebook_is_named():
    with pytest.raises(ValueError, match="10_nope"):
        ov.overview_table({"10_nope": Findings("10_nope")})


def test_notebook_00_runs_on_a_findings_folder(tmp_path):
    papermill = shutil.which("papermill", path=str(Path(sys.executable).parent))
    if papermill is None:
        pytest.skip("papermill is not installed")
    _phases("compression present", "2 of 2").save(tmp_path)
    out = tmp_path / "00_out.ipynb"
    subprocess.run(
        [papermill, str(ROOT / "notebooks" / "00_overview.ipynb"), str(out), "-k", "repgeo",
         "--cwd", str(ROOT / "notebooks"), "-p", "FINDINGS_DIR", str(tmp_path)],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    text = "".join(
        "".join(o.get("text", ""))
        for c in json.loads(out.read_text())["cells"]
        for o in c.get("outputs", [])
    )
    assert "findings files read: 06_pretraining_phases" in text
    assert "Figs 1-2             06_pretraining_phases       reproduced" in text
    assert f"{len(ov.ITEMS)} items: 1 reproduced," in text
