"""Every test file belongs to a room, so `make test-<room>` runs all of that room's tests."""

from __future__ import annotations

from pathlib import Path

from tests.markers import ROOM_OF, ROOMS, SLOW, markers_for

TESTS = Path(__file__).resolve().parent.parent


def test_every_test_file_has_one_room() -> None:
    files = {p.stem for kind in ("unit", "integration", "security") for p in (TESTS / kind).glob("test_*.py")}
    assert files - set(ROOM_OF) == set(), "add these files to tests/markers.py ROOMS"
    named = [name for names in ROOMS.values() for name in names]
    assert len(named) == len(set(named)), "a file is in two rooms"
    assert set(named) - files == set(), "ROOMS names files that do not exist"


def test_slow_tests_exist() -> None:
    for nodeid in SLOW:
        path, _, name = nodeid.partition("::")
        assert f"def {name}(" in (TESTS.parent / path).read_text(), nodeid


def test_markers_follow_kind_room_and_fixtures() -> None:
    assert markers_for(TESTS / "unit" / "test_replay.py", []) == ["unit", "workflows"]
    assert markers_for(TESTS / "security" / "test_gvisor.py", ["stack", "docker_engine"]) == [
        "docker",
        "integration",
        "runtimes",
        "security",
    ]
    assert "kube" in markers_for(TESTS / "integration" / "test_kubernetes.py", [])
