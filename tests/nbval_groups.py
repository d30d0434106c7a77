"""nbval add-on for ``make nbtest -n 2``: which notebooks must run in order in one worker.

With pytest-xdist's ``--dist loadgroup`` every cell of a notebook, and every notebook of a group,
runs in one worker, in order. The groups follow what the notebooks reuse from each other's
caches: the encoder chain (01's fine-tunes feed 02-05, 03's SAEs feed 04) in one worker, the
language-model chain (06's pretrained LM feeds 08 and 09) and the rest in the other. Where a
notebook of one group needs a cache entry the other group is building (08's eigen-direction
ablation uses one of 01's fine-tunes), the cache's lock makes it wait for that entry instead of
building it twice. Loaded by ``make nbtest`` with ``-p tests.nbval_groups``; without xdist the
marks do nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: notebook-name prefix -> group; a notebook not listed is a group of its own.
GROUPS: dict[str, str] = {
    "01_": "encoder",
    "02_": "encoder",
    "03_": "encoder",
    "04_": "encoder",
    "05_": "encoder",
    "00_": "lm",
    "06_": "lm",
    "07_": "lm",
    "08_": "lm",
    "09_": "lm",
}


def group_of(path: str | Path) -> str:
    name = Path(path).name
    for prefix, group in GROUPS.items():
        if name.startswith(prefix):
            return group
    return name


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.xdist_group(group_of(item.fspath)))
