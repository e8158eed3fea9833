"""A throwaway redis-server on loopback (no persistence), for the spend store's tests."""

from __future__ import annotations

import contextlib
import shutil
import subprocess  # nosec B404 - runs the system's redis-server
from collections.abc import Iterator
from pathlib import Path

from cortex.testing.ports import free_port
from cortex.testing.waiting import wait_for


def redis_exe() -> str | None:
    return shutil.which("redis-server")


@contextlib.contextmanager
def redis_server(workdir: Path, exe: str) -> Iterator[str]:
    """Run `exe` on a free port until the block ends; yields its redis:// URL."""
    import redis

    port = free_port()
    proc = subprocess.Popen(  # nosec B603 - a fixed argv
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--dir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)

    def answers() -> bool:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"redis-server exited with {proc.returncode}:\n{out}")
        return client.ping()

    try:
        wait_for(answers, f"redis-server on port {port} to answer PING", 10, 0.05,
                 ignore=(redis.ConnectionError,))
        client.close()
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
