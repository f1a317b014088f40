"""Async REST API server: users, teams and OAuth2 on aiohttp + MongoDB."""

__version__ = "1.0.0"
