"""Every test file belongs to a room, so `make test-<room>` runs all of that room's tests: unit and
integration tests by the directory they sit in, security tests by tests/markers.py SECURITY_ROOMS."""

from __future__ import annotations

from tests.markers import FILE_NEEDS, KINDS, ROOMS, SECURITY_ROOMS, SLOW, TESTS, markers_for, place


def test_every_unit_and_integration_file_sits_in_a_room() -> None:
    for kind in ("unit", "integration"):
        files = sorted((TESTS / kind).rglob("test_*.py"))
        assert files, kind
        for path in files:
            where = path.relative_to(TESTS)
            assert len(where.parts) == 3 and where.parts[1] in ROOMS, f"move {where} to tests/{kind}/<room>/"
            assert place(path) == (kind, where.parts[1]), where


def test_room_directories_are_packages_named_after_rooms() -> None:
    # A package each, so two files of the same name in different rooms or kinds import apart.
    for kind in ("unit", "integration"):
        for directory in (TESTS / kind).iterdir():
            if directory.is_dir() and directory.name != "__pycache__":
                assert directory.name in ROOMS, f"tests/{kind}/{directory.name} is not a room"
                assert (directory / "__init__.py").is_file(), f"tests/{kind}/{directory.name}/__init__.py"


def test_every_security_file_has_one_room() -> None:
    files = {p.stem for p in (TESTS / "security").rglob("test_*.py")}
    assert {p.stem for p in (TESTS / "security").glob("test_*.py")} == files, "tests/security/ stays flat"
    assert files - set(SECURITY_ROOMS) == set(), "add these files to tests/markers.py SECURITY_ROOMS"
    assert set(SECURITY_ROOMS) - files == set(), "SECURITY_ROOMS names files that do not exist"
    assert set(SECURITY_ROOMS.values()) <= set(ROOMS)


def test_file_needs_name_one_existing_file_each() -> None:
    for stem in FILE_NEEDS:
        assert len([p for kind in KINDS for p in (TESTS / kind).rglob(f"{stem}.py")]) == 1, stem


def test_slow_tests_exist() -> None:
    for nodeid in SLOW:
        path, _, name = nodeid.partition("::")
        assert f"def {name}(" in (TESTS.parent / path).read_text(), nodeid


def test_markers_follow_kind_room_and_fixtures() -> None:
    assert markers_for(TESTS / "unit" / "workflows" / "test_replay.py", []) == ["unit", "workflows"]
    assert markers_for(TESTS / "security" / "test_gvisor.py", ["stack", "docker_engine"]) == [
        "docker",
        "integration",
        "runtimes",
        "security",
    ]
    assert "kube" in markers_for(TESTS / "integration" / "runtimes" / "test_kubernetes.py", [])
    assert markers_for(TESTS / "integration" / "api" / "test_files.py", ["stack"]) == ["api", "integration"]
    # Outside a room directory a file has no room, and `make test-<room>` would miss it.
    assert markers_for(TESTS / "unit" / "test_stray.py", []) == ["unit"]
    assert markers_for(TESTS / "security" / "test_unlisted.py", []) == ["integration", "security"]
