"""Build + push of one build context: directly with the docker SDK vs through BuildWorkflow + PushWorkflow.

Method (fixed): one podman Docker API service, one docker-registry with htpasswd auth on loopback, a
real Temporal dev server, Postgres, and an in-process worker. The build context is a small Dockerfile
(`FROM` the test MCP image, one `RUN` that writes the run number, `EXPOSE 8080`), served from a git
repository over smart HTTP. Each run makes a new commit, so every run really builds and pushes one
new layer. Alternating, N times each:
  (a) direct: docker SDK `images.build` of the same context (its files at that commit), then
      `images.push` through the engine to the same registry (one repository, a tag per run);
  (b) platform: the BuildWorkflow + PushWorkflow pair started by a deployment of the git source,
      timed from the POST to the end of the push step (recorded step timestamps).
Prints the medians and the ratio (b)/(a); writes bench/results/build_push.json.

    .venv/bin/python bench/build_push.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402

from tests.support.build_platform import build_platform  # noqa: E402
from tests.support.components import ECHO_IMAGE  # noqa: E402
from tests.support.registry import USER, Registry  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def context_files(run: int) -> dict[str, str | bytes]:
    return {"Dockerfile": f"FROM {ECHO_IMAGE}\nRUN echo {run}-{uuid.uuid4().hex} > /run-marker\nEXPOSE 8080\n"}


def seconds(step: dict[str, Any]) -> float:
    return (datetime.fromisoformat(step["finished_at"]) - datetime.fromisoformat(step["started_at"])).total_seconds()


def direct(engine: docker.DockerClient, context: Path, registry: Registry, run: int) -> dict[str, float]:
    # One repository for every run, as the platform uses one per server: unchanged layers are skipped.
    repo = f"{registry.endpoint}/direct/bench"
    t0 = time.perf_counter()
    engine.images.build(path=str(context), tag=f"{repo}:{run}", rm=True, pull=False)
    t1 = time.perf_counter()
    for line in engine.images.push(
        repo, tag=str(run), auth_config={"username": USER, "password": registry.password}, stream=True, decode=True
    ):
        if isinstance(line, dict) and line.get("error"):
            raise RuntimeError(line["error"])
    t2 = time.perf_counter()
    return {"total": t2 - t0, "build": t1 - t0, "push": t2 - t1}


async def platform(client: Any, server_id: str) -> dict[str, float]:
    t0 = time.perf_counter()
    accepted = (await client.post(f"/api/servers/{server_id}/deployments")).json()
    total: float | None = None
    while True:
        detail = (await client.get(f"/api/deployments/{accepted['deployment_id']}")).json()
        steps = {s["step"]: s for s in detail["steps"]}
        if total is None and steps.get("push", {}).get("status") == "succeeded":
            total = time.perf_counter() - t0
        if detail["status"] not in ("pending", "deploying"):
            break  # wait for the whole deployment (untimed) so the next run starts from rest
        await asyncio.sleep(0.02)
    if total is None or detail["status"] != "running":
        raise RuntimeError(f"deployment did not push and run: {detail['error']}")
    return {"total": total, "build": seconds(steps["build"]), "push": seconds(steps["push"])}


async def main(runs: int) -> None:
    direct_runs: list[dict[str, float]] = []
    platform_runs: list[dict[str, float]] = []
    async with build_platform() as parts:
        registry, git, work = parts.registry, parts.git, parts.work
        engine = docker.DockerClient(base_url=parts.podman.url, timeout=600)
        client, _ = await parts.stack.user()
        try:
            git.publish("bench", context_files(0))
            server = (
                await client.post(
                    "/api/servers",
                    json={"name": "bench-build", "source": {"type": "git", "repo_url": git.url("bench")}},
                )
            ).json()
            # Warm-up (not timed): the base layers reach the registry once on each path.
            await platform(client, server["id"])
            context = work / "context"
            context.mkdir()
            (context / "Dockerfile").write_text(str(context_files(0)["Dockerfile"]))
            direct(engine, context, registry, 0)
            for run in range(1, runs + 1):
                files = context_files(run)
                (context / "Dockerfile").write_text(str(files["Dockerfile"]))
                direct_runs.append(await asyncio.to_thread(direct, engine, context, registry, run))
                git.publish("bench", files)
                platform_runs.append(await platform(client, server["id"]))
                print(
                    f"run {run}/{runs}: direct {direct_runs[-1]['total']:.3f}s "
                    f"(build {direct_runs[-1]['build']:.3f}, push {direct_runs[-1]['push']:.3f}); "
                    f"workflows {platform_runs[-1]['total']:.3f}s "
                    f"(build {platform_runs[-1]['build']:.3f}, push {platform_runs[-1]['push']:.3f})",
                    flush=True,
                )
        finally:
            await client.aclose()
            engine.close()

    def med(items: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in items), 4)

    result: dict[str, Any] = {
        "benchmark": "build_push",
        "method": __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "runs": runs,
        "direct_median_s": {k: med(direct_runs, k) for k in ("total", "build", "push")},
        "workflows_median_s": {k: med(platform_runs, k) for k in ("total", "build", "push")},
        "direct_runs": direct_runs,
        "workflow_runs": platform_runs,
    }
    result["ratio_median_workflows_over_direct"] = round(
        result["workflows_median_s"]["total"] / result["direct_median_s"]["total"], 3
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "build_push.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_runs")}, indent=2))
    print(
        f"\nmedian build+push: direct {result['direct_median_s']['total']:.3f}s, "
        f"BuildWorkflow+PushWorkflow {result['workflows_median_s']['total']:.3f}s; "
        f"ratio (b)/(a) = {result['ratio_median_workflows_over_direct']}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
