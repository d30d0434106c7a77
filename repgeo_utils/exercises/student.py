"""Student copies of the exercise notebooks, made with nbgrader's own preprocessors.

    python -m repgeo_utils.exercises.student build/student          # every exercise notebook
    python -m repgeo_utils.exercises.student OUT notebooks/exercises/ex02_similarity.ipynb

Each teacher notebook goes through what ``nbgrader generate_assignment --no-metadata`` does to a
notebook: ``ClearSolutions`` (every region between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` becomes ``raise NotImplementedError()`` at the region's indentation),
``ClearHiddenTests`` and ``ClearOutput``, with ``enforce_metadata`` off so that the delimiters
alone mark the solutions (no nbgrader cell metadata, no course directory, no database). Then
nbconvert's ``ClearMetadataPreprocessor`` drops the execution records of the teacher's run,
keeping the kernel. The copies are written as plain notebooks to hand out.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions
from traitlets.config import Config

from ..config import ROOT

#: The teacher copies: solutions in, executed, committed.
EXERCISE_DIR = ROOT / "notebooks" / "exercises"
#: Where ``make student`` writes the copies (git-ignored).
DEFAULT_OUT = ROOT / "build" / "student"
#: The stub a solution region becomes (nbgrader's default for Python, spelt out).
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
#: Text no student copy may contain: a delimiter that survived means a mistyped region.
DELIMITERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def exercise_notebooks() -> list[Path]:
    """The teacher notebooks, ``notebooks/exercises/ex*.ipynb``, in order."""
    return sorted(EXERCISE_DIR.glob("ex*.ipynb"))


def student_config() -> Config:
    config = Config()
    # delimiters alone mark the solutions (nbgrader generate_assignment --no-metadata)
    config.ClearSolutions.enforce_metadata = False
    config.ClearHiddenTests.enforce_metadata = False
    config.ClearSolutions.code_stub = {"python": CODE_STUB}
    config.ClearMetadataPreprocessor.preserve_nb_metadata_mask = {"kernelspec", "language_info"}
    config.ClearMetadataPreprocessor.preserve_cell_metadata_mask = {"tags"}
    return config


def check_regions(teacher: nbformat.NotebookNode) -> None:
    """Refuse a teacher notebook whose solution or hidden-test regions do not pair up within a
    cell. nbgrader raises on an unclosed BEGIN but silently drops a stray END line: a mistyped
    BEGIN would leave its solution in the student copy."""
    for index, cell in enumerate(teacher.cells):
        for what in ("SOLUTION", "HIDDEN TESTS"):
            begin, end = f"BEGIN {what}", f"END {what}"
            opened: int | None = None
            for number, line in enumerate(cell.source.split("\n"), start=1):
                if begin in line:
                    if opened is not None:
                        raise ValueError(
                            f"cell {index}, line {number}: {begin!r} inside the region opened "
                            f"on line {opened}"
                        )
                    opened = number
                elif end in line:
                    if opened is None:
                        raise ValueError(
                            f"cell {index}, line {number}: {end!r} without a {begin!r} before it "
                            f"(a mistyped {begin!r} would leave the solution in the copy)"
                        )
                    opened = None
            if opened is not None:
                raise ValueError(f"cell {index}, line {opened}: {begin!r} is never closed")


def make_student_notebook(teacher: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student copy of a teacher notebook (the teacher's is left as it was)."""
    check_regions(teacher)
    config = student_config()
    nb = copy.deepcopy(teacher)
    resources: dict = {}
    for preprocessor in (
        ClearSolutions(config=config),
        ClearHiddenTests(config=config),
        ClearOutput(config=config),
        ClearMetadataPreprocessor(config=config),
    ):
        nb, resources = preprocessor.preprocess(nb, resources)
    for index, cell in enumerate(nb.cells):
        for delimiter in DELIMITERS:
            if delimiter in cell.source:
                raise ValueError(
                    f"cell {index} of the student copy still contains {delimiter!r}: a "
                    "solution region is not closed, or prose quotes a delimiter"
                )
    nbformat.validate(nb)
    return nb


def write_student_copies(out_dir: Path, notebooks: Sequence[Path] | None = None) -> list[Path]:
    """Write the student copy of each teacher notebook (default: all of them) to ``out_dir``."""
    notebooks = list(notebooks) if notebooks is not None else exercise_notebooks()
    if not notebooks:
        raise ValueError(f"no exercise notebooks given (and none in {EXERCISE_DIR})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        student = make_student_notebook(nbformat.read(path, as_version=4))
        target = out_dir / Path(path).name
        nbformat.write(student, target)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write student copies of the exercise notebooks (solutions and outputs "
        "removed)."
    )
    parser.add_argument("out", type=Path, nargs="?", default=DEFAULT_OUT, help="output folder")
    parser.add_argument("notebooks", type=Path, nargs="*", help="default: notebooks/exercises/")
    args = parser.parse_args(argv)
    for path in write_student_copies(args.out, args.notebooks or None):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
