"""Every typed key for application and request state, in one place."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.config import Settings
from service.db import Mongo

settings = web.AppKey("service.settings", Settings)
mongo = web.AppKey("service.mongo", Mongo)
openapi = web.AppKey("service.openapi", bytes)

request_id = web.RequestKey("service.request_id", str)
body = web.RequestKey("service.body", Any)
query = web.RequestKey("service.query", dict)
path = web.RequestKey("service.path", dict)
