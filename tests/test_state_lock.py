"""One process per state file: the lock that keeps a second exporter off a file in use."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from leadflow_exporter.config import Config, StateConfig
from leadflow_exporter.daemon import open_store
from leadflow_exporter.ledger import MemoryStore, Totals
from leadflow_exporter.state import SQLiteStore, StateError, lock_path_for
from tests.harness import run_exporter

# Opens the store, says so on stdout, then holds it until killed.
HOLDER = (
    "import sys, time\n"
    "from leadflow_exporter.state import SQLiteStore\n"
    "store = SQLiteStore(sys.argv[1])\n"
    "print('open', flush=True)\n"
    "time.sleep(120)\n"
)


def in_use(path: Path, pid: int) -> str:
    return (
        f"state file {path} is in use by another leadflow-exporter process (pid {pid}); "
        "two exporters must not share one state file"
    )


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that has the state file open."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "state.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == "open\n", child.stderr.read() if child.stderr else line
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def test_a_second_store_in_the_same_process_is_refused(tmp_path: Path) -> None:
    # flock belongs to the open file description, so a second open in one process conflicts.
    path = tmp_path / "state.db"
    first = SQLiteStore(path)
    try:
        with pytest.raises(StateError) as refused:
            SQLiteStore(path)
        assert str(refused.value) == in_use(path, os.getpid())
        # The first store is still the owner and still works.
        assert first.load(()) is None
        assert first.stats() == {"seen": 0, "followed": 0}
    finally:
        first.close()


def test_the_lock_file_is_owner_only_and_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    try:
        lock = lock_path_for(path)
        assert lock == tmp_path / "state.db.lock"
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        assert lock.read_text() == f"{os.getpid()}\n"
    finally:
        store.close()


def test_a_stale_pid_in_the_lock_file_is_replaced_not_appended(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    lock_path_for(path).write_text("99999999999999999999\n")
    store = SQLiteStore(path)
    try:
        assert lock_path_for(path).read_text() == f"{os.getpid()}\n"
    finally:
        store.close()


def test_close_releases_the_lock_and_keeps_the_lock_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    # Deleting the lock file would race with a new owner; it stays.
    assert lock_path_for(path).exists()
    again = SQLiteStore(path)
    try:
        assert again.load(()) is None
    finally:
        again.close()
    fd = os.open(lock_path_for(path), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the close left it locked
    finally:
        os.close(fd)


def test_the_lock_is_taken_before_the_database_is_touched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    fd = os.open(lock_path_for(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StateError, match="is in use by another leadflow-exporter process;"):
            SQLiteStore(path)
        # No pid in the lock file: the message says so by leaving it out. And the refused
        # store did not create (or open) the database.
        assert not path.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db.lock"]
    finally:
        os.close(fd)


def test_a_store_refused_for_its_file_lets_go_of_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(StateError, match="not a usable state file") as first:
        SQLiteStore(path)
    # `first` keeps the refused store's frames alive: only an explicit release frees the lock.
    with pytest.raises(StateError, match="not a usable state file") as second:
        SQLiteStore(path)
    assert str(second.value) == str(first.value)


def test_a_lock_file_that_cannot_be_opened_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    lock_path_for(path).mkdir()
    with pytest.raises(StateError) as refused:
        SQLiteStore(path)
    assert str(refused.value) == (
        f"{lock_path_for(path)}: cannot open the state lock file (Is a directory)"
    )
    assert not path.exists()


def test_no_state_path_means_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config(state=StateConfig(path=""))
    stores = [open_store(config), open_store(config)]
    assert all(isinstance(store, MemoryStore) for store in stores)
    assert list(tmp_path.iterdir()) == []


def test_a_store_held_by_another_process_is_refused_with_its_pid(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    path = tmp_path / "state.db"
    with pytest.raises(StateError) as refused:
        SQLiteStore(path)
    assert str(refused.value) == in_use(path, holder.pid)
    assert holder.poll() is None


@pytest.mark.e2e
def test_the_cli_refuses_to_start_on_a_state_file_in_use(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    state = tmp_path / "state.db"
    done = run_exporter(tmp_path, state)
    assert done.returncode == 1
    assert done.stderr == f"state.path: {in_use(state, holder.pid)}\n"
    assert "Traceback" not in done.stderr
    # The holder is unaffected and still owns the file.
    assert holder.poll() is None
    assert lock_path_for(state).read_text() == f"{holder.pid}\n"


def test_a_killed_holder_leaves_no_lock_behind(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    path = tmp_path / "state.db"
    with pytest.raises(StateError, match=re.escape(f"(pid {holder.pid})")):
        SQLiteStore(path)
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=10) == -signal.SIGKILL
    # The dead holder's pid is still in the file; the kernel dropped its lock all the same.
    assert lock_path_for(path).read_text() == f"{holder.pid}\n"
    store = SQLiteStore(path)
    try:
        assert store.load(()) is None
        assert lock_path_for(path).read_text() == f"{os.getpid()}\n"
    finally:
        store.close()


def test_a_symlink_to_a_state_file_in_use_takes_the_same_lock(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    link = tmp_path / "link.db"
    store = SQLiteStore(path)
    try:
        link.symlink_to(path)
        with pytest.raises(StateError, match="in use by another leadflow-exporter process"):
            SQLiteStore(link)
        assert lock_path_for(link) == lock_path_for(path)
    finally:
        store.close()


def test_close_waits_for_a_write_under_way_in_another_thread(tmp_path: Path) -> None:
    # The poller writes from a worker thread; a stop must not close the database under it.
    store = SQLiteStore(tmp_path / "state.db")
    inside = threading.Event()
    release = threading.Event()

    class SlowSids(dict[int, str]):
        def values(self) -> Iterator[str]:  # type: ignore[override]
            inside.set()
            assert release.wait(30)
            yield from super().values()

    writer = threading.Thread(
        target=store.write_cycle,
        kwargs={
            "totals": Totals(),
            "new_seen": {1: SlowSids({11: "sid-a", 12: "sid-b"})},
            "expire_before_bucket": 0,
            "followed": {},
            "watermark": 3600.0,
        },
    )
    writer.start()
    assert inside.wait(30)
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close() ran while a write was under way"
    release.set()
    writer.join(30)
    closer.join(30)
    assert not closer.is_alive()
    reopened = SQLiteStore(tmp_path / "state.db")
    try:
        assert reopened.stats()["seen"] == 2
    finally:
        reopened.close()
