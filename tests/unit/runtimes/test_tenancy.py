"""Per-server uids and the ownership of a server's /data when its uid changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import tenancy
from core.tenancy import UID_SPAN, installer_uid, prepare_data_dir, slot_uid


def test_slots_give_distinct_uids_and_never_the_installers() -> None:
    base = 200000
    uids = [slot_uid(slot, base) for slot in range(UID_SPAN + 3)]
    assert len(set(uids)) == len(uids)
    assert installer_uid(base) not in uids
    assert uids[0] == base and uids[UID_SPAN - 1] == base + UID_SPAN - 1 and uids[UID_SPAN] == base + UID_SPAN + 1
    with pytest.raises(ValueError):
        slot_uid(-1, base)


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def _tree(root: Path, owner: int, outside: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("x")
    (root / "top").write_text("y")
    (root / "link").symlink_to(outside)
    (root / "sub" / "dirlink").symlink_to(outside.parent)
    for path in (root, root / "sub", root / "sub" / "f", root / "top"):
        os.chown(path, owner, owner)
    for link in (root / "link", root / "sub" / "dirlink"):
        os.chown(link, owner, owner, follow_symlinks=False)


@root_only
def test_a_changed_uid_gets_what_the_earlier_one_wrote_and_nothing_outside(tmp_path: Path) -> None:
    old, new, stranger = 260001, 260002, 260003
    outside = tmp_path / "host" / "secret"
    outside.parent.mkdir()
    outside.write_text("not the server's")
    os.chown(outside, old, old)
    os.chown(outside.parent, old, old)
    data = tmp_path / "data" / "srv"
    _tree(data, old, outside)
    (data / "theirs").write_text("z")
    os.chown(data / "theirs", stranger, stranger)

    prepare_data_dir(data, new)

    for path in (data, data / "sub", data / "sub" / "f", data / "top"):
        assert path.stat().st_uid == new and path.stat().st_gid == new, path
    assert (data / "link").lstat().st_uid == new
    # Links are changed themselves, never followed; what is not the earlier uid's is left alone.
    assert outside.stat().st_uid == old and outside.parent.stat().st_uid == old
    assert (data / "theirs").stat().st_uid == stranger


@root_only
def test_without_the_handover_the_server_could_not_read_its_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = 260011, 260012
    data = tmp_path / "data" / "srv"
    outside = tmp_path / "host" / "secret"
    outside.parent.mkdir()
    outside.write_text("x")
    _tree(data, old, outside)
    monkeypatch.setattr(tenancy, "_give_files", lambda *args: None)
    prepare_data_dir(data, new)
    assert data.stat().st_uid == new and (data / "sub" / "f").stat().st_uid == old


@root_only
def test_a_new_or_unchanged_directory_is_not_walked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[int] = []
    monkeypatch.setattr(tenancy, "_give_files", lambda fd, previous, uid: walked.append(previous))
    data = tmp_path / "data" / "srv"
    prepare_data_dir(data, 260021)
    prepare_data_dir(data, 260021)
    assert walked == []
