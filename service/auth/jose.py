"""authlib's JOSE (JWK, JWT), imported once without its deprecation notice.

authlib 1.x announces `joserfc` as the successor of `authlib.jose` on import; the API is stable until
authlib 2.0, and a command-line user should not see the notice on every command.
"""

from __future__ import annotations

import warnings

import authlib.deprecate  # noqa: F401 - importing it installs an "always" filter; ours must come after it

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="authlib.jose module is deprecated")
    from authlib.jose import JsonWebKey, JsonWebToken, RSAKey, jwt
    from authlib.jose.errors import JoseError

__all__ = ["JoseError", "JsonWebKey", "JsonWebToken", "RSAKey", "jwt"]
