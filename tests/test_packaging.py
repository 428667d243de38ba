"""Packaging: version ranges that admit a user's pins, the constraints file in step with them, and what the sdist and
the wheel carry (LICENSE, py.typed, the YAML configs, the tests and the files they read)."""

import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

# Versions a user's project may pin that the declared ranges must admit (issue 17: hydra-core==1.3.2 and
# torchmetrics==1.8.0 could not be installed next to the old exact pins).
USER_PINS = {"hydra-core": "1.3.2", "torchmetrics": "1.8.0"}
# Tested exact versions of both platforms' torch / torchvision, and the Lightning stack at both ends.
BOUNDED = ("torch", "torchvision", "lightning", "torchmetrics", "hydra-core")
# Left out of a copied source tree: environments, caches and build outputs.
NOT_SOURCE = (".git", ".venv", "outputs", "multirun", "lightning_logs", "build", "dist", "*.egg-info", "__pycache__")
NOT_SOURCE += (".pytest_cache", ".ruff_cache", ".hypothesis")


def project():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def declared():
    """Every requirement of pyproject.toml (runtime and extras), as ``packaging`` requirements."""
    meta = project()
    lines = list(meta["dependencies"]) + [line for extra in meta["optional-dependencies"].values() for line in extra]
    return [Requirement(line) for line in lines]


def runtime():
    return {canonicalize_name(r.name): r for r in map(Requirement, project()["dependencies"])}


def constraints():
    """The pins of constraints.txt, comments and blank lines left out."""
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    return [Requirement(line) for line in (raw.split("#", 1)[0].strip() for raw in lines) if line]


def test_runtime_dependencies_are_ranges_with_upper_bounds():
    for requirement in runtime().values():
        operators = {spec.operator for spec in requirement.specifier}
        assert not operators & {"==", "==="}, f"{requirement}: declare a range, pin in constraints.txt"
    for name in BOUNDED:
        operators = {spec.operator for spec in runtime()[name].specifier}
        assert ">=" in operators and "<" in operators, f"{runtime()[name]}: needs a lower and an upper bound"


@pytest.mark.parametrize(("name", "version"), sorted(USER_PINS.items()))
def test_ranges_admit_a_project_pinning_older_releases(name, version):
    assert runtime()[name].specifier.contains(version), f"{runtime()[name]} rejects a project pinning {version}"


def test_constraints_pin_declared_dependencies_inside_their_ranges():
    ranges = {}
    for requirement in declared():
        ranges.setdefault(canonicalize_name(requirement.name), []).append(requirement.specifier)
    pinned = set()
    for pin in constraints():
        name = canonicalize_name(pin.name)
        assert name in ranges, f"constraints.txt pins {pin.name}, which pyproject.toml does not declare"
        (spec,) = pin.specifier
        assert spec.operator == "==", f"constraints.txt: {pin} is not an exact version"
        for specifier in ranges[name]:
            assert specifier.contains(spec.version), f"constraints.txt: {pin} is outside pyproject's {specifier}"
        pinned.add(name)
    assert set(runtime()) <= pinned, f"no tested version in constraints.txt for {sorted(set(runtime()) - pinned)}"


def copy_source(destination):
    """The repository's source tree without environments, caches or build outputs (builds then leave the repo as is)."""
    shutil.copytree(ROOT, destination, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    return destination


@pytest.mark.slow
@pytest.mark.parametrize("pin", [f"hydra-core=={USER_PINS['hydra-core']}", "torchmetrics"])
def test_pip_resolves_the_package_next_to_an_older_pin(pin, tmp_path):
    """Needs the package index; resolves against the installed torch (no download of torch)."""
    if pin == "torchmetrics":
        (lower,) = (spec.version for spec in runtime()["torchmetrics"].specifier if spec.operator == ">=")
        pin = f"torchmetrics=={lower}"
    source = copy_source(tmp_path / "src")
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", str(source), pin]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"


@pytest.mark.slow
def test_sdist_and_wheel_carry_license_types_configs_and_tests(tmp_path):
    source = copy_source(tmp_path / "src")
    dist = tmp_path / "dist"
    dist.mkdir()
    build_sdist = f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"
    subprocess.run([sys.executable, "-c", build_sdist], cwd=source, check=True, capture_output=True, timeout=300)
    wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)]
    subprocess.run([*wheel, str(source)], check=True, capture_output=True, timeout=300)

    configs = {path.relative_to(source).as_posix() for path in (source / "conf").rglob("*.yaml")}
    assert "conf/config.yaml" in configs

    (wheel_path,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel_path).namelist())
    assert "lightning_autobalance/py.typed" in names
    assert {f"lightning_autobalance/{config}" for config in configs} <= names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), sorted(names)

    (sdist_path,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist_path) as archive:
        members = {member.name.split("/", 1)[1]: member for member in archive.getmembers() if "/" in member.name}
        license_text = archive.extractfile(members["LICENSE"]).read().decode()
    tests = {path.relative_to(source).as_posix() for path in (source / "tests").rglob("*") if path.is_file()}
    tests = {name for name in tests if "__pycache__" not in name}
    needed = {"tests/conftest.py", "tests/scripts/ddp_search.py", "LICENSE", "CHANGELOG.md", "constraints.txt"}
    needed |= {"lightning_autobalance/py.typed", "README.md", "examples/group_fairness.py", "benchmarks/hyperstep.py"}
    needed |= tests | configs | {f"lightning_autobalance/{config}" for config in configs}
    assert needed <= set(members), sorted(needed - set(members))
    assert not any("__pycache__" in name for name in members)
    assert license_text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text

    # The wheel pip builds from the sdist (what `pip install lightning-autobalance.tar.gz` does) has the configs too.
    with tarfile.open(sdist_path) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    from_sdist = tmp_path / "from_sdist"
    subprocess.run([*wheel[:-1], str(from_sdist), str(unpacked)], check=True, capture_output=True, timeout=300)
    (wheel_path,) = from_sdist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel_path).namelist())
    assert {"lightning_autobalance/py.typed"} | {f"lightning_autobalance/{config}" for config in configs} <= names
