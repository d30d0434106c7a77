"""The README's run-time table is the one ``benchmarks/notebooks.py table`` makes from the
measured ``benchmarks/results/notebook_times.json``, and the table code handles a record."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _notebooks_module():
    spec = importlib.util.spec_from_file_location(
        "bench_notebooks", ROOT / "benchmarks" / "notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_times_table_from_a_record():
    nb = _notebooks_module()
    record = {
        "measured": "2026-01-01 10:00",
        "seed": 1,
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "widest_isa": "avx2",
            "threads": 2,
            "gemm_gflops_before": 90.4,
            "gemm_gflops_after": 88.6,
        },  # fmt: skip
        "notebooks": {
            "01_finetuning": {"cold_s": 450.0, "warm_s": 30.0},
            "03_sae_training": {"cold_s": 738.0, "warm_s": 66.0},
        },  # fmt: skip
        "total_cold_s": 1188.0,
        "total_warm_s": 96.0,
    }
    table = nb.times_table(record)
    assert "| `01_finetuning` | 7.5 | 0.5 |" in table
    assert "| `03_sae_training` | 12 | 1.1 |" in table  # ten minutes and over: whole minutes
    assert "| `make figures` | 20 | 1.6 |" in table
    assert "GEMM 90-89 GFLOP/s on 2 threads" in table and "`SEED 1`" in table
    assert "one notebook after another" in table  # a record without "workers": a serial run
    chains = nb.times_table({**record, "workers": 2})
    assert "two chains side by side" in chains and "not their sum" in chains


def test_readme_table_is_the_measured_one():
    nb = _notebooks_module()
    if not nb.TIMES_FILE.exists():
        pytest.fail(f"{nb.TIMES_FILE} is missing: run `python benchmarks/notebooks.py times`")
    readme = nb.README.read_text()
    assert nb.TABLE_START in readme and nb.TABLE_END in readme
    shown = readme.split(nb.TABLE_START, 1)[1].split(nb.TABLE_END, 1)[0].strip()
    assert shown == nb.times_table(json.loads(nb.TIMES_FILE.read_text())), (
        "README's run-time table differs from benchmarks/results/notebook_times.json: "
        "run `python benchmarks/notebooks.py table --write`"
    )
