"""Encryption at rest for the few secrets the service must read back (TOTP secrets), with a key that never
comes from the database.

DATA_ENCRYPTION_KEY holds one or more Fernet keys (AES-128-CBC with HMAC-SHA256, from `cryptography`),
comma-separated: the first encrypts, every one decrypts, so a key can be rotated by putting the new one
first. Without it, the embedded database's `make run` generates one into SERVICE_DATA_DIR (a 0600 file,
reused across restarts); a deployment on a real MONGODB_URL has none, and whatever needs one refuses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from service.config import SETTINGS, Settings, data_encryption_keys

log = logging.getLogger(__name__)

KEY_FILE = "data-encryption.key"


class KeyUnavailable(Exception):
    """There is no data encryption key, or none of the keys opens a stored value; the message says why."""


class DataKeys:
    """The service's data encryption keys, loaded at start-up (`data_keys_ctx`); None until then, and in a
    deployment that has none (`why` then says so)."""

    def __init__(self) -> None:
        self._fernet: MultiFernet | None = None
        self.why = "DATA_ENCRYPTION_KEY is not set, and only the embedded database generates one."

    def load(self, keys: tuple[str, ...]) -> None:
        self._fernet = MultiFernet([Fernet(key.encode("ascii")) for key in keys])

    @property
    def available(self) -> bool:
        return self._fernet is not None

    def encrypt(self, value: str) -> str:
        if self._fernet is None:
            raise KeyUnavailable(self.why)
        return self._fernet.encrypt(value.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        if self._fernet is None:
            raise KeyUnavailable(self.why)
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise KeyUnavailable("No DATA_ENCRYPTION_KEY opens this value (was the key replaced?).") from None


def embedded_key(data_dir: Path) -> str:
    """The embedded mode's key: read from SERVICE_DATA_DIR, or generated there once (mode 0600). Of two
    processes starting at once, one creates the file and both use it."""
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # the other process may still be writing it
            text = path.read_text(encoding="ascii").strip()
            if text:
                return data_encryption_keys(text)[0]
            time.sleep(0.02)
        raise KeyUnavailable(f"{path} is empty; delete it to generate a new key.") from None
    key = Fernet.generate_key()
    with os.fdopen(descriptor, "wb") as file:
        file.write(key + b"\n")
    log.info("generated a data encryption key in %s (keep it with the data)", path)
    return key.decode("ascii")


def configured_keys(settings: Settings) -> tuple[str, ...]:
    """The keys this deployment uses: DATA_ENCRYPTION_KEY, or the embedded mode's own; () if neither."""
    if settings.data_encryption_key:
        return settings.data_encryption_key
    if settings.mongodb_url is None:
        return (embedded_key(settings.data_dir),)
    return ()


async def data_keys_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load the keys at start-up (the embedded key file is read or written off the event loop)."""
    keys = await asyncio.to_thread(configured_keys, app[SETTINGS])
    if keys:
        app[DATA_KEYS].load(keys)
    yield


DATA_KEYS: web.AppKey[DataKeys] = web.AppKey("service.data_keys", DataKeys)
