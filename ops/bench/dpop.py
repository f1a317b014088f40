"""DPoP (RFC 9449) requests for the benchmarks: a DPoP-bound token and a wrk script that sends a fresh proof
with every request.

A proof is signed per request (its `jti` must not repeat), and wrk's Lua cannot sign ES256, so the proofs
are signed here beforehand, one file per wrk thread (each thread has its own Lua state), and each request
takes the next one. They must be used within the server's 60 s `iat` window: they are made right before
the run, as many as the bearer run's rate says the run will need, with a margin.

`make bench` (run.py) measures "GET /users/me, DPoP" next to "GET /users/me" with this. Alone,
`python ops/bench/dpop.py` starts the service (one worker, the embedded database), and measures the
bearer and the DPoP request side by side (alternating, twice each), printing the service's CPU time per
request of both.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from joserfc import jwk, jws

WRK_THREADS = 2  # as run.py's wrk() runs it


class Key:
    """A client's ES256 key and the proofs it signs."""

    def __init__(self) -> None:
        self.key = jwk.ECKey.generate_key("P-256")
        self.header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.key.as_dict(private=False)}

    def proof(self, method: str, url: str, access_token: str | None = None, nonce: str | None = None) -> str:
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(12), "htm": method, "htu": url, "iat": int(time.time())}
        if access_token is not None:
            digest = hashlib.sha256(access_token.encode()).digest()
            claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if nonce is not None:
            claims["nonce"] = nonce
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return jws.serialize_compact(self.header, json.dumps(claims), self.key, algorithms=["ES256"])


def _post_token(url: str, form: dict[str, str], proof: str) -> tuple[int, dict[str, Any], str | None]:
    body = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"DPoP": proof})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers.get("DPoP-Nonce")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers.get("DPoP-Nonce")


def bound_token(base: str, sign_in: dict[str, str]) -> tuple[str, Key]:
    """A DPoP-bound access token (password grant), answering the token endpoint's nonce demand once."""
    key, url = Key(), f"{base}/auth/oauth2/token"
    status, body, nonce = _post_token(url, sign_in, key.proof("POST", url))
    if status == 400 and body.get("error") == "use_dpop_nonce":
        status, body, nonce = _post_token(url, sign_in, key.proof("POST", url, nonce=nonce))
    if status != 200 or body.get("token_type") != "DPoP":
        raise RuntimeError(f"no DPoP token: {status} {body}")
    return str(body["access_token"]), key


LUA = """
local auth = "DPoP %(token)s"
local folder = "%(folder)s"
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  proofs = {}
  for line in io.lines(folder .. "/proofs-" .. id .. ".txt") do proofs[#proofs + 1] = line end
  used = 0
end
function request()
  used = used + 1
  return wrk.format("GET", nil, { ["Authorization"] = auth, ["DPoP"] = proofs[math.min(used, #proofs)] })
end
"""


def proof_script(work: Path, base: str, sign_in: dict[str, str], count: int) -> str:
    """A wrk script for GET /api/v1/users/me with a DPoP-bound token and `count` fresh proofs in all
    (a request past them reuses the last one and is refused: it shows as an error)."""
    token, key = bound_token(base, sign_in)
    url = f"{base}/api/v1/users/me"
    folder = work / "dpop"
    folder.mkdir(exist_ok=True)
    per_thread = count // WRK_THREADS + 1
    for thread in range(WRK_THREADS):
        proofs = (key.proof("GET", url, token) for _ in range(per_thread))
        (folder / f"proofs-{thread}.txt").write_text("\n".join(proofs) + "\n")
    script = folder / "me-dpop.lua"
    script.write_text(LUA % {"token": token, "folder": folder})
    return str(script)


def proofs_needed(bearer_rps: float, seconds: int) -> int:
    """Enough proofs for a run as fast as the bearer one, and half again."""
    return int(bearer_rps * seconds * 1.5) + 2000


def main() -> int:
    import argparse
    import tempfile

    from run import (  # the harness next to this file
        PYTHON,
        ROOT_SIGN_IN,
        Server,
        free_port,
        measure,
        root_token,
        service_env,
    )

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="duration of each run (proofs last 60 s)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dpop-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    service = Server([PYTHON, "-m", "service", "serve", "--workers", "1"], service_env(work, port), f"{base}/readyz")
    rows = []
    try:
        bearer = (work / "me.lua").resolve()
        bearer.write_text(f'wrk.headers["Authorization"] = "Bearer {root_token(base)}"\n')
        url, pid = f"{base}/api/v1/users/me", service.process.pid
        measure("warm-up", 1, pid, url, 2, 32, str(bearer))
        for _ in range(2):
            rows.append(measure("GET /users/me, bearer", 1, pid, url, args.seconds, 32, str(bearer)))
            script = proof_script(work, base, ROOT_SIGN_IN, proofs_needed(rows[-1].rps, args.seconds))
            rows.append(measure("GET /users/me, DPoP", 1, pid, url, args.seconds, 32, script))
    finally:
        service.stop()
    print(f"{'scenario':24} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'err':>5} {'cpu us/req':>10}")
    for row in rows:
        print(
            f"{row.scenario:24} {row.rps:>8.0f} {row.p50_ms:>8.2f} {row.p99_ms:>8.2f} {row.errors:>5} "
            f"{row.service_cpu_us:>10.0f}"
        )
    bearer_cpu = sum(r.service_cpu_us for r in rows if "bearer" in r.scenario) / 2
    dpop_cpu = sum(r.service_cpu_us for r in rows if "DPoP" in r.scenario) / 2
    print(f"cpu us/request: bearer {bearer_cpu:.0f}, DPoP {dpop_cpu:.0f}, DPoP/bearer {dpop_cpu / bearer_cpu:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
