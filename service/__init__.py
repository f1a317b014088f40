"""Async REST API server: users, teams and OAuth2 / OpenID Connect on aiohttp + MongoDB."""

# The one source of the version: pyproject.toml reads it (dynamic), the OpenAPI document shows it, and it
# needs no installed package metadata (the image and a plain checkout run from source).
__version__ = "2.0.0"
