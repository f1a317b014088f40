"""DPoP (RFC 9449): proofs of possession of a key, checked at the token endpoint and at the API.

A proof is a JWT signed by the client's key, whose public half rides in its header. Checking one
(RFC 9449 4.3) is done here with joserfc (authlib's JOSE successor, which authlib itself depends on):

- the size first (MAX_PROOF bytes), before anything is decoded;
- the header (`typ: dpop+jwt`, an asymmetric `alg` of ALGORITHMS, a public `jwk` of the type and size
  that algorithm needs) is parsed once per distinct header and kept in an LRU with the imported key and
  its RFC 7638 thumbprint (`jkt`): a client sends the same header on every request, so the signature
  check is the only per-request cryptography;
- the claims: `htm` and `htu` name this request (the URI compared without query and fragment, 4.3 item
  9), `iat` within IAT_WINDOW seconds of now either way, `jti` present, `ath` (the access token's
  SHA-256) at the resource, `nonce` where the server demands one;
- the `jti` is claimed last, by inserting it into a MongoDB collection with a unique `_id` and a TTL
  index (`ReplayCache`): every process and instance shares it, and a proof is remembered for as long as
  its `iat` lets it pass (IAT_WINDOW after the later of `iat` and now).

Server nonces (RFC 9449 8, 9) are stateless: an HMAC of the current time window (NONCE_WINDOW
seconds) under a secret kept in MongoDB (created once by whichever process asks first), so every
process accepts every other's nonces; the current and the previous window's nonce are accepted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from aiohttp import web
from authlib.oauth2.base import OAuth2Error
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from joserfc import jwk
from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry
from pymongo import IndexModel
from pymongo.errors import BulkWriteError

from service.db import Database
from service.errors import ApiError

ALGORITHMS = ("ES256", "RS256", "EdDSA")  # asymmetric only: never none, never HS* (RFC 9449 4.3 item 5)
ALGS_CHALLENGE = " ".join(ALGORITHMS)
MAX_PROOF = 4 * 1024  # bytes of a DPoP header, refused undecoded beyond (a 4096-bit RS256 proof: under 3 KB)
IAT_WINDOW = 60  # seconds a proof's iat may differ from now, either way
NONCE_WINDOW = 300  # seconds of one nonce window; the current and the previous one's nonces pass
MAX_JTI = 256  # characters
RSA_MIN_BITS = 2048
DUPLICATE_KEY = 11000  # MongoDB's error code

INDEXES: dict[str, list[IndexModel]] = {"dpop_proofs": [IndexModel("expires_at", expireAfterSeconds=0)]}

_KEY_RULES: dict[str, tuple[str, frozenset[str]]] = {  # alg: the key type and curves it takes
    "ES256": ("EC", frozenset({"P-256"})),
    "RS256": ("RSA", frozenset()),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class ProofError(OAuth2Error):  # type: ignore[misc]  # authlib is untyped
    """A refused proof, as the token endpoint answers it (RFC 9449 5: 400, RFC 6749 error JSON);
    `use_dpop_nonce` carries the nonce to use in a `DPoP-Nonce` header (RFC 9449 8)."""

    def __init__(self, description: str, *, error: str = "invalid_dpop_proof", nonce: str | None = None) -> None:
        super().__init__(description, status_code=400)
        self.error = error
        self.nonce = nonce

    def get_headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = list(super().get_headers())
        if self.nonce:
            headers.append(("DPoP-Nonce", self.nonce))
        return headers


class DPoPUnauthorized(ApiError):
    """A 401 from the API where DPoP applies (RFC 9449 7.1): a `DPoP` challenge naming the error and
    the algorithms accepted, and the nonce to use when the error is `use_dpop_nonce`."""

    status = 401

    def __init__(self, detail: str, *, error: str = "invalid_token", nonce: str | None = None) -> None:
        challenge = f'DPoP error="{error}", error_description="{detail}", algs="{ALGS_CHALLENGE}"'
        headers = {"WWW-Authenticate": challenge}
        if nonce:
            headers["DPoP-Nonce"] = nonce
        super().__init__(detail, headers=headers)

    @classmethod
    def of(cls, error: ProofError) -> DPoPUnauthorized:
        return cls(error.description, error=error.error, nonce=error.nonce)


@dataclass(frozen=True, slots=True)
class Proof:
    """A checked proof: the thumbprint of its key (what tokens are bound to), its jti and iat."""

    jkt: str
    jti: str
    iat: int


@dataclass(frozen=True, slots=True)
class _Header:
    alg: str
    key: Any  # a joserfc key (ECKey, RSAKey, OKPKey)
    jkt: str


def _b64decode(segment: str) -> bytes:
    """Strict base64url (RFC 7515 2): a character outside the alphabet is an error, not skipped."""
    return base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def access_token_hash(access_token: str) -> str:
    """`ath` (RFC 9449 4.2): base64url of the SHA-256 of the access token's ASCII."""
    return _b64encode(hashlib.sha256(access_token.encode("ascii", "replace")).digest())


@lru_cache(maxsize=4096)
def _header(segment: str) -> _Header:
    """The checked header of a proof, keyed by its encoded form (a client repeats it on every proof):
    the key is imported and thumbprinted once per distinct header. A refused header raises (and is not
    cached; the size bound keeps its cost small)."""
    try:
        header = orjson.loads(_b64decode(segment))  # (nesting deeper than 1024 is an error, not a recursion)
    except (binascii.Error, ValueError):
        raise ProofError("The proof's header is not base64url JSON.") from None
    if not isinstance(header, dict):
        raise ProofError("The proof's header is not a JSON object.")
    if header.get("typ") != "dpop+jwt":
        raise ProofError("The proof's typ must be dpop+jwt.")
    alg = header.get("alg")
    if alg not in _KEY_RULES:
        raise ProofError(f"The proof's alg must be one of {ALGS_CHALLENGE}.")
    member = header.get("jwk")
    if not isinstance(member, dict):
        raise ProofError("The proof's header must carry the public key as jwk.")
    if _PRIVATE_MEMBERS & member.keys():
        raise ProofError("The proof's jwk must be a public key: it carries private key material.")
    kty, curves = _KEY_RULES[alg]
    if member.get("kty") != kty or (curves and member.get("crv") not in curves):
        raise ProofError(f"The proof's jwk does not fit {alg}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joserfc warns of short RSA keys; they are refused below
            key = jwk.import_key(member)
        if isinstance(key.raw_value, RSAPublicKey) and key.raw_value.key_size < RSA_MIN_BITS:
            raise ProofError(f"The proof's RSA key must have at least {RSA_MIN_BITS} bits.")
        jkt = key.thumbprint()
    except (JoseError, ValueError, TypeError, KeyError):
        raise ProofError("The proof's jwk is not a valid key.") from None
    return _Header(alg, key, jkt)


def normalized_uri(uri: str) -> str:
    """The URI compared for `htu` (RFC 9449 4.3 item 9, RFC 3986 6.2.2 and 6.2.3): scheme and host in
    lower case, no default port, no query and no fragment, an empty path as `/`."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return ""
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", "", ""))


def check(
    header_values: list[str], method: str, uri: str, access_token: str | None = None
) -> tuple[Proof, dict[str, Any]]:
    """Check a request's DPoP header (RFC 9449 4.3) but its nonce and its jti, which need state (see
    `verify`): one header, a compact JWS within MAX_PROOF, a checked header, a valid signature, and
    claims that name this request (`htm`, `htu` without query and fragment), a fresh `iat`, a `jti`,
    and at the resource the `ath` of `access_token`. Returns the proof and its claims."""
    if len(header_values) != 1:
        raise ProofError("Send exactly one DPoP header.")
    value = header_values[0]
    if len(value) > MAX_PROOF:
        raise ProofError(f"The DPoP proof is longer than {MAX_PROOF} bytes.")
    segments = value.split(".")
    if len(segments) != 3:
        raise ProofError("The DPoP proof is not a compact JWS.")
    head = _header(segments[0])
    try:
        signature = _b64decode(segments[2])
        signed = JWSRegistry.algorithms[head.alg].verify(
            f"{segments[0]}.{segments[1]}".encode("ascii"), signature, head.key
        )
        claims = orjson.loads(_b64decode(segments[1])) if signed else None
    except (binascii.Error, ValueError, UnicodeEncodeError, JoseError):  # (orjson.JSONDecodeError: a ValueError)
        raise ProofError("The DPoP proof's signature or payload is malformed.") from None
    if not signed:
        raise ProofError("The DPoP proof's signature does not verify with its jwk.")
    if not isinstance(claims, dict):
        raise ProofError("The DPoP proof's payload is not a JSON object.")
    if claims.get("htm") != method:
        raise ProofError("The DPoP proof's htm is not this request's method.")
    htu = claims.get("htu")
    if not isinstance(htu, str) or (htu != uri and normalized_uri(htu) != normalized_uri(uri)):
        raise ProofError("The DPoP proof's htu is not this request's URI.")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or abs(time.time() - iat) > IAT_WINDOW:
        raise ProofError(f"The DPoP proof's iat is missing or more than {IAT_WINDOW} s away from now.")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI:
        raise ProofError(f"The DPoP proof's jti must be a string of 1 to {MAX_JTI} characters.")
    if access_token is not None and not (
        isinstance(claims.get("ath"), str) and hmac.compare_digest(claims["ath"], access_token_hash(access_token))
    ):
        raise ProofError("The DPoP proof's ath does not match the access token.")
    return Proof(head.jkt, jti, int(iat)), claims


# --- nonces and replays: state every process shares ------------------------------------------


class DPoPState:
    """This process's handle on the shared DPoP state: the nonce secret (read from MongoDB once) and
    the replay cache."""

    def __init__(self, db: Database, policy: str) -> None:
        self._db = db
        self.policy = policy
        self._secret: bytes | None = None
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []  # jtis to claim, see `_claim`
        self._writer: asyncio.Task[None] | None = None

    def demands_nonce(self, at_api: bool) -> bool:
        return self.policy == "all" or (self.policy == "token" and not at_api)

    async def _key(self) -> bytes:
        if self._secret is None:
            # Whichever process asks first creates it; every other one reads the same document.
            await self._db.dpop_keys.update_one(
                {"_id": "nonce"}, {"$setOnInsert": {"secret": secrets.token_urlsafe(32)}}, upsert=True
            )
            stored = await self._db.dpop_keys.find_one({"_id": "nonce"})
            self._secret = str(stored["secret"] if stored else "").encode("ascii")
        return self._secret

    def _nonce(self, key: bytes, window: int) -> str:
        return _b64encode(hmac.new(key, f"dpop-nonce:{window}".encode(), hashlib.sha256).digest()[:18])

    async def nonce(self) -> str:
        """The current nonce (RFC 9449 8): the same in every process for NONCE_WINDOW seconds."""
        return self._nonce(await self._key(), int(time.time()) // NONCE_WINDOW)

    async def nonce_fits(self, nonce: object) -> bool:
        if not isinstance(nonce, str):
            return False
        key, window = await self._key(), int(time.time()) // NONCE_WINDOW
        return any(hmac.compare_digest(nonce, self._nonce(key, w)) for w in (window, window - 1))

    async def check_nonce(self, claims: dict[str, Any], at_api: bool) -> None:
        """RFC 9449 8 and 9: where the server demands a nonce, a proof without the current (or the
        previous window's) one is `use_dpop_nonce`, which names the one to use."""
        if self.demands_nonce(at_api) and not await self.nonce_fits(claims.get("nonce")):
            raise ProofError(
                "Use the server's nonce (DPoP-Nonce) in the proof.", error="use_dpop_nonce", nonce=await self.nonce()
            )

    async def claim(self, proof: Proof) -> None:
        """Remember the proof's jti (with its key) until its iat no longer passes; a second use is refused
        (RFC 9449 11.1). The insert is the claim: of two uses at once, exactly one succeeds."""
        now = time.time()
        expires = datetime.fromtimestamp(max(now, proof.iat) + IAT_WINDOW + 1, UTC)
        digest = hashlib.sha256(f"{proof.jkt} {proof.jti}".encode()).hexdigest()
        if not await self._claim({"_id": digest, "expires_at": expires}):
            raise ProofError("This DPoP proof was already used (jti replayed).")

    async def _claim(self, document: dict[str, Any]) -> bool:
        """Insert `document`; False if its `_id` is there already. Group commit: the claims that arrive
        while an insert is on its way wait for it and then go together, in one unordered insert_many,
        so a busy process pays one round trip for many requests (a quiet one, one per request, at once)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((document, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._insert(batch)
        finally:
            self._writer = None

    async def _insert(self, batch: list[tuple[dict[str, Any], asyncio.Future[bool]]]) -> None:
        taken: set[int] = set()
        try:
            await self._db.dpop_proofs.insert_many([document for document, _ in batch], ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors) or not errors:
                _fail(batch, exc)
                return
            taken = {error["index"] for error in errors}
        except Exception as exc:  # noqa: BLE001 - the database away: each waiting request fails as its write would
            _fail(batch, exc)
            return
        for index, (_, future) in enumerate(batch):
            if not future.done():  # (a request that went away)
                future.set_result(index not in taken)


def _fail(batch: list[tuple[dict[str, Any], asyncio.Future[bool]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


DPOP: web.AppKey[DPoPState] = web.AppKey("service.auth.dpop", DPoPState)
# On a DPoP request to the API where nonces are demanded: the nonce its response carries (RFC 9449 9).
NEXT_NONCE: web.RequestKey[str] = web.RequestKey("service.auth.dpop.next_nonce", str)


async def verify(
    state: DPoPState,
    header_values: list[str],
    request: tuple[str, str],
    access_token: str | None = None,
    jkt: str | None = None,
) -> Proof:
    """Check a request's proof completely (`check`, the key the token is bound to, then the nonce, then
    the jti, which is claimed only once everything else passed). `request`: its method and URI; at the
    resource, `access_token` and the thumbprint `jkt` it is bound to (RFC 9449 7.1)."""
    method, uri = request
    proof, claims = check(header_values, method, uri, access_token)
    if jkt is not None and not hmac.compare_digest(proof.jkt, jkt):
        raise ProofError("The DPoP proof is not signed with the key the access token is bound to.")
    await state.check_nonce(claims, access_token is not None)
    await state.claim(proof)
    return proof
