"""Schemathesis auth hook: a real bearer token from the password grant, for the user named in the env."""

from __future__ import annotations

import os

import httpx
import schemathesis


@schemathesis.auth()
class PasswordGrant:
    """Signs in once (and again when schemathesis refreshes) with E2E_USERNAME / E2E_PASSWORD."""

    def get(self, case, ctx):
        response = httpx.post(
            f"{os.environ['E2E_BASE_URL']}/auth/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": "documentation",
                "username": os.environ["E2E_USERNAME"],
                "password": os.environ["E2E_PASSWORD"],
            },
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def set(self, case, data, ctx):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
