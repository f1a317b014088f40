"""`make bench-scale`: costs at scale, and database operations per request.

Starts the service on a fresh embedded database, loads 10,000 users, 1,000 teams and one team of 5,000
members straight into it, then times each endpoint (median and p90 of sequential requests, so the
figure is the request's own cost, not queueing) next to the same endpoint on small data, and counts the
database operations each request costs from the server's `serverStatus` opcounters (change-stream
getMores excluded). Prints a table and writes var/bench/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import MongoClient

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from run import PYTHON, ROOT, Server, database_client, db_operations, free_port, http  # noqa: E402 - the harness next to this file

from service.teams.repository import member_line, membership_key  # noqa: E402
from service.users.repository import new_user_document  # noqa: E402


def request(method: str, url: str, token: str | None, body: Any = None) -> int:
    """One call: a JSON body with the bearer token, or (bytes) a form, as the token endpoint takes."""
    if isinstance(body, bytes):
        data, headers = body, {"Content-Type": "application/x-www-form-urlencoded"}
    else:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


class Meter:
    """What a scenario costs the database: operations from the server's opcounters (change-stream
    getMores excluded; the background rate taken out), and bearer-token lookups that missed the
    principal cache (the service's own /metrics counter), which explain any operation beyond the
    request's own queries."""

    def __init__(self, db_client: MongoClient, metrics_url: str) -> None:
        self.db_client, self.metrics_url = db_client, metrics_url
        self.background = 0.0  # operations per second while no request runs

    def ops(self) -> int:
        return db_operations(self.db_client)

    def misses(self) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        found = re.search(r"^principal_cache_misses_total (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def calibrate(self, seconds: float = 30.0) -> None:
        """The drivers' heartbeats (`hello` from each client's monitors, every 10 s: the service's and
        this script's) are commands in the opcounters; a scenario of slow requests would otherwise be
        charged for them by the second."""
        before, started = self.ops(), time.monotonic()
        time.sleep(seconds)
        self.background = (self.ops() - before - 1) / (time.monotonic() - started)

    def timed(self, label: str, calls: list[tuple[str, str, Any]], token: str | None) -> dict[str, Any]:
        """Run each call once, in order: latency percentiles, operations and cache misses per request."""
        samples = []
        misses, before, began = self.misses(), self.ops(), time.monotonic()
        for method, url, body in calls:
            started = time.perf_counter()
            status = request(method, url, token, body)
            samples.append((time.perf_counter() - started) * 1000)
            if status >= 400:
                raise RuntimeError(f"{label}: {method} {url} answered {status}")
        spent = self.ops() - before - 1 - self.background * (time.monotonic() - began)  # -1: serverStatus
        samples.sort()
        return {
            "scenario": label,
            "requests": len(calls),
            "p50_ms": round(statistics.median(samples), 2),
            "p90_ms": round(samples[int(len(samples) * 0.9) - 1], 2),
            "db_ops_per_request": round(spent / len(calls), 2),
            "cache_misses_per_request": round((self.misses() - misses) / len(calls), 2),
        }


def load(db: Any, owner: ObjectId, users: int, teams: int, big_team: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    stamp = lambda i: now - timedelta(seconds=users - i)  # noqa: E731 - distinct, ordered creation times
    docs = [
        {
            **new_user_document(
                username=f"scale{i}",
                email=f"scale{i}@example.com",
                password_hash="!",  # noqa: S106 - not a password: nobody signs in as them
                names={},
                roles={},
            ),
            "created": stamp(i),
            "updated": stamp(i),
        }
        for i in range(users)
    ]
    db.users.insert_many(docs)
    team_docs = [
        {
            "_id": ObjectId(),
            "title": f"Team {i}",
            "leader_ids": [owner],
            "members": 1,
            "created": stamp(i),
            "updated": now,
            "version": 1,
        }
        for i in range(teams)
    ]
    memberships = [
        {"team_id": t["_id"], "user_id": owner, "created": now, "team_created": t["created"]} for t in team_docs
    ]
    big, small = team_docs[0], team_docs[1]
    memberships += [
        {"team_id": big["_id"], "user_id": u["_id"], "created": now, "team_created": big["created"]}
        for u in docs[:big_team]
    ]
    memberships += [
        {"team_id": small["_id"], "user_id": u["_id"], "created": now, "team_created": small["created"]}
        for u in docs[big_team : big_team + 19]
    ]
    big["members"], small["members"] = 1 + big_team, 1 + 19
    for membership in memberships:
        membership["_id"] = ObjectId()
        membership["key"] = membership_key(membership["team_id"], membership["user_id"])
        membership["place"] = member_line(membership["team_id"]).at(membership["created"], membership["_id"])
    db.teams.insert_many(team_docs)
    db.memberships.insert_many(memberships)
    return {"users": docs, "big": big, "small": small}


def membership_changes(base: str, team: dict[str, Any], users: list[dict[str, Any]], label: str) -> list[list[Any]]:
    url = f"{base}/api/v1/teams/{team['_id']}/members/"
    add = [("POST", url, {"user_id": str(u["_id"]), "is_leader": False}) for u in users]
    promote = [("PATCH", f"{url}{u['_id']}", [{"op": "replace", "path": "/is_leader", "value": True}]) for u in users]
    demote = [("PATCH", f"{url}{u['_id']}", [{"op": "replace", "path": "/is_leader", "value": False}]) for u in users]
    remove = [("DELETE", f"{url}{u['_id']}", None) for u in users]
    return [
        [f"add member ({label})", add],
        [f"promote ({label})", promote],
        [f"demote ({label})", demote],
        [f"remove member ({label})", remove],
    ]


def run(samples: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    metrics_port = free_port()
    env = {
        **os.environ,
        **{"SERVICE_DATA_DIR": str(work / "db"), "PORT": str(port), "LOG_LEVEL": "WARNING"},
        "METRICS_PORT": str(metrics_port),
    }
    env.pop("MONGODB_URL", None)
    service = Server([PYTHON, "-m", "service", "serve"], env, f"{base}/readyz")
    results: list[dict[str, Any]] = []
    try:
        db_client = database_client(service.process.pid)
        assert db_client is not None, "the service runs on the embedded database"
        db = db_client["service"]
        sign_in = {"grant_type": "password", "client_id": "documentation", "username": "root", "password": "q"}
        token = http("POST", f"{base}/auth/oauth2/token", data=sign_in)["access_token"]
        owner = db.users.find_one({"username": "root"})["_id"]
        meter = Meter(db_client, f"http://127.0.0.1:{metrics_port}/metrics")
        meter.calibrate()

        def lists(label: str) -> None:
            first = f"{base}/api/v1/users/?limit=20"
            with urllib.request.urlopen(
                urllib.request.Request(first, headers={"Authorization": f"Bearer {token}"})
            ) as r:
                link = r.headers.get("Link", "")
            after = link[1 : link.index(">")] if link else "/api/v1/users/?limit=20"
            me = [("GET", f"{base}/api/v1/users/me", None)] * samples
            results.append(meter.timed(f"GET /users/me ({label})", me, token))
            results.append(
                meter.timed(f"GET /users/ first page + count ({label})", [("GET", first, None)] * samples, token)
            )
            results.append(
                meter.timed(f"GET /users/ by cursor ({label})", [("GET", f"{base}{after}", None)] * samples, token)
            )
            teams = [("GET", f"{base}/api/v1/teams/?limit=20", None)] * samples
            results.append(meter.timed(f"GET /teams/ first page + count ({label})", teams, token))

        lists("small data")
        data = load(db, owner, 10_000, 1_000, 5_000)
        lists("10k users, 1k teams")
        spare = data["users"][5_100 : 5_100 + samples]
        for team, label in ((data["small"], "team of 20"), (data["big"], "team of 5,000")):
            members = f"{base}/api/v1/teams/{team['_id']}/members/?limit=20"
            results.append(meter.timed(f"GET members page ({label})", [("GET", members, None)] * samples, token))
            for name, calls in membership_changes(base, team, spare, label):
                results.append(meter.timed(name, calls, token))
        grants = [("POST", f"{base}/auth/oauth2/token", urllib.parse.urlencode(sign_in).encode())] * samples
        results.append(meter.timed("POST /auth/oauth2/token (password)", grants, None))
        db_client.close()
    finally:
        service.stop()
    ratios = {}
    for change in ("add member", "promote", "demote", "remove member", "GET members page"):
        small = next(r for r in results if r["scenario"] == f"{change} (team of 20)")
        big = next(r for r in results if r["scenario"] == f"{change} (team of 5,000)")
        ratios[f"{change}: 5,000 vs 20 (median, <= 1.5)"] = round(big["p50_ms"] / small["p50_ms"], 2)
    return {
        "results": results,
        "ratios": ratios,
        "background_ops_per_second": round(meter.background, 3),
        "machine": f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--output", type=Path, default=ROOT / "var" / "bench" / "scale.json")
    args = parser.parse_args()
    report = run(args.samples)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"{'scenario':52} {'p50 ms':>8} {'p90 ms':>8} {'db ops/req':>10} {'cache misses/req':>16}")
    for row in report["results"]:
        print(
            f"{row['scenario']:52} {row['p50_ms']:>8} {row['p90_ms']:>8} {row['db_ops_per_request']:>10} {row['cache_misses_per_request']:>16}"
        )
    print(json.dumps(report["ratios"], indent=2))
    print(f"background (driver heartbeats), taken out of ops/req: {report['background_ops_per_second']} ops/s")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
