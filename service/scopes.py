"""Every OAuth2 scope a token can carry, with the sentence the consent page and the docs show for it.

One registry, filled by each domain's setup() with its own scopes (named for the domain they guard:
`users:`, `teams:`, `auth:`; the authorization server adds OpenID Connect's), read by the authorization
server (what a client may register, what a token request may ask), the consent page and the docs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import validate

SCOPES: dict[str, str] = {}


def register(scopes: Mapping[str, str]) -> None:
    """Add a domain's scopes; idempotent (every app a process builds registers the same ones)."""
    SCOPES.update(scopes)


class KnownScope(validate.OneOf):
    """A registered scope: the choices are read when a value is checked (and when the docs are built),
    so schemas declared before the domains register keep up with the registry."""

    def __init__(self) -> None:
        super().__init__((), error="Unknown scope {input}.")

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return tuple(SCOPES)

    @choices.setter
    def choices(self, value: Any) -> None:
        """OneOf's constructor assigns the choices; the registry is the only source."""
