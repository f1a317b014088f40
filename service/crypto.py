"""Random tokens and their digests.

Access and refresh tokens, authorization codes and client secrets carry 256 bits of randomness, so a
fast hash is enough to store them: only SHA-256 digests reach the database, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def hash_secret(value: str) -> str:
    """Digest of a random token or client secret."""
    return hashlib.sha256(value.encode()).hexdigest()


def secret_matches(value: str, digest: str) -> bool:
    return hmac.compare_digest(hash_secret(value), digest)


def new_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)
