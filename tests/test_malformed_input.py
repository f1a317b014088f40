"""Malformed and hostile bodies and headers: each gets a clear 4xx (never a 500) and changes nothing.

Every variant here answered 500 before the guarded readers (service/bodies.py) existed."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip

import pytest
from aiohttp.test_utils import TestClient

from service.config import Settings
from tests.helpers import form_of, open_page, pkce, query

FORM = "application/x-www-form-urlencoded"
OAUTH_ENDPOINTS = ("/auth/oauth2/token", "/auth/oauth2/revoke", "/auth/oauth2/introspect")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, body_read_timeout=0.5)


def multipart(*parts: bytes, boundary: str = "b0undary") -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + b"--" + boundary.encode() + b"--\r\n"


GRANT = b'Content-Disposition: form-data; name="grant_type"\r\n\r\nclient_credentials'
MALFORMED_FORMS: dict[str, tuple[str, bytes]] = {
    "multipart without a boundary": ("multipart/form-data", multipart(GRANT)),
    "multipart with an empty boundary": ("multipart/form-data; boundary=", multipart(GRANT)),
    "multipart with a part without a name": (
        "multipart/form-data; boundary=b0undary",
        multipart(b"Content-Disposition: form-data\r\n\r\nvalue"),
    ),
    "nested multipart": (
        "multipart/form-data; boundary=b0undary",
        multipart(
            b'Content-Disposition: form-data; name="grant_type"\r\nContent-Type: multipart/mixed; boundary=inner\r\n\r\n'
            + multipart(b"Content-Type: text/plain\r\n\r\nx", boundary="inner")
        ),
    ),
    "multipart part with charset=bogus": (
        "multipart/form-data; boundary=b0undary",
        multipart(
            b'Content-Disposition: form-data; name="grant_type"\r\nContent-Type: text/plain; charset=bogus\r\n\r\nx'
        ),
    ),
    "multipart with charset=bogus": ("multipart/form-data; boundary=b0undary; charset=bogus", multipart(GRANT)),
    "invalid UTF-8 in a part": (
        "multipart/form-data; boundary=b0undary",
        multipart(b'Content-Disposition: form-data; name="grant_type"\r\n\r\n\xff\xfe'),
    ),
    "urlencoded with a raw 0xff": (FORM, b"grant_type=\xff"),
    "urlencoded with a percent-encoded 0xff": (FORM, b"grant_type=%ff"),
    "urlencoded with charset=bogus": (f"{FORM}; charset=bogus", b"grant_type=password"),
    "urlencoded with charset=utf-16": (f"{FORM}; charset=utf-16", "grant_type=password".encode("utf-16")),
}


@pytest.mark.parametrize("path", OAUTH_ENDPOINTS)
@pytest.mark.parametrize("variant", list(MALFORMED_FORMS))
async def test_a_malformed_form_is_invalid_request(client: TestClient, seeded, path: str, variant: str) -> None:
    content_type, body = MALFORMED_FORMS[variant]
    response = await client.post(path, data=body, headers={"Content-Type": content_type})
    assert response.status == 400, await response.text()
    assert (await response.json())["error"] == "invalid_request"


@pytest.mark.parametrize("variant", list(MALFORMED_FORMS))
async def test_a_malformed_sign_in_form_gets_the_error_page(client: TestClient, seeded, variant: str) -> None:
    content_type, body = MALFORMED_FORMS[variant]
    response = await client.post("/auth/oauth2/authorize", data=body, headers={"Content-Type": content_type})
    assert response.status == 400, await response.text()
    assert response.content_type == "text/html"


@pytest.mark.parametrize(("encoding", "status"), [("gzip", 400), ("deflate", 400), ("br", 415), ("bogus", 415)])
async def test_a_body_that_is_not_what_its_content_encoding_says_is_refused(
    client: TestClient, seeded, bearer, encoding: str, status: int
) -> None:
    """Malformed for gzip and deflate (400), a coding we do not decode (415); invalid_request either way at
    the token endpoint, problem details on the API, and no account is created."""
    token = await client.post(
        "/auth/oauth2/token",
        data=b"grant_type=password&client_id=documentation&username=user&password=w",
        headers={"Content-Type": FORM, "Content-Encoding": encoding},
    )
    assert token.status == (400 if status == 415 else status), await token.text()
    assert (await token.json())["error"] == "invalid_request"
    signup = await client.post(
        "/api/v1/users/",
        data=b'{"username": "eve", "email": "eve@example.com", "password": "long enough"}',
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert signup.status == status, await signup.text()
    assert signup.content_type == "application/problem+json"
    assert (await client.get("/api/v1/users/", headers=await bearer("root"))).headers["X-Total-Count"] == "2"


async def test_a_gzip_body_that_is_really_gzip_still_works(client: TestClient, seeded) -> None:
    response = await client.post(
        "/auth/oauth2/token",
        data=gzip.compress(b"grant_type=password&client_id=documentation&username=user&password=w"),
        headers={"Content-Type": FORM, "Content-Encoding": "gzip"},
    )
    assert response.status == 200, await response.text()


async def test_a_non_ascii_csrf_token_or_cookie_is_refused(client: TestClient, seeded) -> None:
    _, challenge = pkce()
    _, html = await open_page(client, query(challenge))
    form = {**form_of(html), "username": "user", "password": "w", "action": "approve"}
    real = form["csrf_token"]
    client.session.cookie_jar.clear()  # the cookie goes in the header below, as a hostile client sends it
    for cookie, sent in (("ä" * 43, real), (real, "ä" * 43)):
        response = await client.post(
            "/auth/oauth2/authorize",
            data={**form, "csrf_token": sent},
            headers={"Cookie": f"oauth_csrf={cookie}"},
            allow_redirects=False,
        )
        assert response.status == 403, await response.text()
        assert response.content_type == "text/html"


async def test_a_non_ascii_code_verifier_is_invalid_grant(client: TestClient, seeded) -> None:
    from tests.helpers import exchange, get_code

    verifier, challenge = pkce()
    code = await get_code(client, challenge)
    response = await exchange(client, code, "é" * 43)
    assert response.status == 400, await response.text()
    assert (await response.json())["error"] in ("invalid_grant", "invalid_request")
    assert (await exchange(client, code, verifier)).status == 200  # the rightful client's code is not burnt


@pytest.mark.parametrize("tag", ['"²"', '"' + "9" * 4300 + '"', '"\u0661"'])
async def test_an_if_match_no_version_can_have_fails_the_precondition(
    client: TestClient, seeded, bearer, tag: str
) -> None:
    headers = await bearer("root")
    team = await (await client.post("/api/v1/teams/", json={"title": "Kept"}, headers=headers)).json()
    response = await client.patch(
        f"/api/v1/teams/{team['id']}",
        json=[{"op": "replace", "path": "/title", "value": "Changed"}],
        headers={**headers, "If-Match": tag},
    )
    assert response.status in (400, 412), await response.text()
    assert (await (await client.get(f"/api/v1/teams/{team['id']}", headers=headers)).json())["title"] == "Kept"


async def test_unknown_parameters_are_ignored_even_repeated_but_a_defined_one_may_not_repeat(
    client: TestClient, seeded
) -> None:
    grant = "grant_type=password&client_id=documentation&username=user&password=w"
    ignored = await client.post("/auth/oauth2/token", data=f"{grant}&extra=1&extra=2", headers={"Content-Type": FORM})
    assert ignored.status == 200, await ignored.text()
    for repeated in (f"{grant}&username=root", f"{grant}&scope=users:read&scope=teams:read"):
        response = await client.post("/auth/oauth2/token", data=repeated, headers={"Content-Type": FORM})
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("extra", "error"),
    [("&state=again", "invalid_request"), ("&response_mode=fragment", "invalid_request"), ("&junk=1&junk=2", None)],
)
async def test_the_authorization_endpoint_refuses_repeats_and_other_response_modes(
    client: TestClient, seeded, extra: str, error: str | None
) -> None:
    from urllib.parse import urlencode

    from tests.helpers import redirect_params

    _, challenge = pkce()
    response = await client.get(f"/auth/oauth2/authorize?{urlencode(query(challenge))}{extra}", allow_redirects=False)
    if error is None:
        assert response.status == 200  # the sign-in page
    else:
        assert response.status == 302
        assert redirect_params(response)["error"] == error


async def test_a_repeated_client_id_or_redirect_uri_gets_the_error_page_not_a_redirect(
    client: TestClient, seeded
) -> None:
    from urllib.parse import urlencode

    _, challenge = pkce()
    for extra in ("&client_id=documentation", "&redirect_uri=https://evil.example/cb"):
        response = await client.get(
            f"/auth/oauth2/authorize?{urlencode(query(challenge))}{extra}", allow_redirects=False
        )
        assert response.status == 400
        assert response.content_type == "text/html"


async def test_a_request_aiohttp_cannot_parse_gets_problem_details_with_the_security_headers(
    client: TestClient,
) -> None:
    import asyncio

    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Evil: <script>\x01</script>\r\n\r\n")
    await writer.drain()
    answer = (await reader.read()).decode("latin-1")
    writer.close()
    head, _, body = answer.partition("\r\n\r\n")
    assert head.split(" ", 2)[1] == "400"
    assert "content-type: application/problem+json" in head.lower()
    assert "x-content-type-options: nosniff" in head.lower()
    assert "script" not in body


@pytest.mark.parametrize(
    ("path", "content_type", "status"),
    [("/api/v1/users/", "application/json", 408), ("/auth/oauth2/token", FORM, 400)],
)
async def test_a_body_fed_a_byte_at_a_time_is_cut_off(
    client: TestClient, seeded, path: str, content_type: str, status: int
) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    await writer.drain()
    started = asyncio.get_running_loop().time()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    writer.close()
    assert head.split(b" ", 2)[1] == str(status).encode()
    assert asyncio.get_running_loop().time() - started < 3


async def test_a_part_with_an_empty_name_is_an_unknown_parameter_and_ignored(client: TestClient, seeded) -> None:
    body = multipart(
        b'Content-Disposition: form-data; name=""\r\n\r\nv',
        b'Content-Disposition: form-data; name="token"\r\n\r\nabc',
        b'Content-Disposition: form-data; name="client_id"\r\n\r\ndocumentation',
    )
    response = await client.post(
        "/auth/oauth2/revoke", data=body, headers={"Content-Type": "multipart/form-data; boundary=b0undary"}
    )
    assert response.status == 200, await response.text()


async def test_a_multipart_form_with_no_fields_is_an_empty_form(client: TestClient, seeded) -> None:
    response = await client.post(
        "/auth/oauth2/token",
        data=b"--b0undary--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert response.status == 400
    assert (await response.json())["error_description"] == "Missing parameter: grant_type."
