"""The course exercises (notebooks/exercises/, repgeo_utils.exercises): the teacher copies pass
every check, the student copies made by nbgrader's preprocessors hold no solution code and fail
every check with its message (not a crash), and each check catches a wrong answer and says which
mistake it is.

The notebooks run under nbclient with the repgeo kernel, once each (about 1.5 CPU-minutes for
all ten on one thread); nbval does not collect them (the Makefile's nbtest leaves notebooks/exercises
out), so they are committed without outputs.
"""

from __future__ import annotations

import math
import os
import re

import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient

from repgeo_utils.config import ROOT
from repgeo_utils.exercises import EXERCISES, course_table, stars
from repgeo_utils.exercises import ex02_similarity as ex02
from repgeo_utils.exercises import ex03_sae as ex03
from repgeo_utils.exercises import ex05_spectral as ex05
from repgeo_utils.exercises import ex07_toy as ex07
from repgeo_utils.exercises import ex08_posttrain as ex08
from repgeo_utils.exercises.checking import NOT_IMPLEMENTED
from repgeo_utils.exercises.student import (
    CODE_STUB,
    EXERCISE_DIR,
    exercise_notebooks,
    make_student_notebook,
    write_student_copies,
)

NOTEBOOKS = sorted({e.notebook for e in EXERCISES})
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def _execute(path, data_dir) -> dict[str, str]:
    """Run a notebook with the repgeo kernel in an isolated data folder; its stdout, stderr and
    errors, each joined over all cells."""
    nb = nbformat.read(path, as_version=4)
    env = {
        "REPGEO_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        client = NotebookClient(
            nb,
            kernel_name="repgeo",
            timeout=300,
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()  # raises on an error in any cell: a check must never raise
    streams = {"stdout": "", "stderr": ""}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                streams[out["name"]] += out["text"]
    return streams


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exercise-data")


@pytest.fixture(scope="module")
def teacher_runs(data_dir):
    return {path.name: _execute(path, data_dir) for path in exercise_notebooks()}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    write_student_copies(out)
    return out


@pytest.fixture(scope="module")
def student_runs(student_dir, data_dir):
    return {path.name: _execute(path, data_dir) for path in sorted(student_dir.glob("ex*.ipynb"))}


def _verdicts(stream: str, verdict: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(rf"^{verdict} (\w+): (.*)$", stream, re.MULTILINE)}


# --- the notebooks -------------------------------------------------------------------------


def test_every_listed_notebook_exists_and_every_notebook_is_listed():
    assert [p.name for p in exercise_notebooks()] == NOTEBOOKS
    assert len(NOTEBOOKS) == 5 and len(EXERCISES) == 15


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_teacher_copy_passes_every_check(teacher_runs, notebook):
    names = [e.name for e in EXERCISES if e.notebook == notebook]
    run = teacher_runs[notebook]
    assert _verdicts(run["stderr"], "FAIL") == {}, run["stderr"]
    passed = _verdicts(run["stdout"], "PASS")
    assert sorted(passed) == sorted(names), run["stdout"]
    # every check reached the real-data stage against the package's own function
    for name in names:
        assert (
            "MiniLM" in passed[name]
            or "repgeo_utils.toy" in passed[name]
            or ("posttrain.pass_at_k" in passed[name])
        ), passed[name]


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_student_copy_fails_every_check_without_crashing(student_runs, notebook):
    names = [e.name for e in EXERCISES if e.notebook == notebook]
    run = student_runs[notebook]  # executed to the end: no check raised
    assert _verdicts(run["stdout"], "PASS") == {}, run["stdout"]
    failed = _verdicts(run["stderr"], "FAIL")
    assert failed == dict.fromkeys(names, NOT_IMPLEMENTED), run["stderr"]


def _solution_lines(nb) -> list[str]:
    lines, inside = [], False
    for cell in nb.cells:
        for line in cell.source.splitlines():
            if BEGIN in line:
                inside = True
            elif END in line:
                inside = False
            elif inside and len(line.strip()) > 12 and not line.strip().startswith("#"):
                lines.append(line.strip())
    return lines


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_student_copy_has_no_solution_and_no_output(student_dir, notebook):
    teacher = nbformat.read(EXERCISE_DIR / notebook, as_version=4)
    student = nbformat.read(student_dir / notebook, as_version=4)
    assert len(student.cells) == len(teacher.cells)
    solution = _solution_lines(teacher)
    assert len(solution) >= 2 * sum(e.notebook == notebook for e in EXERCISES)
    text = "\n".join(cell.source for cell in student.cells)
    leaked = [line for line in solution if line in text]
    assert leaked == [], f"solution code in the student copy: {leaked}"
    n_code = sum(c.cell_type == "code" and BEGIN in c.source for c in teacher.cells)
    n_text = sum(c.cell_type == "markdown" and BEGIN in c.source for c in teacher.cells)
    assert n_code == sum(e.notebook == notebook for e in EXERCISES)
    assert text.count(CODE_STUB.splitlines()[0]) == n_code  # "# YOUR CODE HERE"
    assert text.count("YOUR ANSWER HERE") == n_text
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert student.metadata.kernelspec.name == "repgeo"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_teacher_copy_committed_without_outputs_and_headers_match(notebook):
    nb = nbformat.read(EXERCISE_DIR / notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    code = [c.source.strip() for c in nb.cells if c.cell_type == "code"]
    mine = [e for e in EXERCISES if e.notebook == notebook]
    for e in mine:
        assert e.header() in markdown, e.header()
        assert f"check_{e.name}({e.name})" in code
    assert f"about {sum(e.minutes for e in mine)} minutes in all" in markdown[0]
    assert "After these exercises you can" in markdown[0] and "They assume" in markdown[0]


def test_nbtest_leaves_the_exercises_to_this_file():
    import subprocess

    for workers in ("1", "2"):  # one process, or the two chains side by side
        plan = subprocess.run(
            ["make", "-n", "nbtest", f"NBVAL_WORKERS={workers}"], cwd=ROOT, capture_output=True,
            text=True, check=True,
        ).stdout  # fmt: skip
        assert "exercises" not in plan, plan
        for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            assert f"notebooks/{notebook.name}" in plan, (notebook.name, workers)
    makefile = (ROOT / "Makefile").read_text()
    student = makefile.split("\nstudent:", 1)[1].split("\n\n", 1)[0]
    assert "repgeo_utils.exercises.student build/student" in student
    assert "build/" in (ROOT / ".gitignore").read_text().splitlines()


def test_readme_carries_the_course_table():
    assert course_table() in (ROOT / "README.md").read_text()


def test_course_table_and_stars_by_hand():
    assert stars(3) == "★★★☆☆" and stars(1) == "★☆☆☆☆" and stars(5) == "★★★★★"
    for bad in (0, 6):
        with pytest.raises(ValueError, match=f"got {bad}"):
            stars(bad)
    table = course_table().splitlines()
    assert table[2] == (
        "| `ex02_similarity.ipynb` | 2.1 Cosine of means (`cosine_of_means`) | ★☆☆☆☆ | ★★★☆☆ | 5 |"
    )
    assert table[-1] == "| | **all 15 exercises** | | | **200** |"


# --- nbgrader's preprocessors on a notebook made by hand -----------------------------------


def test_student_notebook_by_hand():
    teacher = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
                outputs=[nbformat.v4.new_output("stream", text="old")],
                execution_count=3,
            ),
            nbformat.v4.new_code_cell(
                "print(1)\n### BEGIN HIDDEN TESTS\nassert f(1) == 2\n### END HIDDEN TESTS"
            ),
            nbformat.v4.new_markdown_cell("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"),
        ]
    )
    before = nbformat.writes(teacher)
    student = make_student_notebook(teacher)
    assert nbformat.writes(teacher) == before  # the teacher copy is left as it was
    assert student.cells[0].source == (
        "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    )
    assert student.cells[0].outputs == [] and student.cells[0].execution_count is None
    assert student.cells[1].source == "print(1)"
    assert student.cells[2].source == "Why?\nYOUR ANSWER HERE"


@pytest.mark.parametrize(
    "source, message",
    [
        # a mistyped BEGIN: nbgrader alone would drop the END line and keep the solution
        (
            "x = 1\n### BEGN SOLUTION\nanswer = 42\n### END SOLUTION",
            "cell 1, line 4: 'END SOLUTION' without",
        ),
        ("### BEGIN SOLUTION\nanswer = 42", "cell 1, line 1: 'BEGIN SOLUTION' is never closed"),
        (
            "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION",
            "cell 1, line 2: 'BEGIN SOLUTION' inside the region opened on line 1",
        ),
        ("assert True\n### END HIDDEN TESTS", "cell 1, line 2: 'END HIDDEN TESTS' without"),
    ],
)
def test_regions_that_do_not_pair_up_are_refused(source, message):
    teacher = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("fine"), nbformat.v4.new_code_cell(source)]
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        make_student_notebook(teacher)


# --- wrong answers are caught, with what is wrong -------------------------------------------


def _token_cosine(a, b):
    return float(
        np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    )


def _cosine_of_means(a, b):
    ma, mb = a.mean(0), b.mean(0)
    return float(ma @ mb / (np.linalg.norm(ma) * np.linalg.norm(mb)))


def _uncentred_cka(a, b):
    return float(np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def _forward_no_centring(x, w_enc, b_enc, w_dec, b_dec):
    h = torch.relu(x @ w_enc + b_enc)
    return h @ w_dec + b_dec, h


def _loss_l1_mean(x, x_hat, h, lam):
    return ((x_hat - x) ** 2).mean() + lam * h.mean()


def _fvu_uncentred(x, x_hat):
    return float(((x - x_hat) ** 2).sum() / (x**2).sum())


def _rankme_no_eps(lam, variant):
    w = np.sqrt(lam) if variant == "singular" else np.asarray(lam, dtype=float)
    p = w / w.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def _alpha_unweighted(lam, fit_range):
    first, last = fit_range
    r = np.arange(first, last + 1)
    slope, intercept = np.polyfit(np.log(r), np.log(lam[first - 1 : last] / lam.sum()), 1)
    return -slope, intercept


def _toy_summed(w, u, t):
    loss, gw, gu = ex07._reference(w, u, t)
    return loss * len(w), gw, gu


def _toy_sequential(w, u, t, lr):
    loss, gw, _ = ex07._reference(w, u, t)
    w_new = w - lr * gw
    gu = w_new.T @ ((ex07._softmax(w @ u) - t) / len(w))  # U's gradient at the new W
    return w_new, u - lr * gu, loss


def _ablate_rows(h, mean, vectors, k, mode):
    top = vectors.T[:, :k]
    projected = (h - mean) @ top @ top.T
    return mean + projected if mode == "keep" else h - projected


def _raises(*_args):
    raise ZeroDivisionError("division by zero")


WRONG = {
    "cosine_of_means": (ex02.check_cosine_of_means, _token_cosine, "mean of the per-token"),
    "mean_token_cosine": (ex02.check_mean_token_cosine, _cosine_of_means, "cosine of the means"),
    "linear_cka": (ex02.check_linear_cka, _uncentred_cka, "without centring"),
    "sae_forward": (ex03.check_sae_forward, _forward_no_centring, "does not subtract b_dec"),
    "sae_loss": (ex03.check_sae_loss, _loss_l1_mean, "averaged over latents"),
    "fvu": (
        ex03.check_fvu,
        _fvu_uncentred,
        "expected 0.5, got 0.192308 (allowed difference 5e-07); the denominator is not centred",
    ),
    "mean_l0": (ex03.check_mean_l0, lambda h: int((h != 0).sum()), "total count"),
    "dead_latents": (
        ex03.check_dead_latents,
        lambda h: float(((h != 0).sum(0) == 0).float().mean()),
        "that is a fraction",
    ),
    "covariance_eigenvalues": (
        ex05.check_covariance_eigenvalues,
        lambda x: np.linalg.eigvalsh(np.cov(x.T)),
        "ascending order",
    ),
    "rankme": (ex05.check_rankme, _rankme_no_eps, "leaves the epsilon out"),
    "alpha_req": (ex05.check_alpha_req, _alpha_unweighted, "unweighted"),
    "toy_loss_and_grads": (ex07.check_toy_loss_and_grads, _toy_summed, "summed over inputs"),
    "toy_step": (ex07.check_toy_step, _toy_sequential, "already updated W"),
    "pass_at_k": (
        ex08.check_pass_at_k,
        lambda n, c, k: 1 - (1 - c / n) ** k,
        "with replacement",
    ),
    "eigen_ablate": (ex08.check_eigen_ablate, _ablate_rows, "rows of `vectors`"),
}


def test_every_exercise_has_a_wrong_answer_here():
    assert sorted(WRONG) == sorted(e.name for e in EXERCISES)


@pytest.mark.parametrize("name", sorted(WRONG))
def test_check_catches_a_wrong_answer(capsys, name):
    check, wrong, message = WRONG[name]
    check(wrong)  # never raises
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"FAIL {name}: ") and err.count("\n") == 1, err
    assert message in err, err


@pytest.mark.parametrize("name", sorted(WRONG))
def test_check_reports_a_crash_a_none_and_a_non_function(capsys, name):
    check = WRONG[name][0]
    check(_raises)
    check(lambda *args: None)
    check(0.5)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 3, err
    assert "your function raised ZeroDivisionError: division by zero" in lines[0]
    assert "your function returned None (is a `return` missing?)" in lines[1]
    assert f"expected your function (check_{name}({name})), got float 0.5" in lines[2]


def test_hints_name_the_case_and_tolerance(capsys):
    ex02.check_linear_cka(lambda a, b: 0.5)
    err = capsys.readouterr().err
    want = 126 / math.sqrt(90 * 522)  # by hand: ||B^T A||^2 = 126, ||A^T A|| = sqrt 90, ...
    assert f"expected {want:.6g}, got 0.5" in err and "allowed difference" in err


def test_student_copies_are_written_where_make_student_says(tmp_path):
    written = write_student_copies(tmp_path / "out")
    assert [p.name for p in written] == NOTEBOOKS
    assert all(p.parent == tmp_path / "out" and p.exists() for p in written)
    assert os.path.commonpath([str(p) for p in written]) == str(tmp_path / "out")


# --- the glossary points to functions that exist ---------------------------------------------


def _resolve(dotted: str):
    import importlib

    parts = dotted.removeprefix("repgeo_utils.").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("repgeo_utils." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_glossary_names_functions_that_exist():
    text = (ROOT / "docs" / "glossary.md").read_text()
    packages = ("repgeo_utils", "similarity", "sae", "spectral", "posttrain", "ablation")
    names = [
        name
        for name in re.findall(r"`([A-Za-z_][\w.]*)", text)
        if "." in name and name.split(".")[0] in packages
    ]
    assert len(names) >= 20, names  # 24 when written
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (AttributeError, ModuleNotFoundError):
            missing.append(name)
    assert missing == [], f"the glossary names what the package lacks: {missing}"
    assert "(README.md)" not in text and "docs/glossary.md" in (ROOT / "README.md").read_text()
