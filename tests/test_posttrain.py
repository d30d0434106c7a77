"""Post-training stages: pass@k and the reward against hand values, prompt data, and tiny real
SFT -> DPO -> GRPO runs that write loadable, cached, resumable checkpoints."""

from __future__ import annotations

import dataclasses
from math import comb

import numpy as np
import pandas as pd
import pytest
import torch

from repgeo_utils import lm
from repgeo_utils import posttrain as PT
from repgeo_utils.models import load_model
from repgeo_utils.posttrain.tasks import _fit_prompt

# --- pass@k ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 2 / 5),  # one draw: the share of correct samples
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # only 3 wrong samples: any 4 include a correct one
        (5, 0, 3, 0.0),
        (10, 1, 10, 1.0),  # k = n with c > 0
        (4, 4, 1, 1.0),
        (200, 1, 1, 1 / 200),
        (16, 3, 4, 1 - 715 / 1820),  # C(13,4) = 715, C(16,4) = 1820
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert PT.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_formula_for_large_n():
    n = 256
    for c in (0, 1, 7, 100, 255):
        for k in (1, 16, 64, 200):
            exact = 1.0 if n - c < k else 1 - comb(n - c, k) / comb(n, k)
            assert PT.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("args", [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_counts(args):
    with pytest.raises(ValueError, match="pass@k needs"):
        PT.pass_at_k(*args)
    with pytest.raises(TypeError):
        PT.pass_at_k(5, 2.0, 1)


def test_pass_at_k_curve_averages_problems():
    curve = PT.pass_at_k_curve([0, 5, 1], n=5)
    assert list(curve["k"]) == [1, 2, 3, 4, 5]
    # k=1: (0 + 1 + 1/5) / 3 ; k=5: (0 + 1 + 1) / 3
    assert curve["pass_at_k"].iloc[0] == pytest.approx((0 + 1 + 0.2) / 3)
    assert curve["pass_at_k"].iloc[-1] == pytest.approx(2 / 3)
    assert np.all(np.diff(curve["pass_at_k"]) >= 0)
    with pytest.raises(ValueError, match="at least one problem"):
        PT.pass_at_k_curve([], n=4)


# --- reward ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, answer, reward",
    [
        (" business", "business", 1.0),
        ("business", "business", 1.0),
        (" Business.", "business", 1.0),
        (" business\nHeadline: more text", "business", 1.0),
        ("\n business", "business", 1.0),
        (" business news", "business", 0.0),
        (" busines", "business", 0.0),
        (" sport", "business", 0.0),
        ("", "business", 0.0),
        ("   ", "business", 0.0),
        ([{"role": "assistant", "content": " Sport"}], "sport", 1.0),
    ],
)
def test_exact_match_reward_on_hand_cases(completion, answer, reward):
    assert PT.exact_match_reward([completion], [answer]) == [reward]


def test_exact_match_reward_takes_trl_keyword_columns_and_checks_lengths():
    out = PT.exact_match_reward(
        completions=[" tech", " politics"], answer=["tech", "sport"], prompts=["a", "b"]
    )
    assert out == [1.0, 0.0]
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        PT.exact_match_reward([" a", " b"], ["a"])


# --- configuration and data --------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"id_task": "imdb"}, "unknown prompt task 'imdb'"),
        ({"ood_task": "bbc-news"}, "must differ"),
        ({"max_prompt_tokens": 64}, "max_prompt_tokens < max_length"),
        ({"sft": {"steps": 0}}, "sft must be a SFTSettings"),
    ],
)
def test_bad_configs_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        PT.PosttrainConfig(**overrides)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PT.SFTSettings(steps=0), "steps must be an int >= 1, got 0"),
        (lambda: PT.DPOSettings(beta=0.0), "beta must be a finite number > 0, got 0"),
        (lambda: PT.RLSettings(batch_size=10, num_generations=4), "multiple of"),
        (lambda: PT.RLSettings(num_generations=1), "num_generations must be an int >= 2"),
        (lambda: PT.RLSettings(learning_rate=0.0), "learning_rate must be a finite number > 0"),
    ],
)
def test_bad_stage_settings_fail_clearly(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unknown_setting_name_fails_clearly():
    with pytest.raises(ValueError, match="Unknown post-training setting 'huge'"):
        PT.posttrain("huge")


#: a tiny base LM: 1 layer, hidden 16, context 64 (room for the prompts), 6 steps.
TINY_BASE = lm.PretrainConfig(
    seed=1,
    vocab_size=300,
    num_layers=1,
    hidden_size=16,
    num_heads=2,
    context_length=64,
    steps=6,
    batch_size=4,
    learning_rate=1e-2,
    warmup_fraction=0.2,
    checkpoint_every=4,
    max_documents=60,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny base model, post-trained with the ``tiny`` setting (all in one data folder)."""
    root = tmp_path_factory.mktemp("posttrain-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPGEO_DATA_DIR", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        threads = torch.get_num_threads()
        base = lm.pretrain(TINY_BASE, num_threads=1, progress=False)
        config = dataclasses.replace(PT.POSTTRAIN_SETTINGS["tiny"], base_model=str(base.run_folder))
        result = PT.posttrain(config, progress=False)
        assert torch.get_num_threads() == threads  # restored
    return root, base, config, result


def test_prompt_data_fits_the_context_and_keeps_the_labels(tiny_run):
    _, base, config, result = tiny_run
    _, tokenizer = load_model(base.run_folder, kind="causal-lm")
    data = result.id_data
    assert data.answers == ["business", "entertainment", "politics", "sport", "tech"]
    assert len(data.train) > 5 * len(data.test) > 0
    for row in data.train + data.test:
        assert row["prompt"].startswith("Headline: ") and row["prompt"].endswith("\nTopic:")
        assert row["answer"] in data.answers
        n = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
        assert n <= config.max_prompt_tokens
    assert result.ood_data.answers == ["negative", "neutral", "positive"]
    assert result.ood_data.test[0]["prompt"].startswith("Tweet: ")
    # a prompt that has to be cut loses words at the end, never the template
    long_text = " ".join(["markets"] * 200)
    cut = _fit_prompt(tokenizer, PT.PROMPT_TASKS["bbc-news"], long_text, 20)
    assert cut.endswith("\nTopic:") and len(tokenizer(cut)["input_ids"]) <= 20


def test_dpo_pairs_reject_a_seeded_wrong_answer(tiny_run):
    data = tiny_run[3].id_data
    pairs = PT.dpo_pairs(data, seed=5)
    assert len(pairs) == len(data.train)
    for pair, row in zip(pairs, data.train, strict=True):
        assert pair["chosen"] == " " + row["answer"]
        assert pair["rejected"].strip() in data.answers
        assert pair["rejected"] != pair["chosen"]
    assert pairs == PT.dpo_pairs(data, seed=5)
    assert pairs != PT.dpo_pairs(data, seed=6)


# --- tiny real stages --------------------------------------------------------------------------


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_each_stage_writes_loadable_checkpoints_chained_to_the_previous_stage(tiny_run):
    _, base, config, result = tiny_run
    assert set(result.stages) == {"sft", "dpo", "rl"}
    for stage in PT.STAGES:
        settings = getattr(config, stage)
        expected = [
            f"step{s}" for s in lm.checkpoint_schedule(settings.steps, 2 if stage != "sft" else 3)
        ]
        assert result.revisions(stage) == expected
        for rev in expected:
            model, tok = load_model(result.stages[stage], rev, kind="causal-lm")
            assert model.config.hidden_size == 16
    base_model, _ = load_model(base.run_folder, kind="causal-lm")
    sft0, _ = load_model(result.stages["sft"], "step0", kind="causal-lm")
    sft_end, _ = load_model(result.stages["sft"], kind="causal-lm")
    sft_last, _ = load_model(result.stages["sft"], f"step{config.sft.steps}", kind="causal-lm")
    dpo0, _ = load_model(result.stages["dpo"], "step0", kind="causal-lm")
    rl0, _ = load_model(result.stages["rl"], "step0", kind="causal-lm")
    dpo_end, _ = load_model(result.stages["dpo"], kind="causal-lm")
    for key, value in _weights(base_model).items():  # SFT starts from the base
        assert torch.equal(value, _weights(sft0)[key])
    w_end = _weights(sft_end)
    assert all(torch.equal(v, w_end[k]) for k, v in _weights(sft_last).items())
    assert any(not torch.equal(v, w_end[k]) for k, v in _weights(sft0).items())  # it trained
    assert all(torch.equal(v, w_end[k]) for k, v in _weights(dpo0).items())  # DPO starts there
    w_dpo = _weights(dpo_end)
    assert all(torch.equal(v, w_dpo[k]) for k, v in _weights(rl0).items())
    history = result.history()
    assert {"sft", "dpo", "rl"} <= set(history["stage"])
    assert history.loc[history.stage == "rl", "reward"].notna().any()
    assert all(s >= 0 for s in result.seconds.values())


def test_a_rerun_reuses_every_stage_and_an_interrupted_stage_keeps_the_earlier_ones(
    tiny_run, monkeypatch
):
    root, _, config, result = tiny_run
    monkeypatch.setenv("REPGEO_DATA_DIR", str(root))
    again = PT.posttrain(config, progress=False)
    assert again.cached == {"sft": True, "dpo": True, "rl": True}
    assert again.stages == result.stages

    # a different RL setting retrains only RL; when it fails, SFT and DPO stay cached and no
    # half-written RL stage is left behind
    import trl

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt("stopped by the user")

    changed = dataclasses.replace(config, rl=dataclasses.replace(config.rl, learning_rate=2e-3))
    monkeypatch.setattr(trl.GRPOTrainer, "train", boom)
    before = set((root / "cache" / "posttrain").iterdir())
    with pytest.raises(KeyboardInterrupt):
        PT.posttrain(changed, progress=False)
    after = {p for p in (root / "cache" / "posttrain").iterdir() if not p.name.endswith(".lock")}
    assert after == {p for p in before if not p.name.endswith(".lock")}
    monkeypatch.undo()
    monkeypatch.setenv("REPGEO_DATA_DIR", str(root))
    finished = PT.posttrain(changed, progress=False)
    assert finished.cached == {"sft": True, "dpo": True, "rl": False}
    assert finished.stages["dpo"] == result.stages["dpo"]
    assert finished.stages["rl"] != result.stages["rl"]


def test_greedy_generation_does_not_depend_on_batching(tiny_run):
    _, _, _, result = tiny_run
    model, tok = load_model(result.stages["sft"], kind="causal-lm")
    prompts = [r["prompt"] for r in result.id_data.test[:6]]
    together = PT.generate_answers(model, tok, prompts, max_new_tokens=5, batch_size=6)
    alone = [PT.generate_answers(model, tok, [p], max_new_tokens=5)[0] for p in prompts]
    assert together == alone
    sampled = PT.generate_answers(model, tok, prompts[:2], samples=3, temperature=1.0, seed=4)
    assert [len(s) for s in sampled] == [3, 3]
    assert sampled == PT.generate_answers(
        model, tok, prompts[:2], samples=3, temperature=1.0, seed=4
    )
    with pytest.raises(ValueError, match="one answer per prompt"):
        PT.generate_answers(model, tok, prompts, samples=2)
    with pytest.raises(ValueError, match="at least one prompt"):
        PT.generate_answers(model, tok, [])


def test_answer_nll_is_minus_log_probability_of_answer_and_eos(tiny_run):
    _, _, _, result = tiny_run
    model, tok = load_model(result.stages["sft"], kind="causal-lm")
    rows = result.id_data.test[:3]
    nll = PT.answer_nll(model, tok, rows, batch_size=2)
    for value, row in zip(nll, rows, strict=True):
        p = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        a = tok(" " + row["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + a])).logits[0].double(), -1)
        expected = -sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(a))
        assert value == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="at least one row"):
        PT.answer_nll(model, tok, [])


def test_measurements_cover_every_checkpoint_with_bounded_metrics(tiny_run, monkeypatch):
    root, base, config, result = tiny_run
    monkeypatch.setenv("REPGEO_DATA_DIR", str(root))
    probe = lm.probe_texts(base.holdout_texts, n=40, max_words=20)
    m = PT.measure_posttraining(result, probe, n_samples=4, max_eval_rows=8, progress=False)
    t = m.trajectory
    # SFT's revisions, then DPO's and RL's without their step 0 (= the previous stage's end)
    expected = len(result.revisions("sft")) + sum(
        len(result.revisions(s)) - 1 for s in ("dpo", "rl")
    )
    assert len(t) == expected and list(t["position"]) == list(range(expected))
    for col in ("id_accuracy", "ood_accuracy"):
        assert t[col].between(0, 1).all()
    for col in ("id_nll", "ood_nll", "probe_loss", "rankme_covariance_probe"):
        assert np.isfinite(t[col]).all() and (t[col] > 0).all()
    assert (t["rankme_covariance_probe"] <= 16 + 1e-6).all()  # at most the hidden size
    curves = m.pass_at_k
    assert set(curves["checkpoint"]) == {"after SFT", "after DPO", "after RL (GRPO)"} | {
        c for c in curves["checkpoint"] if c.startswith("RL (GRPO) step")
    }
    for _, curve in curves.groupby("checkpoint"):
        assert list(curve["k"]) == [1, 2, 3, 4]
        assert np.all(np.diff(curve["pass_at_k"].to_numpy()) >= -1e-12)
    for label, counts in m.correct_counts.items():
        assert len(counts) == 8 and all(0 <= c <= 4 for c in counts), label
    # cached: the second call reads the same table
    again = PT.measure_posttraining(result, probe, n_samples=4, max_eval_rows=8, progress=False)
    assert again.trajectory.equals(t)
    summary = PT.stage_summary(t, ["id_nll", "rankme_covariance_probe"])
    sft = summary[(summary.stage == "SFT") & (summary.measure == "id_nll")].iloc[0]
    assert sft.start == pytest.approx(t.iloc[0]["id_nll"])
    assert sft.change == pytest.approx(sft.end - sft.start)
    # another OOD task reuses the trained stages but never the cached measurements
    other = PT.posttrain(dataclasses.replace(config, ood_task="tweets-binary"), progress=False)
    assert other.cached == {"sft": True, "dpo": True, "rl": True}
    m2 = PT.measure_posttraining(other, probe, n_samples=4, max_eval_rows=8, progress=False)
    assert m2.trajectory["id_nll"].equals(t["id_nll"])
    assert not m2.trajectory["ood_nll"].equals(t["ood_nll"])
    with pytest.raises(ValueError, match="no checkpoint at step 99"):
        PT.measure_posttraining(result, probe, pass_at_k_points=[("rl", 99)], progress=False)
    with pytest.raises(ValueError, match="needs probe texts"):
        PT.measure_posttraining(result, [], progress=False)


def test_notebook_08_figures_draw_from_the_measurements(tiny_run, monkeypatch, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from repgeo_utils import plotting

    root, base, _, result = tiny_run
    monkeypatch.setenv("REPGEO_DATA_DIR", str(root))
    probe = lm.probe_texts(base.holdout_texts, n=40, max_words=20)
    m = PT.measure_posttraining(result, probe, n_samples=4, max_eval_rows=8, progress=False)
    fig = plotting.plot_posttrain_trajectory(
        m.trajectory,
        [("RankMe", [("rankme_covariance_probe", "probe")]), ("NLL", [("id_nll", "ID")])],
    )
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2
    line = fig.axes[0].lines[0]
    assert list(line.get_ydata()) == list(m.trajectory["rankme_covariance_probe"])
    fig = plotting.plot_pass_at_k(m.pass_at_k)
    first = m.pass_at_k["checkpoint"].iloc[0]
    diff = fig.axes[1].lines[0].get_ydata()
    assert np.allclose(diff, 0.0)  # the reference checkpoint minus itself
    table = pd.DataFrame(
        {
            "mode": ["none", "keep", "keep", "remove", "remove"],
            "k": [4, 1, 4, 1, 4],
            "loss": [1.0, 3.0, 1.0, 1.5, 4.0],
        }
    )
    fig = plotting.plot_ablation({"lm": table}, {"lm": ("loss", "loss")})
    keep, remove = fig.axes[0].lines[:2]
    assert list(keep.get_ydata()) == [3.0, 1.0] and list(remove.get_ydata()) == [1.5, 4.0]
    assert plotting.save_figure(fig, "08_test").is_file()
    assert first in set(m.pass_at_k["checkpoint"])


def test_a_hub_base_model_offline_fails_with_a_clear_message():
    from repgeo_utils.models import ModelNotFoundError, ModelUnavailableError

    config = PT.PosttrainConfig(base_model="EleutherAI/pythia-160m")
    with pytest.raises(ModelUnavailableError, match="Could not load 'EleutherAI/pythia-160m'"):
        PT.posttrain(config, progress=False)
    with pytest.raises(ModelNotFoundError, match="Unknown model 'no-such-model'"):
        PT.posttrain(PT.PosttrainConfig(base_model="no-such-model"), progress=False)


def test_solved_counts_by_hand():
    table = PT.solved_counts({"a": [0, 4, 4, 2], "b": [1, 1, 0, 0]}, n=4)
    a, b = table.iloc[0], table.iloc[1]
    assert (a["solved 0/4"], a["solved 4/4"], a["prompts"]) == (1, 2, 4)
    assert a["mean share correct"] == pytest.approx(10 / 16)
    assert (b["solved 0/4"], b["solved 4/4"]) == (2, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_use_gpu_without_a_gpu_fails_clearly():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        PT.posttrain("tiny", use_gpu=True, progress=False)


def test_change_direction_and_stage_summary_by_hand():
    assert PT.change_direction(0.5, 10.0) == "up"
    assert PT.change_direction(-0.5, 10.0) == "down"
    assert PT.change_direction(0.1, 10.0) == "no clear change"  # 1% < 2%
    assert PT.change_direction(0.0, 0.0) == "no clear change"
    assert PT.change_direction(0.3, 0.0) == "up"  # no relative size without a start
    t = pd.DataFrame(
        {
            "position": [3, 0, 1, 2],  # out of order on purpose
            "stage": ["rl", "sft", "sft", "dpo"],
            "x": [8.0, 10.0, 12.0, 12.1],
        }
    )
    s = PT.stage_summary(t, ["x"]).set_index("stage")
    assert (s.loc["SFT", "start"], s.loc["SFT", "end"]) == (10.0, 12.0)
    assert s.loc["SFT", "relative"] == pytest.approx(0.2)
    assert s.loc["SFT", "direction"] == "up"
    assert s.loc["DPO", "start"] == 12.0 and s.loc["DPO", "direction"] == "no clear change"
    assert s.loc["RL (GRPO)", "change"] == pytest.approx(8.0 - 12.1)
    assert s.loc["RL (GRPO)", "direction"] == "down"


def test_each_stage_is_built_by_one_entry_of_the_builder_table(tmp_path):
    from repgeo_utils.posttrain import stages

    assert tuple(PT.TRAINER_BUILDERS) == PT.STAGES
    assert PT.TRAINER_BUILDERS["rl"] is PT.build_rl
    with pytest.raises(ValueError, match="Unknown stage 'ppo'; stages are sft, dpo, rl"):
        stages._train_stage("ppo", ("unused", None), PT.PosttrainConfig(), None, tmp_path, False)
