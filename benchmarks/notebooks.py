"""How long the notebooks take, and how much their checked numbers move between CPU kernel
paths and between seeds.

Three jobs, each executing the notebooks with papermill exactly as ``make figures`` does, in
a fresh data folder (so every fine-tune, SAE and pretraining run is rebuilt: "cold") unless
said otherwise:

``times [--in-place]``
    ``make figures`` itself, cold, then again warm (caches kept), with the time of each
    notebook from the Makefile's ``== done`` lines; the float32 GEMM rate is measured before
    and after so a reader can scale the times to another machine. ``--in-place``: the warm run
    writes the committed notebooks and figures/. -> ``results/notebook_times.json``.
``variation --config NAME``
    Every notebook cold under one kernel-path setting (``aten-default``: ATen's scalar CPU
    kernels instead of AVX2/AVX-512; ``threads-1``: one thread; ``mkl-compatible``: MKL's
    conditional numerical reproducibility in its most portable mode), then each checked cell
    (``# NBVAL_CHECK_OUTPUT``) compared with the committed notebook: did its text change (a
    verdict), did a count change, and by how much did each measured number move.
    -> ``results/reproducibility.json`` (merged by config).
``table [--write]``
    The README's run-time table from ``results/notebook_times.json`` (printed, or written
    between the README's ``<!-- notebook-times -->`` markers; a test keeps the two in step).
``seeds --seeds 1 2``
    Every notebook cold with ``-p SEED s``; the findings each notebook records
    (``repgeo_utils.report.Findings``) are collected, so a notebook can quote how much a
    result moves between seeds. -> ``results/reproducibility.json`` (merged).

A run takes as long as ``make figures`` from a fresh clone (20-40 minutes here).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.nbval_tolerance: one definition of "a number"

from tests.nbval_tolerance import NUMBER, is_measurement, squash  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TIMES_FILE = RESULTS / "notebook_times.json"
VARIATION_FILE = RESULTS / "reproducibility.json"
REPORT_FILE = ROOT / "benchmarks" / "reproducibility.md"
PAPERMILL = Path(sys.executable).with_name("papermill")
KERNEL = "repgeo"

#: Environment settings that change which CPU kernels compute the same numbers.
CONFIGS: dict[str, dict[str, str]] = {
    "native": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "threads-1": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
}


def notebooks(names: list[str] | None = None) -> list[Path]:
    found = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if names:
        found = [p for p in found if any(p.name.startswith(n) for n in names)]
        if not found:
            raise SystemExit(f"no notebook matches {names}")
    return found


def gemm_gflops(size: int = 1024, seconds: float = 2.0) -> float:
    """Float32 GEMM rate of ``size^3`` products with torch's default threads (GFLOP/s)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2.0 * size**3 * reps / (time.perf_counter() - start) / 1e9


def machine() -> dict:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", flags)
    isa = [f for f in ("avx512f", "avx2", "avx") if re.search(rf"\b{f}\b", flags)]
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "widest_isa": isa[0] if isa else "unknown",
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }


def execute(
    notebook: Path, out: Path, env: dict[str, str], params: dict[str, str] | None = None
) -> float:
    """Run one notebook with papermill; returns the wall time in seconds."""
    command = [str(PAPERMILL), str(notebook), str(out), "-k", KERNEL, "--cwd", "notebooks",
               "-p", "PROFILE", "quick", "--log-level", "WARNING"]  # fmt: skip
    for name, value in (params or {}).items():
        command += ["-p", name, value]
    return run_command(command, env, f"{notebook.name} under {env}")[1]


def run_command(command: list[str], env: dict[str, str], what: str) -> tuple[str, float]:
    """Run ``command`` in the repository root with ``env`` added; its stdout and wall time in
    seconds. A failure raises with the last 40 lines of its output."""
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        raise RuntimeError(f"{what} failed:\n{tail}")
    return done.stdout, seconds


def fresh_env(base: Path, extra: dict[str, str]) -> dict[str, str]:
    data, figures = base / "data", base / "figures"
    data.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    return {"REPGEO_DATA_DIR": str(data), "REPGEO_FIGURES_DIR": str(figures), **extra}


def deep_update(target: dict, new: dict) -> dict:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value
    return target


def merge(path: Path, key: str, value: dict) -> None:
    record = json.loads(path.read_text()) if path.exists() else {}
    deep_update(record.setdefault(key, {}), value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


# --- times -------------------------------------------------------------------------------------


def make_figures(env: dict[str, str], out: Path | None, seed: int, names: list[str] | None) -> dict:
    """``make figures`` as a user runs it (two chains side by side unless ``WORKERS=1`` is in
    the environment), executed notebooks written under ``out`` (None: in place, as a user's
    run writes them). Returns its wall time and each notebook's time, read from the
    ``== done <notebook> in <s> s`` lines the Makefile prints."""
    command = ["make", "--no-print-directory", "figures", f"BIN={Path(sys.executable).parent}"]
    if out is not None:
        command += [f"OUT_DIR={out}", f"RUNS_DIR={out / 'runs'}"]
    if seed:
        command.append(f"PARAMS=-p SEED {seed}")
    if names:
        command.append("NOTEBOOKS=" + " ".join(f"notebooks/{p.name}" for p in notebooks(names)))
    stdout, wall = run_command(command, env, "make figures")
    each = {Path(nb).stem: float(s) for nb, s in DONE.findall(stdout)}
    return {"wall_s": round(wall, 1), "notebooks": each, "log": stdout}


#: The line the Makefile's ``figures`` prints when a notebook has run.
DONE = re.compile(r"^== done (\S+) in (\d+) s$", re.MULTILINE)


def run_times(names: list[str] | None, seed: int, in_place: bool = False) -> None:
    """``make figures`` cold (a fresh data folder), then warm (the same folder again), with
    ``-p SEED seed``. A seed other than the committed one (0) costs the same and doubles as a
    seed run: its findings are merged as :func:`run_seeds` does. ``in_place``: the warm run
    writes the notebooks and figures/ as ``make figures`` does (re-executing the committed
    outputs from the run that was just timed)."""
    if in_place and seed:
        raise SystemExit("--in-place writes the committed notebooks: it needs --seed 0")
    rate_before = gemm_gflops()
    rows: dict[str, dict[str, float]] = {}
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="repgeo-times-") as tmp:
        env = fresh_env(Path(tmp), {})
        for phase in ("cold", "warm"):
            if in_place and phase == "warm":
                figures_free = {k: v for k, v in env.items() if k != "REPGEO_FIGURES_DIR"}
                run = make_figures(figures_free, None, seed, names)
            else:
                run = make_figures(env, Path(tmp) / phase, seed, names)
            print(run["log"], flush=True)
            walls[phase] = run["wall_s"]
            for stem, seconds in run["notebooks"].items():
                rows.setdefault(stem, {})[f"{phase}_s"] = seconds
        if seed:
            merge(
                VARIATION_FILE,
                "seeds",
                collect_findings(Path(env["REPGEO_FIGURES_DIR"]), seed, names),
            )
    rate_after = gemm_gflops()
    workers = int(os.environ.get("WORKERS", "2"))
    payload = {
        "machine": {**machine(), "threads": torch.get_num_threads(), "gemm_gflops_before": round(rate_before, 1),
                    "gemm_gflops_after": round(rate_after, 1),
                    "load_average_after": list(os.getloadavg())},
        "command": "make figures" + (f" PARAMS='-p SEED {seed}'" if seed else ""),
        "workers": workers,
        "seed": seed,
        "notebooks": dict(sorted(rows.items())),
        "total_cold_s": walls["cold"],
        "total_warm_s": walls["warm"],
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip
    TIMES_FILE.parent.mkdir(parents=True, exist_ok=True)
    TIMES_FILE.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload, indent=1))


# --- the README's table ----------------------------------------------------------------------

README = ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- notebook-times -->", "<!-- /notebook-times -->"

#: Per notebook: what it reuses from an earlier one (cached under data/cache/, so running that one
#: first makes this one warm), and what a class short of time can leave out.
PLANNING: dict[str, tuple[str, str]] = {
    "00_overview": ("every notebook's findings (figures/findings/)", "nothing: it only reads"),
    "01_finetuning": ("", "nothing: 02-05 and 08 reuse its fine-tuned models; run it before class"),
    "02_activation_similarity": ("01's fine-tunes", "the size path (one model offline)"),
    "03_sae_training": (
        "01's fine-tunes",
        "after feature matching: splice-in, crosscoder, transfer, the paper's two conventions",
    ),
    "04_token_visualization": (
        "01's fine-tunes, 03's SAEs",
        "the widget explorer (needs a live kernel)",
    ),
    "05_spectral_geometry": ("01's fine-tunes", "the synthetic spectra, if 06 follows"),
    "06_pretraining_phases": (
        "",
        "the per-layer section; the recorded standard run needs no compute",
    ),
    "07_toy_model_phases": ("", "the robustness seeds and balanced initialisation"),
    "08_post_training_geometry": (
        "06's LM, 01's fine-tunes",
        "the eigen-direction ablation; the recorded sections need no compute",
    ),
    "09_memorization_downstream": (
        "06's LM",
        "the live run: the recorded standard run shows the same at scale",
    ),
}


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}" if seconds < 600 else f"{seconds / 60:.0f}"


def times_table(record: dict) -> str:
    """The markdown table and its caption line from a ``notebook_times.json`` record."""
    m = record["machine"]
    workers = record.get("workers", 1)
    how = (
        "its two chains side by side, one kernel each with the cores shared out, so the notebooks' "
        "times overlap and the last row is the wall time of the whole command, not their sum"
        if workers > 1
        else "one notebook after another"
    )
    lines = [
        f"Measured {record['measured']} on {m['cpu']} ({m['cores']} cores, {m['widest_isa']}, "
        f"float32 GEMM {m['gemm_gflops_before']:.0f}-{m['gemm_gflops_after']:.0f} GFLOP/s on "
        f"{m.get('threads', 'torch default')} threads), `SEED {record.get('seed', 0)}`, by "
        f"`python benchmarks/notebooks.py times`, which runs `make figures` ({how}): cold is a "
        f"fresh data folder (everything trained), warm the same folder again (everything "
        f"cached). On a machine of another GEMM rate, scale the cold times by the ratio.",
        "",
        "| notebook | cold (min) | warm (min) | reuses from cache | can be left out when short of time |",
        "|---|---:|---:|---|---|",
    ]
    for stem, row in record["notebooks"].items():
        needs, skip = PLANNING.get(stem, ("", ""))
        lines.append(
            f"| `{stem}` | {minutes(row['cold_s'])} | {minutes(row['warm_s'])} | {needs} | {skip} |"
        )
    lines.append(
        f"| `make figures` | {minutes(record['total_cold_s'])} | {minutes(record['total_warm_s'])} | | |"
    )
    return "\n".join(lines)


def run_table(write: bool) -> None:
    table = times_table(json.loads(TIMES_FILE.read_text()))
    if not write:
        print(table)
        return
    text = README.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise SystemExit(f"README.md has no {TABLE_START} ... {TABLE_END} markers to write between")
    head, rest = text.split(TABLE_START, 1)
    README.write_text(
        head + TABLE_START + "\n" + table + "\n" + TABLE_END + rest.split(TABLE_END, 1)[1]
    )
    print(f"wrote the table into {README}")


# --- what a second seed changes -----------------------------------------------------------------

SEEDS_START, SEEDS_END = "<!-- seed-findings -->", "<!-- /seed-findings -->"


def seeds_table(collected: dict[str, dict[str, dict]], seed: str = "1") -> str:
    """Per notebook: how many recorded findings moved between seed 0 (committed) and ``seed``,
    how far the numbers moved (median and largest relative change) and which verdicts changed."""
    lines = [
        f"| notebook | findings | moved | median / largest relative move | verdicts changed (seed 0 -> seed {seed}) |",
        "|---|---:|---:|---|---|",
    ]
    for stem, items in sorted(collected.items()):
        pairs = [(k, v["0"], v[seed]) for k, v in sorted(items.items()) if "0" in v and seed in v]
        moved = [(k, a, b) for k, a, b in pairs if a != b]
        rel = [abs(b - a) / abs(a) for _, a, b in moved
               if isinstance(a, int | float) and isinstance(b, int | float) and a and abs(a) < 1e6]  # fmt: skip
        words = [
            f"{k}: {a} -> {b}" for k, a, b in moved if isinstance(a, str) or isinstance(b, str)
        ]
        spread = (
            f"{100 * sorted(rel)[len(rel) // 2]:.0f}% / {100 * max(rel):.0f}%" if rel else "none"
        )
        lines.append(
            f"| `{stem}` | {len(pairs)} | {len(moved)} | {spread} | {'; '.join(words) or 'none'} |"
        )
    return "\n".join(lines)


def run_seeds_table(write: bool) -> None:
    table = seeds_table(json.loads(VARIATION_FILE.read_text())["seeds"])
    if not write:
        print(table)
        return
    text = REPORT_FILE.read_text()
    if SEEDS_START not in text:
        raise SystemExit(f"{REPORT_FILE} has no {SEEDS_START} ... {SEEDS_END} markers")
    head, rest = text.split(SEEDS_START, 1)
    REPORT_FILE.write_text(
        head + SEEDS_START + "\n" + table + "\n" + SEEDS_END + rest.split(SEEDS_END, 1)[1]
    )
    print(f"wrote the table into {REPORT_FILE}")


# --- variation of checked outputs --------------------------------------------------------------


def checked_texts(nb: nbformat.NotebookNode) -> dict[int, str]:
    """Cell index -> the text of every output of each ``# NBVAL_CHECK_OUTPUT`` cell."""
    out = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "NBVAL_CHECK_OUTPUT" not in cell.source:
            continue
        parts = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output:
                parts.append(output["data"].get("text/plain", ""))
        out[i] = "".join(parts)
    return out


def compare_text(committed: str, new: str) -> dict:
    """How ``new`` differs from ``committed``: text, counts, and the largest moves."""
    a, b = NUMBER.split(committed), NUMBER.split(new)
    if len(a) != len(b) or any(squash(x) != squash(y) for x, y in zip(a[::2], b[::2], strict=True)):
        return {"text_changed": True}
    counts, max_abs, max_rel = 0, 0.0, 0.0
    for x, y in zip(a[1::2], b[1::2], strict=True):
        if not (is_measurement(x) or is_measurement(y)):
            counts += int(int(x) != int(y))
            continue
        u, v = float(x), float(y)
        if math.isnan(u) and math.isnan(v):
            continue
        max_abs = max(max_abs, abs(u - v))
        if u != 0:
            max_rel = max(max_rel, abs(u - v) / abs(u))
    return {"text_changed": False, "counts_changed": counts, "max_abs": max_abs, "max_rel": max_rel}


def run_variation(config: str, names: list[str] | None) -> None:
    if config not in CONFIGS:
        raise SystemExit(f"unknown config {config!r}; known: {', '.join(CONFIGS)}")
    result: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix=f"repgeo-{config}-") as tmp:
        env = fresh_env(Path(tmp), CONFIGS[config])
        for nb in notebooks(names):
            out = Path(tmp) / nb.name
            seconds = execute(nb, out, env)
            committed, new = (
                checked_texts(nbformat.read(nb, 4)),
                checked_texts(nbformat.read(out, 4)),
            )
            cells = {str(i): compare_text(committed[i], new.get(i, "")) for i in committed}
            result[nb.stem] = {"seconds": round(seconds, 1), "cells": cells}
            print(f"{config} {nb.stem}: {json.dumps(cells)}", flush=True)
    merge(VARIATION_FILE, "kernel_paths", {config: {"machine": machine(), "notebooks": result}})


# --- seeds -------------------------------------------------------------------------------------


def collect_findings(figures: Path, seed: int, names: list[str] | None) -> dict[str, dict]:
    """``{notebook: {finding: {seed: value}}}`` from one run's findings folder, beside the
    committed run's values (seed 0)."""
    collected: dict[str, dict[str, dict]] = {}
    for nb in notebooks(names):
        for folder, key in ((figures, str(seed)), (ROOT / "figures", "0")):
            found = folder / "findings" / f"{nb.stem}.json"
            if found.exists():
                for name, item in json.loads(found.read_text())["findings"].items():
                    collected.setdefault(nb.stem, {}).setdefault(name, {})[key] = item["value"]
    return collected


def run_seeds(seeds: list[int], names: list[str] | None) -> None:
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix=f"repgeo-seed{seed}-") as tmp:
            env = fresh_env(Path(tmp), {})
            for nb in notebooks(names):
                execute(nb, Path(tmp) / nb.name, env, {"SEED": str(seed)})
                print(f"seed {seed} {nb.stem} done", flush=True)
            merge(
                VARIATION_FILE,
                "seeds",
                collect_findings(Path(env["REPGEO_FIGURES_DIR"]), seed, names),
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="job", required=True)
    times = sub.add_parser("times")
    times.add_argument("--notebooks", nargs="*")
    times.add_argument("--seed", type=int, default=0, help="SEED parameter (0: the committed run)")
    times.add_argument(
        "--in-place", action="store_true",
        help="the warm run writes the committed notebooks and figures/ (needs --seed 0)",
    )  # fmt: skip
    variation = sub.add_parser("variation")
    variation.add_argument("--config", required=True, choices=sorted(CONFIGS))
    variation.add_argument("--notebooks", nargs="*")
    table = sub.add_parser("table")
    table.add_argument("--write", action="store_true", help="write it into README.md")
    seeds_table_cmd = sub.add_parser("seeds-table")
    seeds_table_cmd.add_argument(
        "--write", action="store_true", help="write it into reproducibility.md"
    )
    seeds = sub.add_parser("seeds")
    seeds.add_argument("--seeds", nargs="+", type=int, required=True)
    seeds.add_argument("--notebooks", nargs="*")
    args = parser.parse_args()
    if args.job == "times":
        run_times(args.notebooks, args.seed, args.in_place)
    elif args.job == "seeds-table":
        run_seeds_table(args.write)
    elif args.job == "table":
        run_table(args.write)
    elif args.job == "variation":
        run_variation(args.config, args.notebooks)
    else:
        run_seeds(args.seeds, args.notebooks)


if __name__ == "__main__":
    main()
