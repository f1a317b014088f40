"""DPoP (RFC 9449): sender-constrained tokens with a key of the client's own.

`Client(..., dpop=True)` (or a `DPoPKey` to reuse one) makes the client send a proof with every token
request, so the server binds the tokens to the key (`token_type: DPoP`); API requests then carry
`Authorization: DPoP <token>` and a fresh proof (`htm`, `htu`, `iat`, `jti`, `ath`). A server nonce
(`use_dpop_nonce`, section 8 and 9) is learnt from `DPoP-Nonce` and the request sent again once.

Signing needs `cryptography` (`pip install "restful-api-client[dpop]"`); without DPoP the SDK does
not import it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

from yarl import URL


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class DPoPKey:
    """An ES256 (P-256) key pair made for this client (or given as a `cryptography` private key), and
    the server nonces it has been told, by origin."""

    def __init__(self, private_key: Any = None) -> None:
        try:
            from cryptography.hazmat.primitives.asymmetric import ec
        except ImportError as error:  # pragma: no cover - depends on the installation
            raise ImportError('DPoP needs cryptography: pip install "restful-api-client[dpop]"') from error
        self._key: ec.EllipticCurvePrivateKey = private_key or ec.generate_private_key(ec.SECP256R1())
        numbers = self._key.public_key().public_numbers()
        self.jwk = {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        }
        self._header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk}
        self.nonces: dict[str, str] = {}

    @property
    def thumbprint(self) -> str:
        """The RFC 7638 JWK thumbprint: what the server binds tokens to (`cnf.jkt`)."""
        canonical = json.dumps(self.jwk, separators=(",", ":"), sort_keys=True).encode()
        return _b64(hashlib.sha256(canonical).digest())

    def proof(self, method: str, url: URL, access_token: str | None = None) -> str:
        """A fresh proof for one request (RFC 9449 section 4.2): `htu` without query and fragment."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        claims: dict[str, Any] = {
            "htm": method,
            "htu": str(url.with_query(None).with_fragment(None)),
            "iat": int(time.time()),
            "jti": secrets.token_urlsafe(16),
        }
        if access_token is not None:
            claims["ath"] = _b64(hashlib.sha256(access_token.encode("ascii")).digest())
        nonce = self.nonces.get(str(url.origin()))
        if nonce is not None:
            claims["nonce"] = nonce
        header = _b64(json.dumps(self._header, separators=(",", ":")).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode("ascii")
        r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return f"{header}.{payload}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def learn(self, url: URL, headers: Any) -> bool:
        """Keep the server's `DPoP-Nonce` for its origin; True when it is a new one."""
        nonce = headers.get("DPoP-Nonce")
        origin = str(url.origin())
        if not nonce or self.nonces.get(origin) == nonce:
            return False
        self.nonces[origin] = nonce
        return True
