"""The one-command standard run, on its tiny setting: the same code path as `make standard`,
in seconds, so that the path never rots."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from repgeo_utils.config import ROOT
from repgeo_utils.lm import standard as S

pytest.importorskip("infini_gram")

#: Every table the run writes, with columns a reader of the recorded run relies on.
TABLES = {
    "checkpoints": ["seed", "step", "layer", "loss", "rankme_covariance", "alpha"],
    "phases": ["seed", "metric", "peak", "final", "fall", "checkpoint_noise"],
    "noise": ["quantity", "mean", "sd", "metric"],
    "phase_segments": ["metric", "phase", "start_step", "end_step"],
    "alpha_by_phase": ["phase", "mean"],
    "train_loss": ["seed", "step", "loss"],
    "memorization": ["split", "step", "spearman", "spearman_spread", "rankme_covariance"],
    "suffix_lengths": ["split", "suffix_length", "percent"],
    "downstream": ["task", "step", "probe_accuracy", "few_shot_accuracy", "chance"],
    "correlations": ["task", "measure", "against", "spearman", "spearman_p", "pearson_p"],
    "generations": ["step", "prompt", "continuation", "distinct_1", "repeated_share"],
    "repetition": ["step", "distinct_1", "rankme_covariance"],
    "checkpoint_sft": ["step", "id_nll", "ood_nll", "id_nll_base", "phase", "alpha"],
    "posttrain_changes": ["variant", "seed", "stage", "measure", "change"],
    "posttrain_summary": ["variant", "stage", "measure", "change_mean", "change_sd", "direction"],
    "posttrain_trajectory": ["variant", "seed", "stage", "step", "id_nll"],
    "pass_at_k": ["k", "pass_at_k", "checkpoint", "variant"],
    "pass_at_k_solved": ["checkpoint", "variant", "seed"],
    "posttrain_seconds": ["variant", "seed", "stage", "seconds"],
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recorded") / "tiny"
    data = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPGEO_DATA_DIR", str(data))
        S.main(["--setting", "tiny", "--out", str(out)])
    return out


def test_the_tiny_setting_writes_every_table_and_the_record(tiny_run):
    for name, columns in TABLES.items():
        table = pd.read_csv(tiny_run / f"{name}.csv")
        assert len(table), name
        missing = set(columns) - set(table.columns)
        assert not missing, (name, missing)
    run = json.loads((tiny_run / "run.json").read_text())
    assert run["command"].startswith("python -m repgeo_utils.lm.standard --setting tiny --out ")
    assert len(run["git"]["commit"]) == 40
    assert run["machine_start"]["gemm_gflops"] > 0 and run["machine_start"]["cores"] >= 1
    assert run["seconds_total"] > 0 and "SFT from checkpoints" in run["seconds"]
    assert set(run["pretraining"]) == {"0", "1"}  # the main seed and one noise seed
    assert sorted(run["files"]) == sorted(f"{n}.csv" for n in TABLES)
    recorded = S.load_recorded(tiny_run)
    assert "python -m repgeo_utils.lm.standard --setting tiny" in recorded.label()
    assert set(recorded.table("checkpoints")["seed"]) == {0, 1}
    with pytest.raises(FileNotFoundError, match="the run has"):
        recorded.table("nothing")


def test_tables_hold_sensible_values(tiny_run):
    check = pd.read_csv(tiny_run / "checkpoints.csv")
    assert (check["rankme_covariance"] >= 1).all()
    memo = pd.read_csv(tiny_run / "memorization.csv")
    assert set(memo["split"]) == {"held-out", "training"}
    assert memo["spearman"].between(-1, 1).all()
    down = pd.read_csv(tiny_run / "downstream.csv")
    assert down["probe_accuracy"].between(0, 1).all() and down["chance"].between(0, 1).all()
    passk = pd.read_csv(tiny_run / "pass_at_k.csv")
    random = passk[passk["checkpoint"] == "random guess"]
    assert len(random) == S.STANDARD_SETTINGS["tiny"].n_samples
    summary = pd.read_csv(tiny_run / "posttrain_summary.csv")
    assert set(summary["variant"]) == {"no KL", "KL 0.04"}


def test_make_standard_runs_the_same_command():
    makefile = (ROOT / "Makefile").read_text()
    assert "-m repgeo_utils.lm.standard --setting standard --out data/recorded/standard" in makefile


def test_the_recorded_standard_run_has_every_table():
    folder = S.RECORDED_DIR / "standard"
    if not (folder / "run.json").is_file():
        pytest.skip("no recorded standard run in this checkout")
    run = json.loads((folder / "run.json").read_text())
    assert run["setting"] == "standard"
    # a recording without post-training seeds says so in run.json and has no post-training tables
    expected = [
        n
        for n in TABLES
        if "skipped" not in run["posttrain"] or not n.startswith(("posttrain", "pass_at_k"))
    ]
    assert set(run["files"]) == {f"{n}.csv" for n in expected}
    for name in expected:
        assert (folder / f"{name}.csv").is_file(), name


def test_settings_refuse_bad_values():
    tiny = S.STANDARD_SETTINGS["tiny"]
    from dataclasses import replace

    with pytest.raises(ValueError, match="repeat the main seed"):
        replace(tiny, noise_seeds=(0,))
    with pytest.raises(ValueError, match="two distinct seeds or more"):
        replace(tiny, posttrain_seeds=(3,))
    with pytest.raises(TypeError, match="has no setting 'worker'"):
        replace(tiny, worker=2)
    with pytest.raises(ValueError, match="setting must be one of"):
        S.get_setting("huge")


def test_post_training_seeds_none_or_two_distinct():
    from dataclasses import replace

    from repgeo_utils.lm.standard import STANDARD_SETTINGS

    tiny = STANDARD_SETTINGS["tiny"]
    assert replace(tiny, posttrain_seeds=()).posttrain_seeds == ()  # post-training left out
    for bad in ((0,), (1, 1)):
        with pytest.raises(ValueError, match="two distinct seeds or more"):
            replace(tiny, posttrain_seeds=bad)
