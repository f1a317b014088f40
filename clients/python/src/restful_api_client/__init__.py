"""A typed async client for the restful-api-server API: OAuth2 done right, paging, ETags, retries.

async with Client("https://api.example.com", auth=Password("user", "w")) as api:
    async for team in api.teams.list():
        ...
"""

from restful_api_client.auth import (
    AuthorizationCodePKCE,
    AuthStrategy,
    ClientCredentials,
    DeviceCode,
    MemoryTokenStore,
    Password,
    StaticToken,
    TokenSet,
    TokenStore,
)
from restful_api_client.client import Client
from restful_api_client.dpop import DPoPKey
from restful_api_client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    NotFound,
    OAuthError,
    PayloadTooLarge,
    PreconditionFailed,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    ValidationError,
)
from restful_api_client.resources import Document, etag_of
from restful_api_client.transport import RateLimit, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AuthStrategy",
    "AuthorizationCodePKCE",
    "BadRequest",
    "Client",
    "ClientCredentials",
    "ClientError",
    "Conflict",
    "DPoPKey",
    "DeviceCode",
    "Document",
    "Forbidden",
    "MemoryTokenStore",
    "NotFound",
    "OAuthError",
    "Password",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RateLimit",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "StaticToken",
    "TokenSet",
    "TokenStore",
    "TransportError",
    "Unauthorized",
    "ValidationError",
    "etag_of",
]
