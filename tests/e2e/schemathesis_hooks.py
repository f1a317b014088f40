"""Schemathesis hooks for `make e2e`: a real bearer token, and positive cases that obey what the document
can only say in words.

The served document states every rule OpenAPI 3.0 can state. A few it cannot, and a fuzzer's "valid" case
breaks them without being invalid data in any sense the schema can express:

- a cursor (`after`) is signed by the server: only one that a list issued is valid, and the fuzzer cannot
  make one, so a positive case carries a cursor the list itself issued (or none);
- `after` replaces `offset` (both is 422);
- at most one `/current_password` test per user PATCH (JSON Schema 2019's `maxContains`; 3.0 cannot count);
- an OAuth2 client's `default_scopes` are a subset of its `allowed_scopes` (a relation between two lists);
- adding a member names an existing user: a positive case adds the other fixture user.

Only positive cases are adjusted, and only in those fields; negative cases go out as generated. Two guards
keep the run from locking itself out (which would turn every later request into a documented but useless
401): the run never deletes the OAuth2 client its token came from, and never deactivates or demotes the
signed-in user; nor does it ever confirm a second factor (its password grant would then be refused).

Schemathesis' coverage phase cannot build a header value with a quote (it keeps to letters and digits), so
for `If-Match` it seeds its "default positive" case with a negative value and still counts it positive; a
positive case is therefore sent without an `If-Match` that does not match the documented pattern.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import schemathesis
from schemathesis import GenerationMode

BASE = os.environ["E2E_BASE_URL"]
CLIENT_ID = "documentation"
SCOPE = "auth:read auth:write users:read users:write teams:read teams:write openid profile email"
_NEXT = re.compile(r'<([^>]*)>;\s*rel="next"')
_state: dict[str, Any] = {}


def _uses_bearer(ctx: Any) -> bool:
    """Operations secured by the API's bearer token (not the OAuth2 endpoints' client authentication)."""
    security = ctx.operation.definition.raw.get("security", [])
    return any("oauth2" in requirement or "openIdConnect" in requirement for requirement in security)


# Signed in once for the whole run (a token lives an hour): a fresh sign-in on a 401 would also count
# against the user's failed-password budget, which the fuzzer's wrong `current_password` tests spend.
@schemathesis.auth(refresh_interval=3000, retry_on=[]).apply_to(_uses_bearer)
class PasswordGrant:
    """Signs in with E2E_USERNAME / E2E_PASSWORD (every scope the client allows, openid included)."""

    def get(self, case, ctx):
        response = httpx.post(
            f"{BASE}/auth/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": CLIENT_ID,
                "username": os.environ["E2E_USERNAME"],
                "password": os.environ["E2E_PASSWORD"],
                "scope": SCOPE,
            },
            timeout=10,
        )
        response.raise_for_status()
        token = response.json()["access_token"]
        me = httpx.get(f"{BASE}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        me.raise_for_status()
        _state["me"] = me.json()
        return token

    def set(self, case, data, ctx):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _is_positive(case: Any) -> bool:
    return case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    operation_id = case.operation.definition.raw.get("operationId")
    _guard_the_session(operation_id, case)
    if not _is_positive(case):
        return
    _drop_unsendable_if_match(case)
    _fresh_idempotency_key(case)
    if case.query and "after" in case.query:
        _issued_cursor(case)
    if operation_id == "patchUser" and isinstance(case.body, list):
        _one_password_test(case)
    elif operation_id == "createOAuth2Client" and isinstance(case.body, dict):
        _default_scopes_allowed(case)
    elif operation_id == "addTeamMember" and isinstance(case.body, dict) and os.environ.get("E2E_MEMBER_ID"):
        case.body = {**case.body, "user_id": os.environ["E2E_MEMBER_ID"]}


def _guard_the_session(operation_id: str | None, case: Any) -> None:
    if (
        operation_id in ("deleteOAuth2Client", "patchOAuth2Client")
        and (case.path_parameters or {}).get("client_id") == CLIENT_ID
    ):  # the run signs in through this client: changing its grants or URIs would end the run
        case.path_parameters = {**case.path_parameters, "client_id": secrets.token_urlsafe(24)}  # a 404 instead
    code = case.body.get("code") if isinstance(case.body, dict) else None
    if operation_id == "confirmTotp" and isinstance(code, str) and 6 <= len(code) <= 64:
        # A lucky 6-digit code would switch the run's account to a second factor, and its password grant
        # would then be refused: a code that is never one keeps the 403 (or 409) path fuzzed.
        case.body = {**case.body, "code": "not-a-code"}
    me = _state.get("me")
    own = me is not None and (case.path_parameters or {}).get("user_id") == me["id"]
    if operation_id == "patchUser" and own and isinstance(case.body, list):
        case.body = [_keep_own_access(operation) for operation in case.body]


def _keep_own_access(operation: Any) -> Any:
    """Setting /is_active or /is_admin of the signed-in user to false would lock the run out: set true."""
    if (
        isinstance(operation, dict)
        and operation.get("op") in ("add", "replace")
        and operation.get("path") in ("/is_active", "/is_admin")
        and operation.get("value") is False
    ):
        return {**operation, "value": True}
    return operation


def _drop_unsendable_if_match(case: Any) -> None:
    parameter = next((p for p in case.operation.headers if p.name == "If-Match"), None)
    value = (case.headers or {}).get("If-Match")
    if parameter is None or value is None:
        return
    pattern = parameter.definition.get("schema", {}).get("pattern")
    if pattern and not re.search(pattern, str(value)):
        case.headers = {name: item for name, item in case.headers.items() if name != "If-Match"}


def _fresh_idempotency_key(case: Any) -> None:
    """An Idempotency-Key names one request: the fuzzer reuses its generated values with other bodies,
    which is 422 by design (tests/test_idempotency.py). Each positive case gets a key of its own, the
    generated value as its prefix."""
    value = (case.headers or {}).get("Idempotency-Key")
    if isinstance(value, str) and value:
        case.headers = {**case.headers, "Idempotency-Key": f"{value[:222]}{secrets.token_hex(16)}"}


def _issued_cursor(case: Any) -> None:
    """Replace a generated cursor by the one this very list issues for its second page (or drop it)."""
    query = {name: value for name, value in case.query.items() if name not in ("after", "offset", "limit")}
    headers = {name: value for name, value in (case.headers or {}).items() if name == "Authorization"}
    response = httpx.get(
        f"{case.operation.base_url.rstrip('/')}{case.formatted_path}",
        params={**query, "limit": 1},
        headers=headers,
        timeout=10,
    )
    link = _NEXT.search(response.headers.get("Link", ""))
    cursor = parse_qs(urlsplit(link.group(1)).query).get("after", [None])[0] if link else None
    case.query = {name: value for name, value in case.query.items() if name not in ("after", "offset")}
    if cursor is not None:
        case.query["after"] = cursor


def _one_password_test(case: Any) -> None:
    seen = False
    operations = []
    for operation in case.body:
        if isinstance(operation, dict) and operation.get("path") == "/current_password":
            if seen:
                continue
            seen = True
        operations.append(operation)
    case.body = operations


def _default_scopes_allowed(case: Any) -> None:
    allowed = case.body.get("allowed_scopes")
    defaults = case.body.get("default_scopes")
    if isinstance(allowed, list) and isinstance(defaults, list):
        case.body = {**case.body, "default_scopes": [scope for scope in defaults if scope in allowed]}


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    """One check narrowed, for one reason: after a sign-up (POST /users/), a regular user who reads the new
    account gets 404 by design (users see only themselves; a 404, not a 403, so ids do not leak). The
    createUser link to getUser holds for admins; `ensure_resource_availability` cannot know the difference."""
    me = _state.get("me") or {}
    return not (
        getattr(failure, "code", None) == "ST302"
        and getattr(failure, "created_with", None) == "POST /users/"
        and me.get("is_admin") is False
        and response.status_code == 404
    )
