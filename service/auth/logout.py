"""RP-Initiated Logout 1.0: checking a logout request, and when the user must confirm it.

Where the browser goes afterwards is decided here, before anything happens: only a
`post_logout_redirect_uri` registered (exactly) for the client the request names, by `client_id` or by
its ID token's audience, is ever redirected to. Only a valid `id_token_hint` for the signed-in user
signs them out at once; anything else (a cross-site link, a hint for someone else) asks first, so a
third party cannot sign a user out with a GET.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.auth import oidc, repository
from service.auth.authorize import HINT_MAX, SignedIn
from service.auth.repository import ClientDocument
from service.auth.signing import KEYRING
from service.context import Context

STATE_MAX = 1024
HINT_NAME_MAX = 256  # logout_hint (accepted, not used)


class LogoutPageError(Exception):
    """The request cannot be honoured as sent: show an error page, never redirect."""


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    client: ClientDocument | None
    redirect_uri: str | None
    state: str | None
    id_token_hint: str | None
    hinted_subject: str | None  # `sub` of the verified hint

    def as_form(self) -> dict[str, str]:
        """The request as hidden fields of the confirmation form (checked again when it comes back)."""
        fields = {
            "id_token_hint": self.id_token_hint,
            "client_id": self.client["_id"] if self.client else None,
            "post_logout_redirect_uri": self.redirect_uri,
            "state": self.state,
        }
        return {name: value for name, value in fields.items() if value is not None}


async def check_logout_request(
    ctx: Context, params: Mapping[str, str], repeated: frozenset[str] = frozenset()
) -> LogoutRequest:
    if repeated:
        raise LogoutPageError(f"'{sorted(repeated)[0]}' is repeated.")
    hint, claims = params.get("id_token_hint") or None, None
    if hint is not None:
        claims = await oidc.verified_id_token(ctx[KEYRING], ctx.issuer, hint) if len(hint) <= HINT_MAX else None
        if claims is None:
            raise LogoutPageError("The id_token_hint is not an ID token this server issued.")
    client_id = params.get("client_id") or None
    audiences = _audiences(claims)
    if client_id is not None and claims is not None and client_id not in audiences:
        raise LogoutPageError("client_id is not the audience of the id_token_hint.")
    if client_id is None and len(audiences) == 1:
        client_id = audiences[0]
    client = await repository.get_client(ctx.db, client_id) if client_id else None
    if client_id is not None and client is None and params.get("client_id"):
        raise LogoutPageError("Unknown client.")
    redirect_uri = params.get("post_logout_redirect_uri") or None
    if redirect_uri is not None and (client is None or redirect_uri not in client.get("post_logout_redirect_uris", [])):
        raise LogoutPageError("post_logout_redirect_uri is not registered for this client.")
    state = params.get("state")
    if state is not None and len(state) > STATE_MAX:
        raise LogoutPageError("state is too long.")
    if len(params.get("logout_hint", "")) > HINT_NAME_MAX:
        raise LogoutPageError("logout_hint is too long.")
    return LogoutRequest(client, redirect_uri, state, hint, claims["sub"] if claims else None)


def _audiences(claims: Mapping[str, Any] | None) -> list[str]:
    audience = (claims or {}).get("aud")
    if isinstance(audience, str):
        return [audience]
    return [value for value in audience if isinstance(value, str)] if isinstance(audience, list) else []


def needs_confirmation(request: LogoutRequest, signed: SignedIn | None) -> bool:
    """Whether the user must confirm: yes unless a valid hint names the signed-in user (or nobody is)."""
    if signed is None:
        return False  # nothing to end
    return request.hinted_subject != str(signed[1]["_id"])
