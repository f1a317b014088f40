"""`make bench`: the service under wrk, side by side with the bare aiohttp ceiling, on loopback.

Starts the service on the embedded database (--workers 1, then 2) and a bare aiohttp app, drives each
scenario with wrk for a fixed time, and measures requests/s, p50/p99, errors, and the service's own
CPU time per request (from /proc, excluding the database and wrk) and the database operations per
request (the embedded server's opcounters, change-stream getMores excluded). /users/me is measured
with a bearer token and, next to it (1 worker), with a DPoP-bound token and a fresh proof per request
(ops/bench/dpop.py). Prints a table and writes JSON.
Bounded: about six minutes in all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dpop  # the DPoP scenario's token and proofs (ops/bench/dpop.py, next to this file)
import psutil
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CORES = os.cpu_count() or 1


@dataclass
class Result:
    scenario: str
    workers: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    service_cpu_us: float
    db_cpu_share: float
    db_ops_per_request: float  # nan where no embedded database runs under the process
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def http(
    method: str, url: str, data: dict[str, str] | None = None, json_body: Any = None, token: str | None = None
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = None
    if data is not None:
        body = urllib.parse.urlencode(data).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif json_body is not None:
        body = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


ROOT_SIGN_IN = {"grant_type": "password", "client_id": "documentation", "username": "root", "password": "q"}


def root_token(base: str) -> str:
    """An access token for the fixtures' admin."""
    return str(http("POST", f"{base}/auth/oauth2/token", data=ROOT_SIGN_IN)["access_token"])


def processes(root_pid: int) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(service processes, database processes) under root_pid."""
    root = psutil.Process(root_pid)
    family = [root, *root.children(recursive=True)]
    database = [p for p in family if "secantus" in " ".join(p.cmdline())]
    return [p for p in family if p not in database], database


# The operations a request costs, from the server's opcounters: getMores are the change streams' waits.
COUNTERS = ("insert", "query", "update", "delete", "command")


def database_client(root_pid: int) -> MongoClient | None:
    """A client of the embedded database under root_pid (None when there is none), with its own
    heartbeats off: they would count in the opcounters."""
    _, database = processes(root_pid)
    if not database:
        return None
    port = next(c.laddr.port for c in database[0].net_connections() if c.status == "LISTEN")
    return MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", heartbeatFrequencyMS=3_600_000)


def db_operations(client: MongoClient) -> int:
    counters = client.admin.command("serverStatus")["opcounters"]
    return sum(int(counters[name]) for name in COUNTERS)


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def wrk(url: str, seconds: int, connections: int, script: str | None = None, threads: int = 2) -> dict[str, Any]:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script:
        command += ["-s", script]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        return parse_latency(output, label)

    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": errors,
    }


def lua(directory: Path, name: str, body: str) -> str:
    path = directory / f"{name}.lua"
    path.write_text(body)
    return str(path)


def measure(
    name: str, workers: int, root_pid: int, url: str, seconds: int, connections: int, script: str | None = None
) -> Result:
    service, database = processes(root_pid)
    client = database_client(root_pid)
    operations = db_operations(client) if client else 0
    before, db_before = cpu(service), cpu(database)
    stats = wrk(url, seconds, connections, script)
    used, db_used = cpu(service) - before, cpu(database) - db_before
    requests = max(stats["requests"], 1)
    # Over thousands of requests the drivers' heartbeats (a few a minute) are noise; -1: serverStatus.
    per_request = (db_operations(client) - operations - 1) / requests if client else float("nan")
    if client:
        client.close()
    return Result(
        name,
        workers,
        stats["requests"],
        stats["rps"],
        stats["p50_ms"],
        stats["p99_ms"],
        stats["errors"],
        used / max(stats["requests"], 1) * 1e6,
        db_used / max(used + db_used, 1e-9),
        round(per_request, 2),
    )


class Server:
    """A process we start and, whatever happens, stop."""

    def __init__(self, command: list[str], env: dict[str, str], ready_url: str) -> None:
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(ready_url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def argon2_hash_ms() -> float:
    import argon2

    hasher = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
    hasher.hash("warm-up")
    samples = []
    for _ in range(21):
        start = time.perf_counter()
        hasher.hash("benchmark password")
        samples.append((time.perf_counter() - start) * 1000)
    return sorted(samples)[len(samples) // 2]  # the median: single outliers move it little


def argon2_parallel_verifies_per_s(seconds: float = 5.0) -> float:
    """What this machine can verify with every core hashing and nothing else running: the real ceiling.

    (On the 2-vCPU machines here it is ~65 % of cores / single-hash time: the hashes' 19 MiB each
    contend for cache and memory bandwidth.)"""
    import threading

    import argon2

    hasher = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
    stored = hasher.hash("benchmark password")
    counts = [0] * CORES
    until = time.perf_counter() + seconds

    def work(slot: int) -> None:
        while time.perf_counter() < until:
            hasher.verify(stored, "benchmark password")
            counts[slot] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(CORES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


# Every request from an address of its own (a distributed storm, the hard case for the service).
RANDOM_CLIENT_ADDRESS = """
request = function()
  wrk.headers["X-Forwarded-For"] = "10." .. math.random(0, 255) .. "." .. math.random(0, 255) .. "." .. math.random(1, 254)
  return wrk.format()
end
"""

STORM = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} math.randomseed(os.time() + math.random(1, 1000000)) end
function request()
  if DISTRIBUTED then
    wrk.headers["X-Forwarded-For"] = "10." .. math.random(0, 255) .. "." .. math.random(0, 255) .. "." .. math.random(1, 254)
  end
  return wrk.format(nil, nil, nil,
    "grant_type=password&client_id=documentation&password=guess&username=storm" .. math.random(1, 1000000000))
end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do io.write(string.format("status %d %d\\n", status, n)) end
  end
end
"""


SCRAPER = """
import sys, time, urllib.request
url, until = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < until:
    urllib.request.urlopen(url, timeout=5).read()
    time.sleep(1)
"""


def token_storm(work: Path, base: str, seconds: int, me_script: str, *, distributed: bool) -> dict[str, Any]:
    """100 connections of random-username password grants, while one client (an address of its own)
    signs in with the right password once a second and wrk reads /users/me. The storm comes from one
    address, or (`distributed`) every request from an address of its own, which no per-address limit stops."""
    script = lua(work, f"storm{int(distributed)}", f"DISTRIBUTED = {str(distributed).lower()}\n" + STORM)
    storm = subprocess.Popen(
        [
            "wrk",
            "-t2",
            "-c100",
            f"-d{seconds + 2}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            script,
            f"{base}/auth/oauth2/token",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    sign_ins: list[tuple[int, float]] = []
    reader = subprocess.Popen(
        [
            "wrk",
            "-t1",
            "-c32",
            f"-d{seconds - 2}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            me_script,
            f"{base}/api/v1/users/me",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    form = urllib.parse.urlencode(
        {"grant_type": "password", "client_id": "documentation", "username": "root", "password": "q"}
    ).encode()
    for _ in range(seconds - 2):
        started = time.perf_counter()
        request = urllib.request.Request(
            f"{base}/auth/oauth2/token",
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": "192.0.2.1"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        sign_ins.append((status, time.perf_counter() - started))
        time.sleep(max(0.0, 1 - (time.perf_counter() - started)))
    me_out, _ = reader.communicate()
    storm_out, _ = storm.communicate()
    statuses: dict[int, int] = {}
    for code, count in re.findall(r"^status (\d+) (\d+)$", storm_out, re.M):
        statuses[int(code)] = statuses.get(int(code), 0) + int(count)
    return {
        "storm_requests": sum(statuses.values()),
        "storm_statuses": statuses,
        "storm_p99_ms": parse_latency(storm_out, "99"),
        "users_me_p99_ms": parse_latency(me_out, "99"),
        "sign_ins": [{"status": status, "ms": round(elapsed * 1000, 1)} for status, elapsed in sign_ins],
    }


def parse_latency(output: str, label: str) -> float:
    match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def service_env(work: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of a measured service: the embedded database under `work`, quiet logs, and the
    per-token API limit lifted (one token makes every /api/v1 request of a run: most would be 429s)."""
    env = {
        **os.environ,
        "SERVICE_DATA_DIR": str(work / "db"),
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "API_RATE_LIMIT": "1000000",
        "API_RATE_BURST": "1000000",
        **extra,
    }
    env.pop("MONGODB_URL", None)
    return env


def run(seconds: int, memory_requests: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    results: list[Result] = []
    report: dict[str, Any] = {"cores": CORES, "seconds_per_scenario": seconds}
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        # wrk stands in for a proxy: sign-in scripts send X-Forwarded-For, so each request counts as a
        # client of its own and the per-address limit (defaults kept) does not cap what is measured.
        env = service_env(work, port, TRUSTED_PROXIES="127.0.0.1")
        report["argon2_hash_ms"] = argon2_hash_ms()
        report["argon2_parallel_verifies_per_s"] = round(argon2_parallel_verifies_per_s(), 1)

        for workers in (1, 2):
            service = Server([PYTHON, "-m", "service", "serve", "--workers", str(workers)], env, f"{base}/readyz")
            try:
                token = root_token(base)
                teams = http("GET", f"{base}/api/v1/teams/?limit=100", token=token)
                for i in range(len(teams), 20):
                    http("POST", f"{base}/api/v1/teams/", json_body={"title": f"Team {i:02d}"}, token=token)
                teams = http("GET", f"{base}/api/v1/teams/?limit=100", token=token)
                auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n'
                me = lua(work, "me", auth)
                patch = lua(
                    work,
                    "patch",
                    auth + 'wrk.method = "PATCH"\nwrk.headers["Content-Type"] = "application/json"\n'
                    "counter = 0\nrequest = function()\n  counter = counter + 1\n"
                    '  return wrk.format(nil, nil, nil, \'[{"op":"replace","path":"/title","value":"T\' .. counter .. \'"}]\')\nend\n',
                )
                login = lua(
                    work,
                    "login",
                    'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
                    'wrk.body = "grant_type=password&client_id=documentation&username=root&password=q"\n'
                    + RANDOM_CLIENT_ADDRESS,
                )
                root_pid = service.process.pid
                results.append(measure("GET /users/me", workers, root_pid, f"{base}/api/v1/users/me", seconds, 32, me))
                if workers == 1:  # the same read with a DPoP-bound token and a fresh proof per request
                    proofs = dpop.proof_script(work, base, ROOT_SIGN_IN, dpop.proofs_needed(results[-1].rps, seconds))
                    url = f"{base}/api/v1/users/me"
                    results.append(measure("GET /users/me, DPoP", workers, root_pid, url, seconds, 32, proofs))
                results.append(measure("GET /teams/ (20)", workers, root_pid, f"{base}/api/v1/teams/", seconds, 32, me))
                results.append(
                    measure(
                        "PATCH /teams/{id}",
                        workers,
                        root_pid,
                        f"{base}/api/v1/teams/{teams[0]['id']}",
                        seconds,
                        32,
                        patch,
                    )
                )
                results.append(
                    measure(
                        "POST /auth/oauth2/token", workers, root_pid, f"{base}/auth/oauth2/token", seconds, 8, login
                    )
                )
                storm = subprocess.Popen(
                    [
                        "wrk",
                        "-t1",
                        "-c8",
                        f"-d{seconds + 2}s",
                        "-s",
                        login,
                        f"{base}/auth/oauth2/token",
                    ],
                    stdout=subprocess.DEVNULL,
                )
                time.sleep(1)
                results.append(
                    measure(
                        "GET /users/me + login storm", workers, root_pid, f"{base}/api/v1/users/me", seconds, 32, me
                    )
                )
                storm.wait()
                if workers == 1:
                    report["token_storm"] = token_storm(work, base, seconds, me, distributed=False)
                    report["token_storm_distributed"] = token_storm(work, base, seconds, me, distributed=True)
                service_procs, _ = processes(root_pid)
                workers_rss = [p.memory_info().rss for p in service_procs if p.pid != root_pid or workers == 1]
                report[f"rss_mb_workers_{workers}"] = [round(rss / 2**20, 1) for rss in workers_rss]
                if workers == 1:
                    report["memory"] = memory_check(root_pid, f"{base}/api/v1/users/me", me, memory_requests)
            finally:
                service.stop()

        # Metrics on: the same /users/me scenario with the Prometheus listener, scraped once a second.
        metrics_port = free_port()
        service = Server(
            [PYTHON, "-m", "service", "serve"], {**env, "METRICS_PORT": str(metrics_port)}, f"{base}/readyz"
        )
        scraper = subprocess.Popen(
            [PYTHON, "-c", SCRAPER, f"http://127.0.0.1:{metrics_port}/metrics", str(seconds + 3)],
        )
        try:
            token = root_token(base)
            me = lua(work, "me-metrics", f'wrk.headers["Authorization"] = "Bearer {token}"\n')
            results.append(
                measure("GET /users/me, metrics on", 1, service.process.pid, f"{base}/api/v1/users/me", seconds, 32, me)
            )
        finally:
            scraper.wait()
            service.stop()

        # The bare app needs the same kind of database: an idle service holds the embedded one for it.
        bare_port, holder_port = free_port(), free_port()
        holder = Server(
            [PYTHON, "-m", "service", "serve"],
            {**env, "PORT": str(holder_port)},
            f"http://127.0.0.1:{holder_port}/readyz",
        )
        try:
            _, db_procs = processes(holder.process.pid)
            db_port = next(c.laddr.port for c in db_procs[0].net_connections() if c.status == "LISTEN")
            bare = Server(
                [
                    PYTHON,
                    str(Path(__file__).with_name("bare.py")),
                    str(bare_port),
                    f"mongodb://127.0.0.1:{db_port}/?directConnection=true",
                    "service",
                ],
                env,
                f"http://127.0.0.1:{bare_port}/json",
            )
            try:
                results.append(
                    measure(
                        "bare aiohttp /json", 1, bare.process.pid, f"http://127.0.0.1:{bare_port}/json", seconds, 32
                    )
                )
                bare_find = measure(
                    "bare aiohttp + find_one",
                    1,
                    bare.process.pid,
                    f"http://127.0.0.1:{bare_port}/find_one",
                    seconds,
                    32,
                )
                bare_find.db_cpu_share = float("nan")  # the database belongs to another process tree here
                results.append(bare_find)
            finally:
                bare.stop()
        finally:
            holder.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["results"] = [asdict(r) for r in results]
    return report


def memory_check(root_pid: int, url: str, script: str, total: int) -> dict[str, Any]:
    """RSS of the worker while `total` requests go through, sampled every tenth: it must level off."""
    service = psutil.Process(root_pid)
    samples = []
    per_step = max(total // 10, 1)
    for _ in range(10):
        done = 0
        while done < per_step:
            done += wrk(url, 2, 32, script)["requests"]
        samples.append(round(service.memory_info().rss / 2**20, 1))
    return {
        "requests": per_step * 10,
        "rss_mb_samples": samples,
        "growth_second_half_mb": round(samples[-1] - samples[len(samples) // 2], 1),
    }


def table(report: dict[str, Any]) -> str:
    rows = report["results"]
    bare = next(r for r in rows if r["scenario"] == "bare aiohttp /json")
    floor = next(r for r in rows if r["scenario"] == "bare aiohttp + find_one")
    lines = [
        f"{'scenario':34} {'w':>2} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'err':>5} {'cpu us/req':>10} "
        f"{'x bare':>7} {'x floor':>7} {'db cpu':>6} {'db ops/req':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r['scenario']:34} {r['workers']:>2} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['errors']:>5} {r['service_cpu_us']:>10.0f} {r['service_cpu_us'] / bare['service_cpu_us']:>7.2f} "
            f"{r['service_cpu_us'] / floor['service_cpu_us']:>7.2f} {r['db_cpu_share']:>6.0%} "
            f"{r['db_ops_per_request']:>10}"
        )
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """Each target of the performance issue, computed from this run's figures."""
    rows = {(r["scenario"], r["workers"]): r for r in report["results"]}
    bare, floor = rows[("bare aiohttp /json", 1)], rows[("bare aiohttp + find_one", 1)]
    ceiling = report["cores"] / (report["argon2_hash_ms"] / 1000)
    summary: dict[str, Any] = {"password_grant_ceiling_rps": round(ceiling, 1)}
    for workers in (1, 2):
        me, storm = rows[("GET /users/me", workers)], rows[("GET /users/me + login storm", workers)]
        token = rows[("POST /auth/oauth2/token", workers)]
        summary[f"workers_{workers}"] = {
            "users_me_cpu_vs_bare_plus_find_one (<= 1.3)": round(me["service_cpu_us"] / floor["service_cpu_us"], 2),
            "users_me_cpu_vs_bare_handler (stretch <= 3)": round(me["service_cpu_us"] / bare["service_cpu_us"], 2),
            "password_grant_vs_cores_over_hash_time (>= 0.8)": round(token["rps"] / ceiling, 2),
            "password_grant_vs_measured_parallel_hashing": round(
                token["rps"] / report["argon2_parallel_verifies_per_s"], 2
            ),
            "users_me_p99_storm_vs_quiet (< 4)": round(storm["p99_ms"] / me["p99_ms"], 2),
            "rss_mb_per_worker (< 120)": report[f"rss_mb_workers_{workers}"],
        }
    quiet_p99 = rows[("GET /users/me", 1)]["p99_ms"]
    metered = rows[("GET /users/me, metrics on", 1)]
    summary["metrics_overhead"] = {
        "users_me_cpu_us_metrics_off": round(rows[("GET /users/me", 1)]["service_cpu_us"], 1),
        "users_me_cpu_us_metrics_on": round(metered["service_cpu_us"], 1),
        "extra_cpu_per_request (<= 10%)": f"{metered['service_cpu_us'] / rows[('GET /users/me', 1)]['service_cpu_us'] - 1:+.1%}",
        "users_me_rps_metrics_off_vs_on": [round(rows[("GET /users/me", 1)]["rps"]), round(metered["rps"])],
    }
    bearer, dpop_row = rows[("GET /users/me", 1)], rows[("GET /users/me, DPoP", 1)]
    summary["dpop"] = {
        "users_me_cpu_us_bearer": round(bearer["service_cpu_us"], 1),
        "users_me_cpu_us_dpop": round(dpop_row["service_cpu_us"], 1),
        "dpop_vs_bearer_cpu (target <= 1.5)": round(dpop_row["service_cpu_us"] / bearer["service_cpu_us"], 2),
        "users_me_rps_bearer_vs_dpop": [round(bearer["rps"]), round(dpop_row["rps"])],
    }
    for name in ("token_storm", "token_storm_distributed"):
        storm = report[name]
        unexpected = {code: n for code, n in storm["storm_statuses"].items() if code >= 500 and code != 503}
        summary[name] = {
            "storm_token_responses_p99_ms (<= 1000)": storm["storm_p99_ms"],
            "storm_statuses": storm["storm_statuses"],
            "storm_5xx_other_than_503 (0)": sum(unexpected.values()),
            "users_me_p99_ms": storm["users_me_p99_ms"],
            "users_me_p99_storm_vs_quiet (< 4)": round(storm["users_me_p99_ms"] / quiet_p99, 2),
            "real_sign_ins_statuses": sorted({s["status"] for s in storm["sign_ins"]}),
            "real_sign_ins_max_ms (<= 1000)": max(s["ms"] for s in storm["sign_ins"]),
        }
    summary["rss_growth_over_second_half_of_memory_run_mb"] = report["memory"]["growth_second_half_mb"]
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each scenario")
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--output", type=Path, default=ROOT / "var" / "bench" / "results.json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install wrk", file=sys.stderr)
        return 2
    report = run(args.seconds, args.memory_requests)
    report["targets"] = targets(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(json.dumps({k: v for k, v in report.items() if k not in ("results", "targets")}, indent=2))
    print(json.dumps(report["targets"], indent=2))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
