"""A hosted server's `/data` directory as seen from the platform: path checks, listing, upload, download, removal.

The directory is writable by the hosted server itself, so anything in it may be hostile: a symbolic link
to /etc/passwd or to another server's directory, a FIFO, a directory swapped for a link between two
calls. Every operation therefore walks the path one component at a time from an open descriptor of the
data directory, with O_NOFOLLOW, and never hands a path string to a call that would resolve it again.
Symbolic links are never followed, listed, read, replaced or removed.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from core.errors import Conflict, DomainError, InvalidInput, NotFound, PayloadTooLarge
from core.settings import Settings
from core.tenancy import prepare_data_dir, server_data_dir, slot_uid

MAX_PATH_CHARS = 1024
MAX_NAME_BYTES = 255
# Uploads are written under this name next to their target and renamed into place when complete.
UPLOAD_PREFIX = ".mcphost-upload-"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    modified_at: datetime


def _entry(path: str, st: os.stat_result) -> FileEntry:
    return FileEntry(path=path, size=st.st_size, modified_at=datetime.fromtimestamp(st.st_mtime, UTC))


# ---- pure path checks ----------------------------------------------------------------------------


def split_path(raw: str) -> tuple[str, ...]:
    """The components of a client-given path relative to a data directory; InvalidInput says why not."""
    if not raw:
        raise InvalidInput("the file path is empty")
    if len(raw) > MAX_PATH_CHARS:
        raise InvalidInput(f"the file path is longer than {MAX_PATH_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise InvalidInput("the file path contains a NUL or control character")
    if "\\" in raw:
        raise InvalidInput("the file path contains a backslash; separate directories with '/'")
    if raw.startswith("/"):
        raise InvalidInput("the file path is absolute; give it relative to /data")
    parts = tuple(raw.split("/"))
    for part in parts:
        if part == "..":
            raise InvalidInput("the file path contains a '..' component")
        if part in ("", "."):
            raise InvalidInput("the file path contains an empty or '.' component ('//', './' or a trailing '/')")
        try:
            encoded = part.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput("the file path is not valid UTF-8") from None
        if len(encoded) > MAX_NAME_BYTES:
            raise InvalidInput(f"a component of the file path is longer than {MAX_NAME_BYTES} bytes")
    return parts


def check_inside(root: Path, parts: tuple[str, ...]) -> Path:
    """The path the components name under root once symlinks are followed; InvalidInput if that leaves root.

    The operations below never follow links at all; this check is what lets a refusal say why."""
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base, target]) != base:
        raise InvalidInput(f"{'/'.join(parts)!r} resolves outside the server's data directory")
    return Path(target)


def upload_allowance(max_bytes: int, quota_bytes: int, used_bytes: int, replaced_bytes: int) -> tuple[int, str]:
    """How many bytes one upload may write, and what to say when it writes more.

    The file it replaces stops counting against the quota once the new one is in place."""
    room = max(quota_bytes - (used_bytes - replaced_bytes), 0)
    if room < max_bytes:
        return room, (
            f"the server's storage quota (FILES_QUOTA_BYTES, {quota_bytes} bytes) would be exceeded: "
            f"{used_bytes - replaced_bytes} bytes are in use, so this file may have at most {room}; "
            "delete files to make room"
        )
    return max_bytes, f"the file is larger than the limit of one upload (FILES_MAX_BYTES, {max_bytes} bytes)"


# ---- the data directory --------------------------------------------------------------------------


def owner_uid(settings: Settings, uid_slot: int) -> int | None:
    """The uid files must belong to so the sandboxed server (of that recorded uid slot) can use them; None
    when not running as root (the files then keep the platform's own uid, which an unsandboxed server runs as)."""
    if os.geteuid() != 0:
        return None
    return slot_uid(uid_slot, settings.sandbox_uid_base)


def ensure_data_dir(settings: Settings, server_id: str | uuid.UUID, uid_slot: int) -> Path:
    """Create the server's data directory if needed: mode 0700, owned by its sandbox uid when root."""
    return prepare_data_dir(server_data_dir(settings.state_dir, server_id), owner_uid(settings, uid_slot))


def remove_data_dir(state_dir: Path, server_id: str | uuid.UUID) -> bool:
    """Delete the server's data directory and everything in it; False when there was none.

    rmtree works on descriptors and does not follow links, so nothing outside the directory goes."""
    path = server_data_dir(state_dir, server_id)
    if not os.path.lexists(path):
        return False
    if path.is_symlink():
        path.unlink()
        return True

    def unblock(_func: object, failed: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        # Without root, a directory the server made read-only blocks removal; owning it is enough to fix
        # that. The server's instances are gone by the time its directory is removed.
        if isinstance(exc_info[1], FileNotFoundError):
            return  # already removed by a recursive call below
        if not isinstance(exc_info[1], PermissionError):
            raise exc_info[1]
        os.chmod(os.path.dirname(failed), 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
            shutil.rmtree(failed, onerror=unblock)
        else:
            os.unlink(failed)

    try:
        shutil.rmtree(path, onerror=unblock)
    except FileNotFoundError:
        pass  # removed meanwhile by another attempt
    return True


def _open_root(root: Path) -> int:
    try:
        return os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise NotFound("the server has no files yet") from None


def _symlink_or_not_dir(dir_fd: int, name: str, display: str, create: bool) -> DomainError:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return NotFound(f"{display!r} does not exist")
    if stat.S_ISLNK(st.st_mode):
        return InvalidInput(f"{display!r} is a symbolic link; the files API does not follow links")
    if create:
        return Conflict(f"{display!r} is a file, not a directory")
    return NotFound(f"{display!r} is not a directory")


def _open_dirs(
    root_fd: int,
    parts: tuple[str, ...],
    *,
    create: bool,
    owner: int | None = None,
    created: list[tuple[int, str]] | None = None,
) -> int:
    """A descriptor of the directory the components name, walked without following any link.

    Directories it makes are added to `created` as (descriptor of the parent, name), for undoing."""
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            display = "/".join(parts[: i + 1])
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise NotFound(f"{display!r} does not exist") from None
                try:
                    os.mkdir(part, dir_fd=fd)
                    made = True
                except FileExistsError:
                    made = False
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    raise _symlink_or_not_dir(fd, part, display, create) from None
                if made and created is not None:
                    created.append((os.dup(fd), part))
                if made and owner is not None:
                    os.fchown(child, owner, owner)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                raise _symlink_or_not_dir(fd, part, display, create) from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


# ---- listing -------------------------------------------------------------------------------------


def list_files(root: Path) -> tuple[list[FileEntry], int]:
    """Every regular file under root (sorted by path), and the bytes all of them take.

    In-progress uploads count towards the total but are not listed; links and special files are neither."""
    if not os.path.isdir(root) or os.path.islink(root):
        return [], 0
    entries: list[FileEntry] = []
    total = 0
    # fwalk keeps a descriptor per directory and refuses to descend into links, even ones swapped in mid-walk.
    for dirpath, _dirs, names, dir_fd in os.fwalk(root, follow_symlinks=False):
        rel = os.path.relpath(dirpath, root)
        for name in names:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            total += st.st_size
            path = name if rel == "." else f"{rel}/{name}"
            if name.startswith(UPLOAD_PREFIX):
                continue
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                continue  # a name the server wrote in another encoding: counted, not addressable here
            entries.append(_entry(path, st))
    entries.sort(key=lambda e: e.path)
    return entries, total


def used_bytes(root: Path) -> int:
    return list_files(root)[1]


# ---- download and delete -------------------------------------------------------------------------


def _open_parent(root: Path, parts: tuple[str, ...]) -> int:
    """The directory holding the path's last part, reached without following any link."""
    root_fd = _open_root(root)
    try:
        return _open_dirs(root_fd, parts[:-1], create=False)
    finally:
        os.close(root_fd)


def open_file(root: Path, parts: tuple[str, ...]) -> tuple[BinaryIO, FileEntry]:
    """The file opened for reading (never through a link, never a FIFO or device) and its metadata."""
    display = "/".join(parts)
    parent = _open_parent(root, parts)
    try:
        try:
            # O_NONBLOCK: opening a FIFO the server planted must not hang a worker thread.
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            raise NotFound(f"{display!r} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidInput(f"{display!r} is a symbolic link; the files API does not follow links") from None
            if exc.errno == errno.ENXIO:
                raise NotFound(f"{display!r} is not a regular file") from None
            raise
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise NotFound(f"{display!r} is {kind}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0), _entry(display, st)


def delete_path(root: Path, parts: tuple[str, ...]) -> None:
    """Remove a file, or a directory that is empty (a non-empty one is a Conflict: nothing is removed
    recursively by one request)."""
    display = "/".join(parts)
    parent = _open_parent(root, parts)
    try:
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise NotFound(f"{display!r} does not exist") from None
        if stat.S_ISLNK(st.st_mode):
            raise InvalidInput(f"{display!r} is a symbolic link; the files API does not follow links")
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            raise NotFound(f"{display!r} does not exist") from None
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise Conflict(f"directory {display!r} is not empty; delete the files in it first") from None
            if exc.errno in (errno.ENOTDIR, errno.EISDIR):
                raise Conflict(f"{display!r} changed while it was being deleted; try again") from None
            raise
    finally:
        os.close(parent)


# ---- upload --------------------------------------------------------------------------------------


class Upload:
    """A file being written next to its target under a temporary name, renamed over it on commit.

    Until commit nothing at the target changes; abort (or leaving the `with` block on an error) removes
    the partial file. Creates the missing directories on the way, owned by `owner` when given."""

    def __init__(self, root: Path, parts: tuple[str, ...], owner: int | None = None) -> None:
        self.display = "/".join(parts)
        self.name = parts[-1]
        self.owner = owner
        self.size = 0
        self.limit: int | None = None
        self.too_large = "the file is too large"
        self._tmp = UPLOAD_PREFIX + secrets.token_hex(8)
        self._fd: int | None = None
        self._committed = False
        self._parent = -1
        self._created: list[tuple[int, str]] = []
        root_fd = _open_root(root)
        try:
            self._parent = _open_dirs(root_fd, parts[:-1], create=True, owner=owner, created=self._created)
            self.replaced_bytes = self._existing_size()
            self._fd = os.open(
                self._tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o666,
                dir_fd=self._parent,
            )
        except BaseException:
            self.abort()
            raise
        finally:
            os.close(root_fd)

    def _existing_size(self) -> int:
        try:
            st = os.stat(self.name, dir_fd=self._parent, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        if stat.S_ISLNK(st.st_mode):
            raise InvalidInput(f"{self.display!r} is a symbolic link; the files API does not follow links")
        if stat.S_ISDIR(st.st_mode):
            raise Conflict(f"{self.display!r} is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise Conflict(f"{self.display!r} is not a regular file")
        return st.st_size

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write(self, chunk: bytes) -> None:
        assert self._fd is not None, "upload already finished"
        if self.limit is not None and self.size + len(chunk) > self.limit:
            raise PayloadTooLarge(self.too_large)
        view = memoryview(chunk)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(chunk)

    def commit(self) -> FileEntry:
        assert self._fd is not None, "upload already finished"
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
            if self.owner is not None:
                os.fchown(fd, self.owner, self.owner)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            # rename replaces whatever now has the name, a link included, without following it.
            os.rename(self._tmp, self.name, src_dir_fd=self._parent, dst_dir_fd=self._parent)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise Conflict(f"{self.display!r} is a directory") from None
            raise
        self._committed = True
        os.fsync(self._parent)
        self._close_parent()
        return _entry(self.display, st)

    def abort(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self._remove_tmp()
        self._close_parent()

    def _remove_tmp(self) -> None:
        if self._committed or self._parent < 0:
            return
        try:
            os.unlink(self._tmp, dir_fd=self._parent)
        except FileNotFoundError:
            pass

    def _close_parent(self) -> None:
        if self._parent >= 0:
            os.close(self._parent)
            self._parent = -1
        # A refused upload takes back the directories it made, unless something else is in them by now.
        for fd, name in reversed(self._created):
            if not self._committed:
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError:
                    pass
            os.close(fd)
        self._created = []
