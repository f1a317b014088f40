"""Plain helpers shared by the tests."""

from __future__ import annotations

import base64
from typing import Any


def basic(client_id: str, secret: str) -> dict[str, str]:
    """HTTP Basic client authentication (RFC 6749 2.3.1)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def with_current_password(op: dict[str, Any], password: str = "w") -> list[dict[str, Any]]:
    """A JSON Patch that proves the caller's password before a guarded change (email, password)."""
    return [{"op": "test", "path": "/current_password", "value": password}, op]
