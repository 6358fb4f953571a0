"""A server's `/data` directory over HTTP: list, upload, download and delete its files.

Uploads are the raw request body, streamed to a temporary file next to the target and renamed into
place once complete, so a reader never sees half a file. Directories are created as needed and deleted
only when empty. Symbolic links (a hosted server can make them) are never followed: a path through one
is refused with 422. The path logic lives in core.files.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from email.utils import format_datetime
from typing import Any, BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import ClientDisconnect

from api.deps import CurrentUser, SessionDep, StateDep, load_server
from api.schemas.common import ErrorBody
from api.schemas.files import FileInfo, FileList
from core.errors import Conflict, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from core.files import (
    FileEntry,
    Upload,
    check_inside,
    delete_path,
    ensure_data_dir,
    list_files,
    open_file,
    owner_uid,
    split_path,
    upload_allowance,
)
from core.models import User
from core.tenancy import server_data_dir

router = APIRouter(prefix="/api/servers", tags=["files"])

CHUNK_BYTES = 256 * 1024

_ERRORS = {
    401: "Not logged in, or the token is invalid or expired",
    404: "No such server (another user's server is reported the same way), or no such file",
    409: "The path is taken by a directory (or by a file where a directory is needed), a directory to "
    "delete is not empty, or the server is being deleted",
    413: "The file is larger than FILES_MAX_BYTES, or would take the server's files past FILES_QUOTA_BYTES",
    415: "The body is multipart form data: send the file itself as the request body",
    422: "The path is refused (absolute, '..', backslash, control characters, too long, a symbolic link or "
    "outside the data directory), or the server id is not a UUID",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": _ERRORS[code]} for code in codes}


def _info(entry: FileEntry) -> FileInfo:
    return FileInfo(path=entry.path, size=entry.size, modified_at=entry.modified_at)


async def _visible_server(session: AsyncSession, user: User, server_id: uuid.UUID) -> tuple[uuid.UUID, str, int]:
    server = await load_server(session, user, server_id)
    found = (server.id, server.status, server.uid_slot)
    # Transfers can be slow; the database connection goes back to the pool before they start.
    await session.commit()
    return found


@router.get("/{server_id}/files", response_model=FileList, responses=_errors(401, 404, 422))
async def list_server_files(server_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep) -> FileList:
    """Every file in the server's /data, recursively (links and special files are left out), with the
    bytes they take and the limits uploads are held to."""
    sid, _, _ = await _visible_server(session, user, server_id)
    entries, total = await asyncio.to_thread(list_files, server_data_dir(state.settings.state_dir, sid))
    return FileList(
        count=len(entries),
        total_bytes=total,
        quota_bytes=state.settings.files_quota_bytes,
        max_file_bytes=state.settings.files_max_bytes,
        data=[_info(e) for e in entries],
    )


async def _drain(stream: AsyncIterator[bytes], budget: int) -> None:
    """Read and discard what the client is still sending, up to a bound, so it gets to read the
    refusal instead of a reset connection; past the bound the connection is simply closed."""
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > budget:
                return
    except ClientDisconnect:
        return


@router.post(
    "/{server_id}/files/{path:path}",
    status_code=status.HTTP_201_CREATED,
    response_model=FileInfo,
    responses=_errors(401, 404, 409, 413, 415, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_file(
    server_id: uuid.UUID, path: str, request: Request, user: CurrentUser, session: SessionDep, state: StateDep
) -> FileInfo:
    """Store the request body as the file at `path` in the server's /data, replacing any file there.
    Missing directories are created. The file appears only once it is complete."""
    sid, server_status, uid_slot = await _visible_server(session, user, server_id)
    parts = split_path(path)
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        raise UnsupportedMediaType(
            "send the file itself as the request body (Content-Type: application/octet-stream), "
            "e.g. curl --data-binary @FILE; multipart form uploads are not accepted"
        )
    if server_status == "deleting":
        raise Conflict("the server is being deleted")
    settings = state.settings
    root = await asyncio.to_thread(ensure_data_dir, settings, sid, uid_slot)
    await asyncio.to_thread(check_inside, root, parts)
    used = (await asyncio.to_thread(list_files, root))[1]
    upload = await asyncio.to_thread(Upload, root, parts, owner_uid(settings, uid_slot))
    with upload:  # removes the partial file unless committed
        upload.limit, upload.too_large = upload_allowance(
            settings.files_max_bytes, settings.files_quota_bytes, used, upload.replaced_bytes
        )
        stream = request.stream()
        try:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > upload.limit:
                raise PayloadTooLarge(upload.too_large)
            async for chunk in stream:
                if chunk:
                    await asyncio.to_thread(upload.write, chunk)
        except PayloadTooLarge:
            await _drain(stream, settings.files_max_bytes)
            raise
        except ClientDisconnect:
            raise InvalidInput("the upload was interrupted before the body was complete") from None
        entry = await asyncio.to_thread(upload.commit)
    return _info(entry)


async def _read(fh: BinaryIO, size: int) -> AsyncIterator[bytes]:
    # At most the size announced in Content-Length, even if the server appends meanwhile.
    try:
        remaining = size
        while remaining > 0:
            chunk = await asyncio.to_thread(fh.read, min(CHUNK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        fh.close()


def _content_disposition(name: str) -> str:
    quoted = quote(name)
    if quoted == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename*=utf-8''{quoted}"


@router.get(
    "/{server_id}/files/{path:path}",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The file's bytes",
        },
        **_errors(401, 404, 422),
    },
)
async def download_file(
    server_id: uuid.UUID, path: str, user: CurrentUser, session: SessionDep, state: StateDep
) -> StreamingResponse:
    """The bytes of the file at `path` in the server's /data."""
    sid, _, _ = await _visible_server(session, user, server_id)
    parts = split_path(path)
    root = server_data_dir(state.settings.state_dir, sid)
    await asyncio.to_thread(check_inside, root, parts)
    fh, entry = await asyncio.to_thread(open_file, root, parts)
    headers = {
        "Content-Length": str(entry.size),
        "Content-Disposition": _content_disposition(parts[-1]),
        "Last-Modified": format_datetime(entry.modified_at, usegmt=True),
    }
    return StreamingResponse(_read(fh, entry.size), media_type="application/octet-stream", headers=headers)


@router.delete(
    "/{server_id}/files/{path:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_errors(401, 404, 409, 422),
)
async def delete_file(server_id: uuid.UUID, path: str, user: CurrentUser, session: SessionDep, state: StateDep) -> None:
    """Delete the file at `path`, or the directory at `path` if it is empty (409 if it is not: nothing
    is removed recursively)."""
    sid, _, _ = await _visible_server(session, user, server_id)
    parts = split_path(path)
    root = server_data_dir(state.settings.state_dir, sid)
    await asyncio.to_thread(check_inside, root, parts)
    await asyncio.to_thread(delete_path, root, parts)
