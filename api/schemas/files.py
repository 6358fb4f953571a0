"""Files in a server's /data."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class FileInfo(BaseModel):
    path: str = Field(description="Relative to the server's /data, '/'-separated")
    size: int = Field(description="Bytes")
    modified_at: datetime


class FileList(BaseModel):
    count: int
    total_bytes: int = Field(description="Bytes all files in /data take, uploads in progress included")
    quota_bytes: int = Field(description="FILES_QUOTA_BYTES: what uploads may fill /data up to")
    max_file_bytes: int = Field(description="FILES_MAX_BYTES: the largest file one upload may store")
    data: list[FileInfo]
