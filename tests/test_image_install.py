"""Reproduce the image's builder stage without Docker.

The builder stage's COPY and RUN instructions are read from the Dockerfile and run as they
stand, in a temporary folder: the sources are copied as COPY copies them, every RUN line is
run by `sh -c` with the stage's ENV, except that the path variables ($BUILD_VENV,
$WHEEL_DIR, $VIRTUAL_ENV) point into the temporary folder and `python` is a fresh
virtualenv standing in for the base image's interpreter. Then the installed console
script must answer --help.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PATH_VARIABLES = ("BUILD_VENV", "WHEEL_DIR", "VIRTUAL_ENV")


def builder_stage() -> list[tuple[str, str]]:
    """(keyword, arguments) of the builder stage, continuation lines joined."""
    stage: list[tuple[str, str]] = []
    inside = False
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full, pending = (pending + line).strip(), ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            if inside:
                break
            inside = args.endswith(" AS builder")
            continue
        if inside:
            stage.append((keyword, args.strip()))
    assert stage, "no builder stage (FROM ... AS builder) in the Dockerfile"
    return stage


def base_python_minor() -> tuple[int, int]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    match = re.search(r"python:(\d+)\.(\d+)\.\d+-slim", text)
    assert match, "base image tag not found"
    return int(match.group(1)), int(match.group(2))


def test_builder_stage_names_paths_only_through_variables() -> None:
    runs = [args for keyword, args in builder_stage() if keyword == "RUN"]
    assert runs
    for args in runs:
        # An absolute path typed into a RUN line would escape the substitution below.
        absolute = [w for w in shlex.split(args) if w.startswith("/") or "=/" in w]
        assert not absolute, f"absolute paths {absolute} in RUN: {args}"
    env_keys = set()
    for keyword, args in builder_stage():
        if keyword == "ENV":
            env_keys |= {token.partition("=")[0] for token in shlex.split(args)}
    assert set(PATH_VARIABLES) <= env_keys


def test_image_pip_steps_install_a_working_cli(tmp_path: Path) -> None:
    assert sys.version_info[:2] == base_python_minor(), (
        f"the image uses Python {base_python_minor()}, this test runs on {sys.version_info[:2]}"
    )
    stage = builder_stage()

    # The base image's interpreter: a clean virtualenv with nothing installed.
    base = tmp_path / "base-python"
    venv.EnvBuilder(with_pip=True, clear=True).create(base)

    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            env.update(dict(token.split("=", 1) for token in shlex.split(args)))
    env.update(
        BUILD_VENV=str(tmp_path / "buildenv"),
        WHEEL_DIR=str(tmp_path / "wheels"),
        VIRTUAL_ENV=str(tmp_path / "venv"),
    )
    run_env = {
        "HOME": str(tmp_path / "home"),
        "PATH": f"{base / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LANG": "C.UTF-8",
        # pip configuration of this machine is not the image's: ignore it.
        "PIP_CONFIG_FILE": os.devnull,
        **{k: v for k, v in os.environ.items() if k in {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}},
        **env,
    }

    workdir = tmp_path / "src"
    ran = 0
    for keyword, args in stage:
        if keyword == "WORKDIR":
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = shlex.split(args)
            assert not any(s.startswith("--") for s in sources), args
            for source in sources:
                origin = ROOT / source
                target = workdir / dest / source if dest.endswith("/") else workdir / dest
                if origin.is_dir():
                    shutil.copytree(
                        origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target)
        elif keyword == "RUN":
            result = subprocess.run(
                ["sh", "-c", args],
                cwd=workdir,
                env=run_env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            assert result.returncode == 0, (
                f"RUN failed ({result.returncode}): {args}\n"
                f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
            )
            ran += 1
    assert ran >= 1

    exe = tmp_path / "venv" / "bin" / "leadflow-exporter"
    assert exe.is_file(), "the runtime virtualenv has no leadflow-exporter script"
    result = subprocess.run(
        [str(exe), "--help"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"\brun\b", result.stdout), result.stdout
    assert re.search(r"\bcheck\b", result.stdout), result.stdout

    # Only the pinned set and the project are installed, and nothing from the source tree.
    freeze = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "freeze", "--all"],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "leadflow-exporter @ file://" in freeze or "leadflow_exporter" in freeze.lower()
    assert "-e " not in freeze, "the image must install a wheel, not an editable tree"
    # Every installed distribution is one the Dockerfile pins, at the pinned version: a new
    # runtime dependency in pyproject.toml must be pinned there too, not float to latest.
    pinned = {
        name.lower().replace("_", "-"): version
        for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", dockerfile_run())
    }
    checked = 0
    for line in freeze.splitlines():
        if "==" not in line:
            continue
        name, version = line.split("==", 1)
        name = name.lower().replace("_", "-")
        if name in {"pip", "setuptools", "wheel", "leadflow-exporter"}:
            continue
        assert pinned.get(name) == version, f"{name}=={version} is installed but not pinned"
        checked += 1
    runtime_pins = set(pinned) - {"setuptools", "wheel"}
    assert checked == len(runtime_pins), (checked, sorted(runtime_pins))


def dockerfile_run() -> str:
    return "\n".join(args for keyword, args in builder_stage() if keyword == "RUN")
