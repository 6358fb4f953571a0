"""The registry client and the index/prune activities against the real registry.

This host builds only its own architecture, so the second platform's manifest is assembled here
from the same layers with an arm64 config: the registry stores and serves it like any other.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import ActivityEnvironment

from activities.registry import IndexRequest, PlatformPush, RegistryActivities
from builds.images import ImageBuilder
from builds.registry import Credentials, Descriptor, RegistryClient
from core.db import make_engine, make_sessionmaker
from core.models import BuildArtifactPlatform, BuildArtifactRun, Server, UsageMetric, User
from core.tenancy import image_repository
from tests.support.components import ECHO_IMAGE, Podman
from tests.support.registry import USER, Registry
from tests.support.stack import make_settings


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(database_url, pool_size=2)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def two_platform_index(registry: Registry, engine: Podman, repo: str) -> tuple[str, str]:
    """Push the echo image (amd64) and an arm64 twin; returns their manifest digests."""
    builder = ImageBuilder(engine.url)
    credentials = Credentials(USER, registry.password)
    await builder.tag(ECHO_IMAGE, f"{registry.endpoint}/{repo}", "amd64")
    await builder.push(f"{registry.endpoint}/{repo}", "amd64", credentials.auth_config())
    async with RegistryClient(registry.endpoint, credentials=credentials, insecure=True) as c:
        found = await c.get_manifest(repo, "amd64")
        assert found is not None
        amd, manifest = found
        # Pushing the same tag again changes nothing: same manifest, same digest.
        await builder.push(f"{registry.endpoint}/{repo}", "amd64", credentials.auth_config())
        again = await c.get_manifest(repo, "amd64")
        assert again is not None and again[0].digest == amd.digest

        config = {"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        config_bytes = json.dumps(config).encode()
        config_digest = registry.upload_blob(repo, config_bytes)
        arm = dict(manifest, config={**manifest["config"], "digest": config_digest, "size": len(config_bytes)})
        payload = json.dumps(arm).encode()
        arm_digest = await c.put_manifest(
            repo, "sha256:" + hashlib.sha256(payload).hexdigest(), amd.media_type, payload
        )
        index_digest, _ = await c.put_index(
            repo,
            "previous",
            [
                Descriptor(amd.media_type, amd.digest, amd.size, {"architecture": "amd64", "os": "linux"}),
                Descriptor(amd.media_type, arm_digest, len(payload), {"architecture": "arm64", "os": "linux"}),
            ],
        )
    status, index, digest = registry.manifest(repo, "previous")
    assert status == 200 and index is not None and digest == index_digest
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    return amd.digest, arm_digest


async def test_manifests_of_platforms_no_longer_built_are_pruned(
    sessions: async_sessionmaker[AsyncSession],
    registry: Registry,
    docker_engine: Podman,
    database_url: str,
    temporal_address: str,
    tmp_path: Path,
) -> None:
    docker_engine.ensure_echo_image()
    slug = f"prune-{uuid.uuid4().hex[:6]}"
    server_uuid = uuid.uuid4()
    repo = f"mcp/{image_repository(server_uuid)}"
    amd, arm = await two_platform_index(registry, docker_engine, repo)

    async with sessions() as session, session.begin():
        user = User(email=f"{slug}@example.com", password_hash="x", role="user", server_quota=1)
        session.add(user)
        await session.flush()
        server = Server(
            id=server_uuid,
            owner_id=user.id,
            name=slug,
            slug=slug,
            source={"type": "git", "repo_url": "https://example.com/x.git"},
            env={},
            api_key_hash=slug,
            api_key_prefix=slug,
            webhook_secret=slug,
        )
        session.add(server)
        await session.flush()
        runs = []
        for key, platforms in (("old", {"linux/amd64": amd, "linux/arm64": arm}), ("new", {"linux/amd64": None})):
            run = BuildArtifactRun(
                server_id=server.id,
                build_key=key,
                status="pushed" if key == "old" else "building",
                source_repo="https://example.com/x.git",
                source_revision=key * 8,
                recipe={},
                credential_outcomes={},
                timings={},
            )
            session.add(run)
            await session.flush()
            session.add_all(
                BuildArtifactPlatform(run_id=run.id, platform=p, manifest_digest=d) for p, d in platforms.items()
            )
            runs.append(run)
        server_id, new_run = str(server.id), str(runs[1].id)

    auth = registry.write_dockerconfig(tmp_path / "auth.json", registry.endpoint)
    settings = make_settings(
        database_url,
        temporal_address,
        tmp_path,
        registry=f"{registry.endpoint}/mcp",
        registry_insecure=True,
        registry_auth_dockerconfig=auth,
    )
    activities = RegistryActivities(sessions, settings, ImageBuilder(docker_engine.url))
    # The platform's pull credentials go with the server's own images only.
    assert activities.auth_for(f"{registry.endpoint}/{repo}@{amd}", server_id) is not None
    assert activities.auth_for(f"{registry.endpoint}/{repo}:previous", str(uuid.uuid4())) is None
    assert activities.auth_for(f"{registry.endpoint}/{repo}-other:previous", server_id) is None
    assert activities.auth_for(f"{registry.endpoint}/mcp/other:previous", server_id) is None
    request = IndexRequest(
        deployment_id=str(uuid.uuid4()),
        server_id=server_id,
        artifact_id=new_run,
        pushes=[PlatformPush("linux/amd64", amd, 1, {"architecture": "amd64", "os": "linux"})],
    )
    pruned = await ActivityEnvironment().run(activities.prune_manifests, request)
    assert pruned == ["linux/arm64"]
    assert registry.manifest(repo, arm)[0] == 404
    assert registry.manifest(repo, amd)[0] == 200  # still built: kept

    async with sessions() as session:
        query = (
            select(BuildArtifactPlatform)
            .join(BuildArtifactRun)
            .where(BuildArtifactRun.build_key == "old", BuildArtifactRun.server_id == uuid.UUID(server_id))
        )
        rows = {r.platform: r for r in await session.scalars(query)}
        assert rows["linux/arm64"].pruned_at is not None and rows["linux/amd64"].pruned_at is None
        events = [
            (m.event, m.details.get("pruned"))
            for m in await session.scalars(
                select(UsageMetric).where(UsageMetric.server_id == uuid.UUID(server_id)).order_by(UsageMetric.id)
            )
        ]
    assert events == [("manifest_prune_started", ["linux/arm64"]), ("manifest_prune_succeeded", ["linux/arm64"])]

    # Nothing stale any more: a second prune deletes nothing and says so.
    assert await ActivityEnvironment().run(activities.prune_manifests, request) == []

    # A prune the registry refuses is reported as failed, and the row stays unpruned for the next build.
    async with sessions() as session, session.begin():
        session.add(BuildArtifactPlatform(run_id=runs[0].id, platform="linux/ppc64le", manifest_digest=arm))
    wrong = make_settings(
        database_url,
        temporal_address,
        tmp_path,
        registry=f"{registry.endpoint}/mcp",
        registry_insecure=True,
        registry_auth_dockerconfig=registry.write_dockerconfig(tmp_path / "bad.json", registry.endpoint, "nope"),
    )
    refused = RegistryActivities(sessions, wrong, ImageBuilder(docker_engine.url))
    assert await ActivityEnvironment().run(refused.prune_manifests, request) == []
    async with sessions() as session:
        last = (
            await session.scalars(
                select(UsageMetric).where(UsageMetric.server_id == uuid.UUID(server_id)).order_by(UsageMetric.id.desc())
            )
        ).first()
    assert last is not None and last.event == "manifest_prune_failed" and "401" in last.details["error"]
