"""The path rules and descriptor-walking file operations behind a server's /data API."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

import pytest

from core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from core.files import (
    MAX_NAME_BYTES,
    MAX_PATH_CHARS,
    UPLOAD_PREFIX,
    Upload,
    check_inside,
    delete_path,
    ensure_data_dir,
    list_files,
    open_file,
    owner_uid,
    remove_data_dir,
    split_path,
    upload_allowance,
)
from core.settings import Settings
from core.tenancy import server_data_dir


def _settings(state_dir: Path) -> Settings:
    return Settings.model_validate(
        {"state_dir": state_dir, "jwt_secret": "j" * 40, "secrets_key": "s" * 40, "_env_file": None}
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = server_data_dir(tmp_path, uuid.uuid4())
    path.mkdir(parents=True)
    return path


def _upload(root: Path, path: str, data: bytes, limit: int | None = None) -> None:
    with Upload(root, split_path(path)) as upload:
        upload.limit = limit
        upload.write(data)
        upload.commit()


def _files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# ---- split_path / check_inside -------------------------------------------------------------------


def test_split_path_accepts_relative_paths() -> None:
    assert split_path("a.txt") == ("a.txt",)
    assert split_path("models/v1/weights.bin") == ("models", "v1", "weights.bin")
    assert split_path(".hidden") == (".hidden",)
    assert split_path("ünïcode/файл") == ("ünïcode", "файл")
    assert split_path("x" * MAX_NAME_BYTES) == ("x" * MAX_NAME_BYTES,)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("../../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("..", "'..'"),
        ("a\\..\\b", "backslash"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("a\x7fb", "control"),
        ("a//b", "empty or '.'"),
        ("a/./b", "empty or '.'"),
        ("dir/", "empty or '.'"),
        ("x" * (MAX_NAME_BYTES + 1), f"{MAX_NAME_BYTES} bytes"),
        ("é" * 200, f"{MAX_NAME_BYTES} bytes"),
        ("a/" * 600 + "b", f"{MAX_PATH_CHARS} characters"),
        ("bad\udcffname", "UTF-8"),
    ],
)
def test_split_path_refuses_with_the_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        split_path(raw)
    assert reason in caught.value.message


def test_check_inside_refuses_links_that_leave_the_data_dir(root: Path) -> None:
    other = root.parent / str(uuid.uuid4())
    other.mkdir()
    (other / "secret.txt").write_text("another server's")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "neighbour").symlink_to(other)
    (root / "up").symlink_to("..")
    for path in ("passwd", "neighbour/secret.txt", "neighbour", "up/x"):
        with pytest.raises(InvalidInput, match="outside"):
            check_inside(root, split_path(path))
    (root / "sub").mkdir()
    (root / "alias").symlink_to("sub")
    assert check_inside(root, split_path("sub/new.txt")) == (root / "sub" / "new.txt").resolve()
    assert check_inside(root, split_path("alias/x")) == (root / "sub" / "x").resolve()


def test_upload_allowance_names_the_limit_that_applies() -> None:
    assert upload_allowance(10, 100, 0, 0)[0] == 10
    assert "FILES_MAX_BYTES" in upload_allowance(10, 100, 0, 0)[1]
    limit, message = upload_allowance(10, 100, 95, 0)
    assert limit == 5 and "FILES_QUOTA_BYTES" in message
    # The file being replaced frees its bytes.
    assert upload_allowance(10, 100, 95, 8)[0] == 10
    assert upload_allowance(10, 100, 150, 0)[0] == 0


# ---- operations on disk --------------------------------------------------------------------------


def test_upload_list_download_delete(root: Path) -> None:
    _upload(root, "a.txt", b"hello")
    _upload(root, "deep/er/b.bin", b"\x00\x01" * 1000)
    entries, total = list_files(root)
    assert [(e.path, e.size) for e in entries] == [("a.txt", 5), ("deep/er/b.bin", 2000)]
    assert total == 2005
    fh, entry = open_file(root, split_path("deep/er/b.bin"))
    with fh:
        assert fh.read() == b"\x00\x01" * 1000 and entry.size == 2000
    _upload(root, "a.txt", b"replaced")
    assert (root / "a.txt").read_bytes() == b"replaced"
    with pytest.raises(Conflict, match="not empty"):
        delete_path(root, split_path("deep"))
    delete_path(root, split_path("deep/er/b.bin"))
    delete_path(root, split_path("deep/er"))
    with pytest.raises(NotFound):
        delete_path(root, split_path("deep/er"))
    with pytest.raises(NotFound):
        open_file(root, split_path("deep/er/b.bin"))
    assert _files_in(root) == ["a.txt", "deep"]


def test_upload_over_the_limit_leaves_nothing_and_keeps_the_old_file(root: Path) -> None:
    _upload(root, "keep.txt", b"original")
    with pytest.raises(PayloadTooLarge):
        _upload(root, "keep.txt", b"x" * 11, limit=10)
    with pytest.raises(PayloadTooLarge):
        _upload(root, "new/file.txt", b"x" * 11, limit=10)
    assert (root / "keep.txt").read_bytes() == b"original"
    assert not (root / "new").exists()
    (root / "kept").mkdir()
    with pytest.raises(PayloadTooLarge):
        _upload(root, "kept/a/b/file.txt", b"x" * 11, limit=10)
    assert _files_in(root / "kept") == []
    assert not [p for p in root.rglob("*") if p.name.startswith(UPLOAD_PREFIX)]


def test_an_unfinished_upload_is_counted_not_listed_and_not_visible(root: Path) -> None:
    with Upload(root, split_path("big.bin")) as upload:
        upload.write(b"y" * 100)
        entries, total = list_files(root)
        assert entries == [] and total == 100
        assert not (root / "big.bin").exists()
    assert list_files(root) == ([], 0)


def test_symlink_to_etc_passwd_is_never_followed(root: Path) -> None:
    (root / "passwd").symlink_to("/etc/passwd")
    before = Path("/etc/passwd").read_bytes()
    with pytest.raises(InvalidInput, match="symbolic link"):
        open_file(root, split_path("passwd"))
    with pytest.raises(InvalidInput, match="symbolic link"):
        Upload(root, split_path("passwd"))
    with pytest.raises(InvalidInput, match="symbolic link"):
        delete_path(root, split_path("passwd"))
    assert Path("/etc/passwd").read_bytes() == before
    assert (root / "passwd").is_symlink()
    assert list_files(root) == ([], 0)


def test_symlinked_directory_to_another_server_is_never_entered(root: Path) -> None:
    other = root.parent / str(uuid.uuid4())
    other.mkdir()
    (other / "secret.txt").write_text("another server's")
    (root / "neighbour").symlink_to(other)
    # No realpath check first: the descriptor walk alone must refuse the link.
    with pytest.raises(InvalidInput, match="symbolic link"):
        open_file(root, split_path("neighbour/secret.txt"))
    with pytest.raises(InvalidInput, match="symbolic link"):
        Upload(root, split_path("neighbour/planted.txt"))
    with pytest.raises(InvalidInput, match="symbolic link"):
        Upload(root, split_path("neighbour/deeper/planted.txt"))
    with pytest.raises(InvalidInput, match="symbolic link"):
        delete_path(root, split_path("neighbour/secret.txt"))
    assert _files_in(other) == ["secret.txt"]
    assert list_files(root) == ([], 0)


def test_special_files_are_not_read(root: Path) -> None:
    os.mkfifo(root / "pipe")
    (root / "dir").mkdir()
    with pytest.raises(NotFound, match="not a regular file"):
        open_file(root, split_path("pipe"))  # would hang without O_NONBLOCK
    with pytest.raises(NotFound, match="directory"):
        open_file(root, split_path("dir"))
    with pytest.raises(Conflict, match="directory"):
        Upload(root, split_path("dir"))
    _upload(root, "file", b"x")
    with pytest.raises(Conflict, match="not a directory"):
        Upload(root, split_path("file/child"))
    assert list_files(root)[1] == 1


def test_missing_data_dir_is_empty_or_not_found(tmp_path: Path) -> None:
    root = tmp_path / "never-created"
    assert list_files(root) == ([], 0)
    with pytest.raises(NotFound):
        open_file(root, split_path("a"))
    with pytest.raises(NotFound):
        delete_path(root, split_path("a"))


def test_ensure_data_dir_mode_and_owner(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    server_id = uuid.uuid4()
    path = ensure_data_dir(settings, server_id, 7)
    assert path == server_data_dir(tmp_path, server_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    uid = owner_uid(settings, 7)
    if os.geteuid() == 0:
        assert uid == settings.sandbox_uid_base + 7
        assert path.stat().st_uid == uid and path.stat().st_gid == uid
        with Upload(path, split_path("sub/f.txt"), uid) as upload:
            upload.write(b"z")
            upload.commit()
        assert (path / "sub").stat().st_uid == uid and (path / "sub" / "f.txt").stat().st_uid == uid
    else:
        assert uid is None and path.stat().st_uid == os.geteuid()
    assert ensure_data_dir(settings, server_id, 7) == path  # again: no error, same result


def test_remove_data_dir_is_idempotent_and_stays_inside(tmp_path: Path) -> None:
    server_id = uuid.uuid4()
    root = ensure_data_dir(_settings(tmp_path), server_id, 0)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (root / "out").symlink_to(outside)
    (root / "f").symlink_to(outside / "keep.txt")
    locked = root / "locked" / "inner"
    locked.mkdir(parents=True)
    (locked / "x").write_text("x")
    locked.chmod(0o500)
    (root / "locked").chmod(0o500)
    assert remove_data_dir(tmp_path, server_id) is True
    assert not os.path.lexists(root)
    assert (outside / "keep.txt").read_text() == "keep"
    assert remove_data_dir(tmp_path, server_id) is False


def test_remove_data_dir_gets_through_directories_the_server_locked(tmp_path: Path) -> None:
    """Without root, permissions a server set on its own directories must not block the removal."""
    # Somewhere an unprivileged uid can reach (pytest's own temporary directories are private to root).
    base = Path(tempfile.mkdtemp(prefix="mcphost-files-")) if os.geteuid() == 0 else tmp_path
    try:
        _remove_locked_tree(base / "state")
    finally:
        if base != tmp_path:
            shutil.rmtree(base)


def _remove_locked_tree(state_dir: Path) -> None:
    server_id = uuid.uuid4()
    root = server_data_dir(state_dir, server_id)
    (root / "readonly" / "inner").mkdir(parents=True)
    (root / "readonly" / "inner" / "x").write_text("x")
    (root / "sealed" / "deeper").mkdir(parents=True)
    (root / "sealed" / "deeper" / "y").write_text("y")
    (root / "after").write_text("after")
    uid = os.geteuid() if os.geteuid() != 0 else 65534
    if os.geteuid() == 0:
        # Run the removal as an unprivileged owner, as a platform without root would.
        state_dir.parent.chmod(0o755)
        for path in [state_dir, *state_dir.rglob("*")]:
            os.chown(path, uid, uid)
    (root / "readonly" / "inner").chmod(0o500)
    (root / "readonly").chmod(0o500)
    (root / "sealed" / "deeper").chmod(0o000)
    (root / "sealed").chmod(0o000)
    if os.geteuid() == 0:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgid(uid)
                os.setuid(uid)
                code = 0 if remove_data_dir(state_dir, server_id) else 2
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    else:
        assert remove_data_dir(state_dir, server_id) is True
    assert not os.path.lexists(root)
