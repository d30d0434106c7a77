"""How robust are notebook 08's post-training directions? Repeat the three stages over seeds
and with a ten times smaller RL learning rate; JSON to results/posttrain_seeds.json.

Each run is the notebook's quick setting (the same pretrained base model) with one change: the
seed (which also reseeds the task's train/test split, the DPO rejections and every trainer) or
the RL learning rate. For each run we record each stage's change in RankMe (covariance) and
alpha-ReQ of the final layer's last-token states (probe texts and ID prompts), the ID / OOD
answer NLL, greedy accuracy, and pass@1 / pass@16 after DPO and after RL. Runs are cached like
the notebook's, so a rerun only re-reads them. About 2.5 minutes a run on 2 cores.

    .venv/bin/python benchmarks/explore_posttrain_seeds.py [--seeds 0 1 2] [--rl-lr 1e-4]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--rl-lr", type=float, default=1e-4, help="the smaller RL learning rate (seed 0)"
    )
    args = parser.parse_args()

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
            {"machine": platform.platform(), "python": platform.python_version(), "runs": runs},
            indent=1,
        )
    )
    print(f"written {RESULTS}")
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
