"""The embedded database: SecantusDB's `secantusd-py` as a child process of the service, for local runs
and tests (production sets MONGODB_URL). Its own module because its lifecycle (ports, locks, child
processes) has nothing to do with how the service talks to a database."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


class EmbeddedServerError(RuntimeError):
    """The embedded database could not start; the message says why and what to do."""


@dataclass
class EmbeddedServer:
    """SecantusDB (`secantusd-py`) as a child process, storing its data in `data_dir`.

    A lock file in `data_dir` keeps a second service off the same data; the child gets
    PDEATHSIG so it dies with us even if we are killed without a chance to clean up.
    """

    data_dir: Path
    port: int = 0
    extra_args: Sequence[str] = ()
    process: asyncio.subprocess.Process | None = field(default=None, init=False)
    _lock: IO[str] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        # journal=true: SecantusDB acknowledges w:1 writes before its log reaches the OS, so without it
        # a crash (kill -9) loses the last second of acknowledged writes (found by the fault tests).
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true&journal=true"

    def argv(self) -> list[str]:
        """The server's command line (the test suite starts its session server with it too)."""
        return [
            _secantusd_executable(),
            *("--host", "127.0.0.1", "--port", str(self.port), "--storage-path", str(self.data_dir / "data")),
            *("--log-level", "WARNING", *self.extra_args),
        ]

    async def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = _acquire_lock(self.data_dir / "service.lock")
        if not self.port:
            self.port = free_port()
        if self._log is not None:  # restarting after the child died on its own
            self._log.close()
        self._log = open(self.data_dir / "secantusd.log", "ab")  # noqa: SIM115, ASYNC230 (start-up only; lives with the child)
        self.process = await asyncio.create_subprocess_exec(
            *self.argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=_die_with_parent,
        )
        await self._wait_until_listening(self.process, timeout)
        log.info("embedded database listening on 127.0.0.1:%d (data in %s)", self.port, self.data_dir)

    async def _wait_until_listening(self, process: asyncio.subprocess.Process, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if process.returncode is not None:
                await self.stop()
                raise EmbeddedServerError(
                    f"the embedded database exited with code {process.returncode}; "
                    f"see {self.data_dir / 'secantusd.log'}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    await self.stop()
                    raise EmbeddedServerError(f"the embedded database did not answer within {timeout:.0f}s") from None
                await asyncio.sleep(0.1)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def stop(self, timeout: float = 15.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL); keeps the lock so a restart reuses the port and data."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def close(self) -> None:
        await self.stop()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _acquire_lock(path: Path) -> IO[str]:
    handle = open(path, "a+")  # noqa: SIM115 (held for the life of the service)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise EmbeddedServerError(
            f"another service is already using the data directory {path.parent} "
            "(SERVICE_DATA_DIR); stop it or choose another directory"
        ) from None
    return handle


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free on `host` now (for the embedded server, and `serve --workers` on port 0)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _secantusd_executable() -> str:
    beside_python = Path(sys.executable).with_name("secantusd-py")
    found = str(beside_python) if beside_python.exists() else shutil.which("secantusd-py")
    if not found:
        raise EmbeddedServerError(
            "secantusd-py is not installed: pip install -r requirements-embedded.txt, or set MONGODB_URL"
        )
    return found


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it when the parent dies."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    os.setpgrp()  # Ctrl-C goes to our process group only; we stop the child ourselves, in order
