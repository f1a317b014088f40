"""Password hashing: argon2id in a dedicated thread pool, with admission control.

argon2-cffi releases the GIL, so hashes run in parallel and never on the event loop (nor in the pool
Motor uses). A hash costs tens of milliseconds of CPU, so a sign-in storm would otherwise queue
without bound and every sign-in would wait seconds: instead, a request whose expected wait exceeds
`max_wait` is refused at once (`Overloaded`), before it does any work, and the caller answers 503
with Retry-After. The expected wait is the queue ahead of it times the measured hash time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import argon2
from aiohttp import web

from service import metrics, tracing
from service.config import SETTINGS
from service.errors import ServiceUnavailable

T = TypeVar("T")
HASHING_NICENESS = 10


class Overloaded(ServiceUnavailable):
    """Hashing cannot start within the bound: answered 503 with Retry-After, never queued."""

    def __init__(self) -> None:
        super().__init__("Too many sign-ins at once; try again in a moment.", retry_after=1)


def _lower_priority() -> None:
    """Runs in each hashing thread: yield the CPU to the event loop, so a sign-in storm (all cores
    hashing) does not slow every other request; the hashes still get all the CPU left over."""
    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        with contextlib.suppress(OSError):  # Linux: per-thread; raising niceness needs no privilege
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


class PasswordHasher:
    """argon2id hashing and verification off the event loop, refusing work it cannot start in time.

    `max_wait` (seconds) bounds the expected queueing delay; None never refuses (command-line tools).
    """

    def __init__(
        self, time_cost: int, memory_kib: int, *, max_wait: float | None = None, threads: int | None = None
    ) -> None:
        self._argon2 = argon2.PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        self.threads = threads or os.cpu_count() or 1
        self.max_wait = max_wait
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="argon2", initializer=_lower_priority)
        started = time.thread_time()
        self._dummy_hash = self._argon2.hash(secrets.token_urlsafe(16))
        self.hash_seconds = time.thread_time() - started  # moving average of one hash's CPU time
        self.in_flight = 0  # admitted and not yet finished: running, queued, or about to queue

    def expected_wait(self) -> float:
        """How long a request admitted now would wait before its hash starts."""
        ahead = self.in_flight - self.threads + 1
        return max(0, ahead) * self.hash_seconds / self.threads

    def overloaded(self) -> bool:
        return self.max_wait is not None and self.expected_wait() > self.max_wait

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place in the hashing queue, or raise Overloaded when the wait would be too long.

        Callers that do database work before hashing (reserving a sign-in attempt) take the place
        first, so a refused request has cost nothing."""
        if self.overloaded():
            metrics.HASH_SHED.inc()
            raise Overloaded()
        self.in_flight += 1
        metrics.HASH_QUEUE.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            metrics.HASH_QUEUE.dec()

    async def hash(self, password: str) -> str:
        with self.admit():
            return await self._run(self._argon2.hash, password)

    async def verify(self, password_hash: str | None, password: str, *, admitted: bool = False) -> bool:
        """Check a password; with no hash (unknown user) spend the same time and fail.

        `admitted`: the caller already holds a place (`admit()`)."""
        if admitted:
            return await self._run(self._verify, password_hash, password)
        with self.admit():
            return await self._run(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._argon2.verify(password_hash or self._dummy_hash, password) and password_hash is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._argon2.check_needs_rehash(password_hash)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        queued = time.perf_counter()

        def timed() -> T:
            started, cpu = time.perf_counter(), time.thread_time()
            metrics.HASH_WAIT.observe(started - queued)
            try:
                return function(*args)
            finally:
                metrics.HASH_TIME.observe(time.perf_counter() - started)
                # The estimate uses the thread's CPU time: wall time would count waits for the GIL,
                # which grow with load and would make the server shed work it can still do.
                self.hash_seconds = 0.8 * self.hash_seconds + 0.2 * (time.thread_time() - cpu)

        with tracing.tracer.start_as_current_span("password hash"):
            return await asyncio.get_running_loop().run_in_executor(self._pool, timed)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def hasher_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    hasher = PasswordHasher(
        settings.argon2_time_cost, settings.argon2_memory_kib, max_wait=settings.hash_queue_wait_ms / 1000
    )
    app[HASHER] = hasher
    yield
    hasher.close()


HASHER: web.AppKey[PasswordHasher] = web.AppKey("service.hasher", PasswordHasher)
