"""pyproject.toml's [project] and the pinned requirements files describe the same dependencies."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(name: str) -> dict[str, Requirement]:
    lines = (ROOT / name).read_text().splitlines()
    found = [Requirement(line) for line in lines if line.strip() and not line.startswith(("#", "-r"))]
    return {canonicalize_name(r.name): r for r in found}


def declared(requirements: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, requirements)}


def test_every_runtime_pin_is_a_declared_dependency_in_its_range() -> None:
    ranges = declared(PROJECT["dependencies"])
    locked = pins("requirements.txt")
    assert set(locked) == set(ranges)
    for name, pin in locked.items():
        (exact,) = pin.specifier
        assert exact.operator == "==", f"{name} is not pinned"
        assert ranges[name].specifier.contains(exact.version, prereleases=True), f"{name}=={exact.version}"


def test_the_embedded_database_is_an_extra_and_not_in_the_production_lock() -> None:
    embedded = declared(PROJECT["optional-dependencies"]["embedded"])
    assert set(embedded) == set(pins("requirements-embedded.txt")) == {"secantusdb"}
    assert "secantusdb" not in pins("requirements.txt")
    dockerfile = (ROOT / "ops" / "Dockerfile").read_text()
    assert "-r requirements.txt" in dockerfile
    assert "requirements-embedded" not in dockerfile


def test_the_in_memory_test_double_is_an_extra_and_not_in_the_production_lock() -> None:
    mock = declared(PROJECT["optional-dependencies"]["mock"])
    assert set(mock) == set(pins("requirements-mock.txt")) == {"mongomock", "mongomock-motor"}
    for name, pin in pins("requirements-mock.txt").items():
        (exact,) = pin.specifier
        assert mock[name].specifier.contains(exact.version, prereleases=True), f"{name}=={exact.version}"
    assert not {"mongomock", "mongomock-motor"} & set(pins("requirements.txt"))
