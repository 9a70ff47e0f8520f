"""The client SDK as a distribution: ``pip install clients/python`` in a clean venv brings
httpx and none of the server's dependencies, and the server's wheel ships the same package
(SPEC.md, "Client SDK"). Wheels come from pip's cache after the first run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "clients" / "python"
SERVER_ONLY = {"arq", "redis", "structlog", "cryptography", "aiohttp", "pydantic", "hiredis"}


def _run(args: list[str], cwd: Path, timeout: float = 180) -> str:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


CHECK = """
import base64, hashlib, hmac, time
import clip_relay_client as c
secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
body = b'{"type":"watch.ping","timestamp":"2026-11-28T10:00:00Z","data":{"watchId":"w"}}'
ts = str(int(time.time()))
sig = base64.b64encode(hmac.new(b"k" * 32, b"evt_1." + ts.encode() + b"." + body,
                                hashlib.sha256).digest()).decode()
e = c.verify(secret, body, {"webhook-id": "evt_1", "webhook-timestamp": ts,
                            "webhook-signature": "v1," + sig})
assert e.type == "watch.ping" and e["data"]["watchId"] == "w"
print(c.Client.__name__, c.AsyncClient.__name__)
"""


def test_the_sdk_installs_into_a_clean_venv_without_the_servers_dependencies(
    tmp_path: Path,
) -> None:
    """Its wheel and its dependencies' wheels, then an offline install into a fresh venv:
    httpx comes, arq, redis, structlog and cryptography do not; verify() and both clients
    import and work there."""
    wheels = tmp_path / "wheels"
    source = tmp_path / "sdk"  # a copy: the build leaves nothing in the source tree
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    shutil.copytree(SDK, source, ignore=ignore)
    _run([sys.executable, "-m", "pip", "wheel", "-q", str(source), "-w", str(wheels)], tmp_path)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip"]
    offline = ["install", "-q", "--no-index", "--find-links", str(wheels)]
    _run([*pip, *offline, "clip-relay-client"], tmp_path)
    listed = json.loads(_run([*pip, "list", "--format", "json"], tmp_path))
    installed = {p["name"].lower() for p in listed}
    assert "clip-relay-client" in installed and "httpx" in installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    assert _run([py, "-c", CHECK], tmp_path).split() == ["Client", "AsyncClient"]
    where = "import clip_relay_client as c, pathlib; print(pathlib.Path(c.__file__).parent)"
    package = Path(_run([py, "-c", where], tmp_path).strip())
    assert (package / "py.typed").exists() and str(package).startswith(str(venv))


def test_the_servers_wheel_ships_the_same_sdk_and_the_watches_command(tmp_path: Path) -> None:
    """``pip install .`` (from what the Dockerfile copies) gives clip_relay_client, the very
    files of clients/python, with py.typed, and httpx among the requirements."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for package in ("relay", "workers", "clients/python/clip_relay_client"):
        shutil.copytree(ROOT / package, context / package, ignore=ignore)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(dist)], context)
    (wheel,) = dist.glob("clip_relay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        shipped = {n for n in names if n.startswith("clip_relay_client/")}
        sources = {"clip_relay_client/" + p.name for p in (SDK / "clip_relay_client").glob("*.py")}
        assert sources | {"clip_relay_client/py.typed"} <= shipped
        for name in sources:
            assert archive.read(name).decode() == (SDK / name).read_text()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        assert "Requires-Dist: httpx" in archive.read(metadata).decode()
        assert "relay/ops_cli.py" in names
