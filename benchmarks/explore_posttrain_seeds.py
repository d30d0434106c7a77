"""How robust are notebook 08's post-training directions? Repeat the three stages over seeds
and with a ten times smaller RL learning rate; JSON to results/posttrain_seeds.json.

Each run is the notebook's quick setting (the same pretrained base model) with one change: the
seed (which also reseeds the task's train/test split, the DPO rejections and every trainer) or
the RL learning rate. For each run we record each stage's change in RankMe (covariance) and
alpha-ReQ of the final layer's last-token states (probe texts and ID prompts), the ID / OOD
answer NLL, greedy accuracy, and pass@1 / pass@16 after DPO and after RL. Runs are cached like
the notebook's, so a rerun only re-reads them. About 2.5 minutes a run on 2 cores.
``benchmarks/posttrain_seeds.md`` is written from the JSON (``--report`` rewrites it alone), its
sentences by the same summary functions notebook 08 uses.

    .venv/bin/python benchmarks/explore_posttrain_seeds.py [--seeds 0 1 2] [--rl-lr 1e-4]
    .venv/bin/python benchmarks/explore_posttrain_seeds.py --report
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

from repgeo_utils import lm
from repgeo_utils import posttrain as PT

RESULTS = Path(__file__).resolve().parent / "results" / "posttrain_seeds.json"
REPORT = Path(__file__).resolve().parent / "posttrain_seeds.md"

MEASURES = {
    "rankme_covariance_probe": "RankMe, probe texts",
    "rankme_covariance_prompts": "RankMe, ID prompts",
    "alpha_probe": "alpha, probe texts",
    "alpha_prompts": "alpha, ID prompts",
    "id_nll": "ID answer NLL",
    "ood_nll": "OOD answer NLL",
    "id_accuracy": "ID greedy accuracy",
}


def run_one(label: str, config: PT.PosttrainConfig, probe: list[str]) -> dict:
    start = time.perf_counter()
    result = PT.posttrain(config, progress=False)
    measured = PT.measure_posttraining(result, probe, progress=False)
    summary = PT.stage_summary(measured.trajectory, list(MEASURES))
    pass_table = measured.pass_at_k.pivot(index="k", columns="checkpoint", values="pass_at_k")
    solved = PT.solved_counts(measured.correct_counts, 16).set_index("checkpoint")
    return {
        "label": label,
        "seed": config.seed,
        "rl_learning_rate": config.rl.learning_rate,
        "stage_changes": [
            {
                "stage": row.stage,
                "measure": MEASURES[row.measure],
                "start": row.start,
                "end": row.end,
                "relative": row.change / abs(row.start) if row.start else None,
            }
            for row in summary.itertuples()
        ],
        "pass_at_k": {
            name: {
                "pass@1": float(pass_table.loc[1, name]),
                "pass@16": float(pass_table.loc[16, name]),
            }
            for name in ("after SFT", "after DPO", "after RL (GRPO)")
        },
        "solved": {
            k: {c: int(v) for c, v in row.items() if c.startswith("solved")}
            for k, row in solved.iterrows()
        },
        "seconds": time.perf_counter() - start,
        "train_seconds": result.seconds,
    }


def report(record: dict) -> str:
    """``posttrain_seeds.md`` from a ``posttrain_seeds.json`` record."""
    from repgeo_utils.summaries import posttraining as summary  # noqa: PLC0415  (report only)

    bench = summary.benchmark_seed_table(record)
    seeds = [c for c in bench.columns if c.startswith("seed ")]
    runs = record["runs"]
    slow = [r for r in runs if r["label"] != f"seed {r['seed']}"]
    lines = [
        "# Post-training directions over seeds (notebook 08)",
        "",
        "`benchmarks/explore_posttrain_seeds.py` repeats notebook 08's quick setting (SFT -> DPO -> "
        "GRPO on the small GPT-NeoX of notebook 06) with "
        + ", ".join(seeds)
        + " (the seed also redraws the task split, the DPO rejections and every trainer's "
        "randomness)"
        + (
            f", and once with the RL learning rate at {slow[0]['rl_learning_rate']:g} (seed 0)"
            if slow
            else ""
        )
        + f". Raw numbers: `results/posttrain_seeds.json`; measured {record.get('measured', 'n/a')} on "
        f"{record.get('machine', 'n/a')}. This file is written from that JSON by the script "
        "(`--report`). A change under 2% of the starting value counts as no clear change, as in "
        "the notebook; the direction over seeds is called when the mean change exceeds twice the "
        "seeds' sd.",
        "",
        "## Relative change per stage",
        "",
        "| stage | measure | " + " | ".join(seeds) + " | mean | sd | over seeds |",
        "|---|---|" + "---:|" * (len(seeds) + 2) + "---|",
    ]
    for _, row in bench.iterrows():
        absolute = row["measure"] == "ID greedy accuracy"
        fmt = (lambda v: f"{v:+.3f}") if absolute else (lambda v: f"{100 * v:+.1f}%")
        cells = [fmt(row[s]) for s in seeds] + [fmt(row["mean"]), fmt(row["sd"]).lstrip("+")]
        lines.append(f"| {row['stage']} | {row['measure']}{' (absolute)' if absolute else ''} | "
                     + " | ".join(cells) + f" | {row['verdict']} |")  # fmt: skip
    lines += [
        "",
        "## pass@1 and pass@16 on held-out ID prompts (n = 16 samples, temperature 1)",
        "",
        "| run | pass@1 after DPO -> after RL | pass@16 after DPO -> after RL | solved 0/16, after DPO -> after RL | solved 16/16 |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        p, solved = run["pass_at_k"], run["solved"]
        # solved counts are keyed "stage:step": the end of DPO and the last RL checkpoint
        dpo = next((v for k, v in solved.items() if k.startswith("dpo")), {})
        rl = [v for k, v in solved.items() if k.startswith("rl")]
        rl = rl[-1] if rl else {}
        lines.append(
            f"| {run['label']} | {p['after DPO']['pass@1']:.3f} -> {p['after RL (GRPO)']['pass@1']:.3f} | "
            f"{p['after DPO']['pass@16']:.3f} -> {p['after RL (GRPO)']['pass@16']:.3f} | "
            f"{dpo.get('solved 0/16', 'n/a')} -> {rl.get('solved 0/16', 'n/a')} | "
            f"{dpo.get('solved 16/16', 'n/a')} -> {rl.get('solved 16/16', 'n/a')} |"
        )
    lines += ["", "## What holds and what does not", "", summary.seed_runs_text(bench), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--rl-lr", type=float, default=1e-4, help="the smaller RL learning rate (seed 0)"
    )
    parser.add_argument(
        "--report", action="store_true", help="only rewrite posttrain_seeds.md from the JSON"
    )
    args = parser.parse_args()
    if args.report:
        REPORT.write_text(report(json.loads(RESULTS.read_text())))
        print(f"written {REPORT}")
        return

    base = lm.pretrain(lm.PRETRAIN_SETTINGS["quick"], num_threads=1, progress=False)
    probe = lm.probe_texts(base.holdout_texts, n=1024)
    quick = dataclasses.replace(PT.POSTTRAIN_SETTINGS["quick"], base_model=str(base.run_folder))
    runs = []
    for seed in args.seeds:
        runs.append(run_one(f"seed {seed}", dataclasses.replace(quick, seed=seed), probe))
        print(f"seed {seed}: {runs[-1]['seconds']:.0f} s", flush=True)
    slow = dataclasses.replace(quick, rl=dataclasses.replace(quick.rl, learning_rate=args.rl_lr))
    runs.append(run_one(f"seed 0, RL lr {args.rl_lr:g}", slow, probe))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "measured": time.strftime("%Y-%m-%d"),
                "runs": runs,
            },  # fmt: skip
            indent=1,
        )
    )
    print(f"written {RESULTS}")
    REPORT.write_text(report(json.loads(RESULTS.read_text())))
    print(f"written {REPORT}")
    for run in runs:
        print(f"\n## {run['label']}")
        for row in run["stage_changes"]:
            if row["relative"] is not None:
                print(
                    f"{row['stage']:>10} {row['measure']:<20} {row['start']:8.3f} -> {row['end']:8.3f}"
                    f"  {row['relative']:+.1%}"
                )
        for name, values in run["pass_at_k"].items():
            print(f"{name:>16}: pass@1 {values['pass@1']:.3f}  pass@16 {values['pass@16']:.3f}")
        print(run["solved"])


if __name__ == "__main__":
    main()
