"""Run the relay's processes on loopback: used by the demo, the tests and the benchmarks.

Each process is the real ``clip-relay`` command started with an environment built here;
its log goes to a file; it is stopped by pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from relay.devtools.embedded_redis import free_port


def wait_http(url: str, timeout: float = 15.0, proc: Proc | None = None) -> None:
    """Block until *url* answers 200 (or raise, also when *proc* exits first: then the
    error ends with the tail of its log)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            code, tail = proc.popen.returncode, proc.log_text()[-3000:]
            raise RuntimeError(
                f"process exited with {code} before {url} answered; its log ends:\n{tail}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback URL)
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer: {last}")


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Block until something listens on 127.0.0.1:*port*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class Proc:
    """One running ``clip-relay`` process."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Still running?"""
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send *sig* if it still runs."""
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait up to *timeout*, then SIGKILL. Returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL: the process dies at once, whatever it was doing."""
        self.signal(signal.SIGKILL)
        self.popen.wait()
        self._log.close()

    def log_text(self) -> str:
        """What the process logged so far."""
        return self.log_path.read_text(errors="replace")


def spawn(name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> Proc:
    """Start ``clip-relay <args>`` with exactly *env* on top of a minimal environment."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    popen = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "relay", *args],
        env={**base, "PYTHONUNBUFFERED": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return Proc(name, popen, log_path, log)


@dataclass
class Ports:
    """Free loopback ports for one stack."""

    api: int = field(default_factory=free_port)
    upstream: int = field(default_factory=free_port)
    receiver: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)


def relay_env(
    redis_url: str,
    upstream_url: str,
    *,
    api_keys: str,
    upstream_key: str,
    port: int,
    metrics_port: int,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of an API or worker process of a loopback stack."""
    env = {
        "REDIS_URL": redis_url,
        "SCALEREACH_BASE_URL": upstream_url,
        "SCALEREACH_API_KEY": upstream_key,
        "RELAY_API_KEYS": api_keys,
        "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": str(port),
        "RELAY_METRICS_PORT": str(metrics_port),
        "RELAY_CALLBACK_ALLOW": "127.0.0.1/32",
        "LOG_FORMAT": "json",
    }
    env.update(extra or {})
    return env


@dataclass
class LocalStack:
    """The simulator, an API and a worker as processes on loopback (see
    :func:`start_local_stack`)."""

    ports: Ports
    procs: list[Proc]  # upstream-sim, api, worker

    @property
    def upstream(self) -> str:
        """Base URL of the simulator."""
        return f"http://127.0.0.1:{self.ports.upstream}"

    @property
    def api(self) -> str:
        """Base URL of the API."""
        return f"http://127.0.0.1:{self.ports.api}"

    @property
    def metrics(self) -> str:
        """Base URL of the worker's health and metrics server."""
        return f"http://127.0.0.1:{self.ports.metrics}"

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every process still running (worker and API first)."""
        for proc in reversed(self.procs):
            if proc.alive():
                proc.stop(timeout=timeout)


def start_local_stack(
    redis_url: str,
    log_dir: Path,
    *,
    api_keys: str,
    upstream_key: str,
    extra: Mapping[str, str] | None = None,
) -> LocalStack:
    """Start ``upstream-sim``, ``api`` and ``worker`` on free ports and wait until each
    answers (blocking). On failure the processes started so far are stopped."""
    ports = Ports()
    stack = LocalStack(ports, [])
    try:
        stack.procs.append(
            spawn(
                "upstream-sim",
                ["upstream-sim", "--port", str(ports.upstream), "--api-key", upstream_key],
                {},
                log_dir,
            )
        )
        env = relay_env(
            redis_url,
            stack.upstream,
            api_keys=api_keys,
            upstream_key=upstream_key,
            port=ports.api,
            metrics_port=ports.metrics,
            extra=extra,
        )
        stack.procs.append(spawn("api", ["api"], env, log_dir))
        stack.procs.append(spawn("worker", ["worker"], env, log_dir))
        sim, api, worker = stack.procs
        wait_http(stack.upstream + "/_sim/stats", 20.0, sim)
        wait_http(stack.api + "/healthz", 20.0, api)
        wait_http(stack.metrics + "/readyz", 20.0, worker)  # (its pumps running)
    except BaseException:
        stack.stop()
        raise
    return stack
