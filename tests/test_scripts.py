"""The Lua scripts as files (relay/store/commands/*.lua): each one is loaded by name by one
part of the store (or the key rotation's :class:`~relay.store.reseal.Resealer`), documents
its KEYS/ARGV in its header, and ships in the wheel that ``pip install .`` (the
Dockerfile's recipe) builds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from cryptography.fernet import Fernet
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from relay.domain.crypto import SecretBox
from relay.store import Store, scripts
from relay.store.recovery import RecoverScripts
from relay.store.reseal import Resealer

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ROOT / "relay" / "store" / "commands"
LUA_FILES = sorted(p.name for p in COMMANDS.glob("*.lua"))


def test_every_script_file_is_registered_by_one_part_of_the_store() -> None:
    redis = Redis()  # never connected: registering a script only hashes its text
    store = Store(redis)
    registered: list[str] = []
    parts = (store.watches, store.videos, store.deliveries, store.limits, store.retention)
    # (and the operator's key rotation, on the store's connection but not a part of Store)
    resealer = Resealer(redis, SecretBox(Fernet.generate_key().decode()))
    for part in (*parts, store.circuits, resealer):
        held = list(vars(part).values())
        held += [s for v in held if isinstance(v, RecoverScripts) for s in vars(v).values()]
        for value in held:
            if isinstance(value, AsyncScript):
                assert isinstance(value.script, str)
                registered.append(value.script)
    assert LUA_FILES, "no .lua files found"
    assert sorted(registered) == sorted(scripts.source(name[:-4]) for name in LUA_FILES)


def test_every_script_documents_its_arguments_in_its_header() -> None:
    for name in LUA_FILES:
        text = (COMMANDS / name).read_text()
        header = [line for line in text.splitlines() if line.startswith("--")]
        assert text.startswith("-- "), f"{name}: no header comment"
        assert "ARGV" in "\n".join(header), f"{name}: its header does not document ARGV"


def test_the_wheel_ships_the_lua_files(tmp_path: Path) -> None:
    """``pip wheel . --no-deps``, from what the Dockerfile copies into its build context."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    for package in ("relay", "workers"):
        shutil.copytree(
            ROOT / package,
            context / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    dist = tmp_path / "dist"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(dist),
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = dist.glob("clip_relay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            Path(n).name: archive.read(n).decode()
            for n in archive.namelist()
            if n.startswith("relay/store/commands/")
        }
    assert sorted(shipped) == LUA_FILES
    for name in LUA_FILES:
        assert shipped[name] == (COMMANDS / name).read_text()


def test_the_cost_bench_finds_every_part_it_takes_out_of_the_scripts() -> None:
    """``bench/redis_cost.py --without PART`` edits the scripts' text; an edit of a script
    that the bench no longer matches must fail here, not in a bench run (docs/scaling.md's
    table of where a delivery's instructions go is made with it)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import redis_cost  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for part, edits in redis_cost.ABLATIONS.items():
        for name, old, _ in edits:
            assert scripts.source(name).count(old) == 1, (part, name, old)  # (one place)
