"""A server's /data over the API, on the real stack: transfers, path safety, limits, tenancy, removal."""

from __future__ import annotations

import asyncio
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from core.files import UPLOAD_PREFIX
from core.tenancy import data_root, server_data_dir
from tests.support.cli import Cli
from tests.support.stack import Stack

TIME = {"type": "package", "package": "mcp-server-time"}
MIB = 1024 * 1024


async def _server(client: httpx.AsyncClient) -> str:
    created = await client.post("/api/servers", json={"name": f"files-{uuid.uuid4().hex[:8]}", "source": TIME})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _leftover_uploads(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(UPLOAD_PREFIX)]


async def test_upload_list_download_overwrite_delete(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        sid = await _server(client)
        base = f"/api/servers/{sid}/files"
        root = server_data_dir(stack.settings.state_dir, sid)

        empty = await client.get(base)
        assert empty.status_code == 200, empty.text
        assert empty.json()["count"] == 0 and empty.json()["total_bytes"] == 0
        assert empty.json()["quota_bytes"] == stack.settings.files_quota_bytes
        assert empty.json()["max_file_bytes"] == stack.settings.files_max_bytes

        payload = os.urandom(300_000)
        put = await client.post(f"{base}/model.bin", content=payload)
        assert put.status_code == 201, put.text
        assert put.json()["path"] == "model.bin" and put.json()["size"] == len(payload)
        nested = await client.post(
            f"{base}/cfg/prod/settings.json", content=b'{"a": 1}', headers={"Content-Type": "application/json"}
        )
        assert nested.status_code == 201, nested.text

        # A chunked body (no Content-Length) is streamed the same way.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"c" * 1000

        streamed = await client.post(f"{base}/streamed.txt", content=chunks())
        assert streamed.status_code == 201 and streamed.json()["size"] == 4000

        listed = (await client.get(base)).json()
        assert [(f["path"], f["size"]) for f in listed["data"]] == [
            ("cfg/prod/settings.json", 8),
            ("model.bin", len(payload)),
            ("streamed.txt", 4000),
        ]
        assert listed["total_bytes"] == len(payload) + 8 + 4000

        got = await client.get(f"{base}/model.bin")
        assert got.status_code == 200 and got.content == payload
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.headers["content-length"] == str(len(payload))
        assert (await client.get(f"{base}/cfg/prod/settings.json")).content == b'{"a": 1}'

        again = await client.post(f"{base}/cfg/prod/settings.json", content=b"v2")
        assert again.status_code == 201 and again.json()["size"] == 2
        assert (await client.get(f"{base}/cfg/prod/settings.json")).content == b"v2"

        # What the hosted server will see at /data: a private directory owned by its sandbox uid.
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        if os.geteuid() == 0:
            uid = await stack.sandbox_uid(sid)
            for path in (root, root / "cfg" / "prod", root / "model.bin", root / "cfg" / "prod" / "settings.json"):
                assert path.stat().st_uid == uid and path.stat().st_gid == uid, path

        missing = await client.get(f"{base}/nope.txt")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        busy = await client.delete(f"{base}/cfg")
        assert busy.status_code == 409 and "not empty" in busy.json()["detail"]
        assert (await client.post(f"{base}/cfg", content=b"x")).status_code == 409
        assert (await client.post(f"{base}/model.bin/inner", content=b"x")).status_code == 409

        assert (await client.delete(f"{base}/cfg/prod/settings.json")).status_code == 204
        assert (await client.delete(f"{base}/cfg/prod")).status_code == 204
        assert (await client.delete(f"{base}/cfg")).status_code == 204
        assert (await client.delete(f"{base}/cfg")).status_code == 404
        assert [f["path"] for f in (await client.get(base)).json()["data"]] == ["model.bin", "streamed.txt"]

        multipart = await client.post(f"{base}/form.txt", files={"file": ("form.txt", b"hello")})
        assert multipart.status_code == 415 and "request body" in multipart.json()["detail"]
        assert not (root / "form.txt").exists()


async def test_traversal_is_refused_and_writes_nothing_outside(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        sid = await _server(client)
        base = f"/api/servers/{sid}/files"
        marker = f"escaped-{uuid.uuid4().hex[:8]}"
        attempts = {
            f"..%2F..%2F{marker}": "'..'",
            f"..%2F..%2F..%2Fetc%2F{marker}": "'..'",
            f"%2Ftmp%2F{marker}": "absolute",
            f"..%5C..%5C{marker}": "backslash",
            f"a%00{marker}": "control",
            "x" * 300: "255 bytes",
            "/".join(["d"] * 600): "1024 characters",
        }
        for path, reason in attempts.items():
            for method in ("POST", "GET", "DELETE"):
                response = await client.request(method, f"{base}/{path}", content=b"evil" if method == "POST" else None)
                assert response.status_code == 422, (method, path, response.text)
                assert response.json()["code"] == "invalid_input" and reason in response.json()["detail"]
        state_dir = stack.settings.state_dir
        # Where each attempt would have landed had it been followed.
        for where in (state_dir, state_dir.parent / "etc", Path("/tmp"), Path("/etc")):
            assert not (where / marker).exists(), where
        assert not list(data_root(state_dir).rglob(f"*{marker}*"))


async def test_planted_symlinks_are_not_followed(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        sid = await _server(client)
        other = await _server(client)
        base = f"/api/servers/{sid}/files"
        assert (await client.post(f"{base}/real.txt", content=b"mine")).status_code == 201
        assert (await client.post(f"/api/servers/{other}/files/secret.txt", content=b"theirs")).status_code == 201
        root = server_data_dir(stack.settings.state_dir, sid)
        other_root = server_data_dir(stack.settings.state_dir, other)
        # What a hostile server could do inside its own /data.
        (root / "passwd").symlink_to("/etc/passwd")
        (root / "neighbour").symlink_to(other_root)
        (root / "alias.txt").symlink_to("real.txt")
        passwd = Path("/etc/passwd").read_bytes()

        for path in ("passwd", "neighbour/secret.txt", "alias.txt"):
            got = await client.get(f"{base}/{path}")
            assert got.status_code == 422, (path, got.text)
            assert "passwd" not in path or b"root:" not in got.content
        for path in ("passwd", "neighbour/planted.txt", "neighbour/secret.txt", "alias.txt"):
            put = await client.post(f"{base}/{path}", content=b"overwritten")
            assert put.status_code == 422, (path, put.text)
        for path in ("passwd", "neighbour/secret.txt"):
            assert (await client.delete(f"{base}/{path}")).status_code == 422

        assert Path("/etc/passwd").read_bytes() == passwd
        assert sorted(p.name for p in other_root.iterdir()) == ["secret.txt"]
        assert (other_root / "secret.txt").read_bytes() == b"theirs"
        assert (root / "real.txt").read_bytes() == b"mine"
        listed = (await client.get(base)).json()
        assert [f["path"] for f in listed["data"]] == ["real.txt"] and listed["total_bytes"] == 4


async def test_size_limit_and_quota_are_413_and_leave_nothing(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        sid = await _server(client)
        base = f"/api/servers/{sid}/files"
        root = server_data_dir(stack.settings.state_dir, sid)
        too_big = b"z" * (stack.settings.files_max_bytes + MIB)

        declared = await client.post(f"{base}/big.bin", content=too_big)
        assert declared.status_code == 413, declared.text
        assert declared.json()["code"] == "payload_too_large" and "FILES_MAX_BYTES" in declared.json()["detail"]

        async def chunked() -> AsyncIterator[bytes]:
            for start in range(0, len(too_big), MIB):
                yield too_big[start : start + MIB]

        undeclared = await client.post(f"{base}/big.bin", content=chunked())
        assert undeclared.status_code == 413 and "FILES_MAX_BYTES" in undeclared.json()["detail"]
        assert not (root / "big.bin").exists() and not _leftover_uploads(root)

        assert (await client.post(f"{base}/keep.txt", content=b"old")).status_code == 201
        assert (await client.post(f"{base}/keep.txt", content=too_big)).status_code == 413
        assert (await client.get(f"{base}/keep.txt")).content == b"old"

        # Files the server wrote itself count against the quota (a sparse file: no real disk used).
        with open(root / "written-by-server.db", "wb") as fh:
            fh.truncate(stack.settings.files_quota_bytes - MIB)
        over = await client.post(f"{base}/more.bin", content=b"q" * (2 * MIB))
        assert over.status_code == 413 and "FILES_QUOTA_BYTES" in over.json()["detail"]
        assert not (root / "more.bin").exists() and not _leftover_uploads(root)
        assert (await client.post(f"{base}/small.bin", content=b"q" * 1000)).status_code == 201


async def test_other_users_get_404_and_administrators_see_all(stack: Stack) -> None:
    owner, _ = await stack.user()
    stranger, _ = await stack.user()
    admin, _ = await stack.user(role="admin")
    async with owner, stranger, admin:
        sid = await _server(owner)
        base = f"/api/servers/{sid}/files"
        assert (await owner.post(f"{base}/private.txt", content=b"owner's")).status_code == 201
        root = server_data_dir(stack.settings.state_dir, sid)

        for method, path in (("GET", base), ("GET", f"{base}/private.txt"), ("DELETE", f"{base}/private.txt")):
            response = await stranger.request(method, path)
            assert response.status_code == 404 and response.json()["code"] == "not_found", (method, path)
        planted = await stranger.post(f"{base}/planted.txt", content=b"x")
        assert planted.status_code == 404
        assert not (root / "planted.txt").exists() and (root / "private.txt").read_bytes() == b"owner's"
        unknown = await owner.get(f"/api/servers/{uuid.uuid4()}/files")
        assert unknown.status_code == 404

        async with stack.client() as anonymous:
            assert (await anonymous.get(base)).status_code == 401
            assert (await anonymous.post(f"{base}/anon.txt", content=b"x")).status_code == 401

        seen = await admin.get(base)
        assert seen.status_code == 200 and [f["path"] for f in seen.json()["data"]] == ["private.txt"]
        assert (await admin.get(f"{base}/private.txt")).content == b"owner's"


async def test_openapi_documents_every_status(stack: Stack) -> None:
    async with stack.client() as anonymous:
        spec = (await anonymous.get("/openapi.json")).json()
    paths = spec["paths"]
    listing = paths["/api/servers/{server_id}/files"]["get"]["responses"]
    item = paths["/api/servers/{server_id}/files/{path}"]
    assert {"200", "401", "404", "422"} <= set(listing)
    assert {"201", "401", "404", "409", "413", "415", "422"} <= set(item["post"]["responses"])
    assert {"200", "401", "404", "422"} <= set(item["get"]["responses"])
    assert {"204", "401", "404", "409", "422"} <= set(item["delete"]["responses"])
    assert "application/octet-stream" in item["post"]["requestBody"]["content"]
    assert item["post"]["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


async def test_data_survives_stop_and_goes_with_the_server(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        sid = await _server(client)
        base = f"/api/servers/{sid}/files"
        assert (await client.post(f"{base}/state/db.sqlite", content=b"rows")).status_code == 201
        root = server_data_dir(stack.settings.state_dir, sid)
        outside = data_root(stack.settings.state_dir).parent / f"outside-{uuid.uuid4().hex[:8]}"
        outside.mkdir()
        (outside / "keep.txt").write_text("keep")
        (root / "out").symlink_to(outside)

        stopped = await client.post(f"/api/servers/{sid}/stop")
        assert stopped.status_code == 202, stopped.text
        deadline = time.monotonic() + 60
        while (await client.get(f"/api/servers/{sid}")).json()["status"] != "stopped":
            assert time.monotonic() < deadline, "server did not stop"
            await asyncio.sleep(0.1)
        assert (await client.get(f"{base}/state/db.sqlite")).content == b"rows"

        deleted = await client.delete(f"/api/servers/{sid}")
        assert deleted.status_code == 202, deleted.text
        refused = await client.post(f"{base}/late.txt", content=b"x")
        assert refused.status_code in (404, 409)
        deadline = time.monotonic() + 60
        while os.path.lexists(root) or (await client.get(f"/api/servers/{sid}")).status_code != 404:
            assert time.monotonic() < deadline, "data directory still there after the server was deleted"
            await asyncio.sleep(0.1)
        assert (outside / "keep.txt").read_text() == "keep"
        assert (await client.get(base)).status_code == 404


async def test_cli_put_ls_get_rm(stack: Stack, tmp_path: Path) -> None:
    client, _ = await stack.user()
    async with client:
        sid = await _server(client)
        cli = await Cli.for_user(client, stack.base_url, tmp_path)
        local = tmp_path / "weights.bin"
        local.write_bytes(os.urandom(50_000))

        put = await cli("files", "put", sid, str(local), "models/weights bin")
        assert put.code == 0, put.err
        assert "models/weights bin" in put.out and "50000 bytes" in put.out
        listed = await cli("files", "ls", sid)
        assert listed.code == 0 and "models/weights bin" in listed.out and "50000 of" in listed.out

        copy = tmp_path / "copy.bin"
        got = await cli("files", "get", sid, "models/weights bin", "-o", str(copy))
        assert got.code == 0, got.err
        assert copy.read_bytes() == local.read_bytes()
        missing = await cli("files", "get", sid, "nope", "-o", str(tmp_path / "nope"))
        assert missing.code == 1 and "error 404" in missing.err and not (tmp_path / "nope").exists()
        unsafe = await cli("files", "put", sid, str(local), "a\\b")
        assert unsafe.code == 1 and "backslash" in unsafe.err

        removed = await cli("files", "rm", sid, "models/weights bin")
        assert removed.code == 0, removed.err
        assert (await client.get(f"/api/servers/{sid}/files")).json()["count"] == 0
