"""The SQLite state file: format checks, migrations, atomic cycles, restart and catch-up."""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from leadflow_exporter import state as state_module
from leadflow_exporter.config import Config, MetricsConfig, PollConfig, StateConfig
from leadflow_exporter.daemon import Daemon
from leadflow_exporter.health import Health
from leadflow_exporter.ledger import (
    BUCKET_SECONDS,
    CycleBatch,
    FollowedCall,
    Ledger,
    SetTotals,
    Totals,
    bucket_of,
)
from leadflow_exporter.records import sid_key
from leadflow_exporter.simulator.app import parse_api_datetime
from leadflow_exporter.state import APPLICATION_ID, SCHEMA_VERSION, SQLiteStore, StateError
from leadflow_exporter.timeutil import SEVEN_DAYS
from tests.harness import harness, run_exporter
from tests.truth import assert_matches_truth

# A Tuesday morning, Eastern time.
BUSY = datetime(2026, 11, 17, 15, 0, tzinfo=UTC).timestamp()


def _totals(calls: int = 3) -> Totals:
    sets = {"Auto Insurance": SetTotals(talk_seconds=120.0, revenue=125_000, last_call_ts=BUSY)}
    return Totals({("Auto Insurance", "connected"): calls}, sets)


def _sids(names: Iterable[str]) -> dict[int, str]:
    """Seen sids as the ledger stages them for the store: dedup key -> sid."""
    return {sid_key(name): name for name in names}


def _numbered(first: int, count: int) -> dict[int, str]:
    return _sids(f"CA{i:030x}" for i in range(first, first + count))


THREE = ("CA11", "CA12", "CA13")


def _write(store: SQLiteStore, *, calls: int = 3, watermark: float = BUSY, **kw: object) -> None:
    args: dict[str, object] = {
        "totals": _totals(calls),
        "new_seen": {bucket_of(BUSY): _sids(THREE)},
        "expire_before_bucket": 0,
        "followed": {},
        "watermark": watermark,
        "extra_labels": (),
    }
    args.update(kw)
    store.write_cycle(**args)  # type: ignore[arg-type]


# -- the file ----------------------------------------------------------------------------------


def test_new_file_is_owner_only_wal_and_tagged(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    store = SQLiteStore(path)
    _write(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The WAL sidecar holds the same data: it must not be readable by others either.
    wal = path.with_name(path.name + "-wal")
    assert wal.exists()
    assert stat.S_IMODE(wal.stat().st_mode) & 0o077 == 0
    store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        assert int(version) == SCHEMA_VERSION
    finally:
        db.close()


def test_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "grafana.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE dashboards (id INTEGER PRIMARY KEY, title TEXT)")
    db.execute("INSERT INTO dashboards (title) VALUES ('LeadFlow')")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="not written by leadflow-exporter"):
        SQLiteStore(path)
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT title FROM dashboards").fetchall() == [("LeadFlow",)]
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0
    finally:
        db.close()
    assert path.read_bytes() == before


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    with pytest.raises(StateError, match="not a usable state file"):
        SQLiteStore(path)


def test_corrupted_state_file_is_refused_not_reset(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    for i in range(20):
        _write(
            store,
            calls=i,
            new_seen={bucket_of(BUSY) + i: _numbered(i * 1000, 1000)},
        )
    store.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    # Keep the header (so it still opens as our SQLite file) and smash every page after it.
    page_size = int.from_bytes(data[16:18], "big")
    for offset in range(page_size, len(data), 7):
        data[offset] = 0xA5
    path.write_bytes(bytes(data))
    with pytest.raises(StateError) as excinfo:
        store = SQLiteStore(path)
        store.load(())
    assert str(path) in str(excinfo.value)


def test_damage_deep_in_the_file_is_refused_when_loading(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    for i in range(20):
        _write(
            store,
            calls=i,
            new_seen={bucket_of(BUSY) + i: _numbered(i * 1000, 1000)},
        )
    store.close()
    data = bytearray(path.read_bytes())
    # The last pages hold seen sids: the file still opens, but cannot be read in full.
    for offset in range(len(data) - 5 * 4096, len(data), 7):
        data[offset] = 0xA5
    path.write_bytes(bytes(data))
    store = SQLiteStore(path)
    with pytest.raises(StateError, match="not a usable state file"):
        store.load(())
    store.close()


@pytest.mark.e2e
def test_the_daemon_refuses_to_start_on_a_bad_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    state.write_bytes(b"\x00garbage" * 1000)
    done = run_exporter(tmp_path, state)
    assert done.returncode == 1
    assert done.stderr.startswith("state.path: ")
    assert "not a usable state file" in done.stderr
    assert "Traceback" not in done.stderr
    assert state.read_bytes() == b"\x00garbage" * 1000


def test_a_parent_that_is_a_file_is_refused_by_name(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a directory\n")
    with pytest.raises(StateError) as refused:
        SQLiteStore(blocker / "state.db")
    assert str(refused.value) == (
        f"cannot create directory {blocker}: {blocker} exists but is not a directory"
    )
    # Deeper down, the error names the directory that could not be made and the file in the way.
    with pytest.raises(StateError) as refused:
        SQLiteStore(blocker / "sub" / "deeper" / "state.db")
    assert str(refused.value).startswith(f"cannot create directory {blocker / 'sub'}")
    assert str(refused.value).endswith(f": {blocker} exists but is not a directory")
    assert blocker.read_text() == "not a directory\n"


def test_a_directory_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    # Even root cannot make a directory in /proc: this fails the same way in CI, as root.
    where = Path(f"/proc/leadflow-exporter-test-{os.getpid()}")
    with pytest.raises(StateError, match=f"^cannot create directory {where}: "):
        SQLiteStore(where / "state.db")


def test_a_state_path_that_is_a_directory_is_refused_and_unlocked(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.mkdir()
    for _ in range(2):
        # The second time round proves the lock was let go, or it would say "in use".
        with pytest.raises(StateError) as refused:
            SQLiteStore(path)
        assert str(refused.value) == f"{path}: cannot open the state file (Is a directory)"


@pytest.mark.e2e
def test_the_cli_blames_state_path_not_the_listen_address(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("")
    done = run_exporter(tmp_path, blocker / "state.db")
    assert done.returncode == 1
    assert done.stderr == (
        f"state.path: cannot create directory {blocker}: {blocker} exists but is not a directory\n"
    )


@pytest.mark.e2e
def test_the_cli_still_blames_the_listen_address_for_a_failed_bind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(
            "api:\n  access_key: a\n  secret_access_key: b\n  rate_limit_key: c\n"
            f"state:\n  path: {tmp_path / 'state.db'}\nserver:\n  listen: 127.0.0.1:{port}\n"
        )
        done = subprocess.run(
            [sys.executable, "-m", "leadflow_exporter", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    # After the daemon's own "stopped" log line.
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"server.listen: cannot listen on 127.0.0.1:{port}: "), done.stderr
    assert "Traceback" not in done.stderr


def test_the_cli_blames_no_key_for_a_file_error_it_cannot_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from leadflow_exporter import cli, daemon

    async def fails(*_: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/else")

    monkeypatch.setattr(daemon, "run_daemon", fails)
    monkeypatch.setattr("leadflow_exporter.logsetup.configure_logging", lambda *_: None)
    config = tmp_path / "config.yaml"
    config.write_text("api:\n  access_key: a\n  secret_access_key: b\n  rate_limit_key: c\n")
    assert cli.main(["run", "--config", str(config)]) == 1
    assert capsys.readouterr().err == "cannot start: /somewhere/else: Permission denied\n"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    _write(store)
    store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(StateError, match="newer than this exporter"):
        SQLiteStore(path)


def test_migration_upgrades_an_old_file_and_keeps_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    _write(store, calls=7)
    store.close()

    target = SCHEMA_VERSION + 1
    monkeypatch.setattr(state_module, "SCHEMA_VERSION", target)
    monkeypatch.setitem(
        state_module._MIGRATIONS,
        target,
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT);"
        "INSERT INTO notes (text) VALUES ('migrated');",
    )
    store = SQLiteStore(path)
    snapshot = store.load(())
    assert snapshot is not None
    assert snapshot.totals.calls == {("Auto Insurance", "connected"): 7}
    assert snapshot.watermark == BUSY
    assert store._meta("schema_version") == str(target)
    store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT text FROM notes").fetchall() == [("migrated",)]
    finally:
        db.close()
    # Opening again runs nothing twice.
    store = SQLiteStore(path)
    store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM notes").fetchone()[0] == 1
    finally:
        db.close()


def test_failed_migration_leaves_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    _write(store, calls=5)
    store.close()
    target = SCHEMA_VERSION + 1
    monkeypatch.setattr(state_module, "SCHEMA_VERSION", target)
    monkeypatch.setitem(state_module._MIGRATIONS, target, "ALTER TABLE no_such_table ADD x;")
    with pytest.raises(StateError):
        SQLiteStore(path)
    monkeypatch.setattr(state_module, "SCHEMA_VERSION", target - 1)
    store = SQLiteStore(path)
    assert store._meta("schema_version") == str(target - 1)
    snapshot = store.load(())
    assert snapshot is not None
    assert snapshot.totals.calls == {("Auto Insurance", "connected"): 5}
    store.close()


def test_changed_extra_labels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    _write(store)
    store.close()
    store = SQLiteStore(path)
    with pytest.raises(StateError, match="extra_labels"):
        store.load(("affiliate",))
    store.close()
    # The refusal reaches the ledger too: a daemon would not start, and lets go of the file.
    store = SQLiteStore(path)
    with pytest.raises(StateError):
        Ledger(store, Health(), extra_labels=("offer",))
    store.close()
    refused = Config(
        state=StateConfig(path=str(path)), metrics=MetricsConfig(extra_labels=("offer",))
    )
    # The refusal (kept, with its traceback and so the store) must not keep the lock.
    with pytest.raises(StateError, match="extra_labels") as refusal:
        Daemon(refused)
    SQLiteStore(path).close()
    assert refusal.value


def test_a_changed_time_zone_is_refused(tmp_path: Path) -> None:
    # Seen sids are kept by the hour their call started, read in api.timezone: read in another
    # zone, the last overlap's calls would land in other hours and count again.
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    _write(store, timezone="America/New_York")
    store.close()
    store = SQLiteStore(path)
    try:
        assert store.load((), "America/New_York") is not None
        assert store.load(()) is not None  # no zone given: nothing to compare
        with pytest.raises(StateError, match=r"api\.timezone 'America/New_York'.*now has 'UTC'"):
            store.load((), "UTC")
    finally:
        store.close()
    zoned = Config(state=StateConfig(path=str(path)), api=replace(Config().api, timezone="UTC"))
    with pytest.raises(StateError, match=r"api\.timezone") as refusal:
        Daemon(zoned)
    assert refusal.value
    # A file written before the zone was recorded is taken as it is, and records it.
    legacy = tmp_path / "legacy.db"
    store = SQLiteStore(legacy)
    _write(store)
    store.close()
    ledger = Ledger(SQLiteStore(legacy), Health(), timezone="UTC")
    assert ledger.has_baseline
    ledger.commit(CycleBatch(), watermark=BUSY + 60, followed={}, active=None)
    ledger.close()
    store = SQLiteStore(legacy)
    try:
        with pytest.raises(StateError, match=r"api\.timezone 'UTC'"):
            store.load((), "America/New_York")
    finally:
        store.close()


def test_seen_sids_survive_a_process_with_another_hash_seed(tmp_path: Path) -> None:
    """Dedup keys are per-process str hashes; the file must hold the sids, not the keys."""
    path = tmp_path / "state.db"
    sid = "0a1b2c3d00010123456789abcdef0123"
    followed = {sid: FollowedCall(sid, sid_key(sid), "Auto Insurance", BUSY, BUSY, BUSY)}
    script = (
        "import sys\n"
        "from leadflow_exporter.records import sid_key\n"
        "from leadflow_exporter.state import SQLiteStore\n"
        "path, sid, bucket = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
        "store = SQLiteStore(path)\n"
        "if sys.argv[4] == 'write':\n"
        "    from leadflow_exporter.ledger import Totals\n"
        "    store.write_cycle(totals=Totals(), new_seen={bucket: {sid_key(sid): sid}},\n"
        "        expire_before_bucket=0, followed={}, watermark=1.0)\n"
        "else:\n"
        "    snapshot = store.load(())\n"
        "    assert sid_key(sid) in snapshot.seen[bucket], 'sid not seen after a restart'\n"
        "    print(sid_key(sid))\n"
        "store.close()\n"
    )
    keys = []
    for seed, mode in (("1", "write"), ("2", "read"), ("3", "read")):
        done = subprocess.run(
            [sys.executable, "-c", script, str(path), sid, str(bucket_of(BUSY)), mode],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        keys.append(done.stdout.strip())
    # The keys really differ between the processes, and the file does not hold any of them.
    assert keys[1] != keys[2]
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT bucket, sid FROM seen").fetchall() == [(bucket_of(BUSY), sid)]
    finally:
        db.close()
    # The followed calls' keys are made again at load too.
    store = SQLiteStore(path)
    _write(store, followed=followed)
    store.close()
    store = SQLiteStore(path)
    snapshot = store.load(())
    assert snapshot is not None
    assert snapshot.followed[sid].sid_key == sid_key(sid)
    store.close()


def test_state_without_watermark_loads_as_no_state(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    assert store.load(()) is None
    store.close()


# -- one transaction per cycle -----------------------------------------------------------------


class _Boom(RuntimeError):
    pass


def _exploding(sids: list[str], after: int) -> Iterator[str]:
    for i, sid in enumerate(sids):
        if i == after:
            raise _Boom("disk on fire")
        yield sid


class _ExplodingSids(dict[int, str]):
    """Staged sids whose reading fails half way, inside executemany."""

    def values(self) -> Iterator[str]:  # type: ignore[override]
        return _exploding(sorted(super().values()), after=len(self) // 2)


def test_a_cycle_that_fails_midway_leaves_the_previous_state(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    followed = {"s1": FollowedCall("s1", 1, "Auto Insurance", BUSY, BUSY, BUSY)}
    _write(store, calls=3, followed=followed)
    before = store.stats()
    with pytest.raises(_Boom):
        _write(
            store,
            calls=99,
            watermark=BUSY + 600,
            new_seen={bucket_of(BUSY) + 1: _ExplodingSids(_numbered(100, 100))},
            expire_before_bucket=bucket_of(BUSY) + 1,
            followed={},
        )
    # Nothing of the failed cycle is visible, in this connection or another one (a plain
    # connection: the store's lock keeps a second store off the file while this one is open).
    assert store.stats() == before
    snapshot = store.load(())
    assert snapshot is not None
    assert snapshot.totals.calls == {("Auto Insurance", "connected"): 3}
    assert snapshot.watermark == BUSY
    assert set(snapshot.followed) == {"s1"}
    assert snapshot.seen == {bucket_of(BUSY): set(_sids(THREE))}
    other = sqlite3.connect(path)
    try:
        meta = dict(other.execute("SELECT key, value FROM meta"))
        assert json.loads(meta["totals"]) == json.loads(json.dumps(_totals(3).to_json()))
        assert float(meta["watermark"]) == BUSY
        assert [r[0] for r in other.execute("SELECT sid FROM followed")] == ["s1"]
        assert other.execute("SELECT bucket, sid FROM seen ORDER BY sid").fetchall() == [
            (bucket_of(BUSY), sid) for sid in sorted(THREE)
        ]
    finally:
        other.close()
    # The store is usable afterwards: no transaction left open.
    _write(store, calls=4, watermark=BUSY + 60)
    store.close()
    store = SQLiteStore(path)
    snapshot = store.load(())
    assert snapshot is not None
    assert snapshot.totals.calls == {("Auto Insurance", "connected"): 4}
    store.close()


def test_ledger_keeps_its_totals_when_the_store_write_fails(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    _write(store, calls=3)
    ledger = Ledger(store, Health())
    batch = CycleBatch()
    batch.calls[("Auto Insurance", "connected")] += 5
    batch.new_seen[bucket_of(BUSY)] = _ExplodingSids(_numbered(500, 20))
    with pytest.raises(_Boom):
        ledger.commit(batch, watermark=BUSY + 60, followed={}, active=None)
    assert ledger.totals.calls == {("Auto Insurance", "connected"): 3}
    assert ledger.watermark == BUSY
    assert ledger.tracked() == 3


# -- bounded size ------------------------------------------------------------------------------


def test_pruning_keeps_the_file_bounded(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    rng = random.Random(5)
    retention_buckets = 6
    per_bucket = 2000
    hours = 60
    sizes: list[int] = []
    for hour in range(hours):
        bucket = bucket_of(BUSY) + hour
        # Random 32-hex-digit sids, the form the API uses.
        keys = _sids(f"{rng.getrandbits(128):032x}" for _ in range(per_bucket))
        _write(
            store,
            calls=hour,
            watermark=BUSY + hour * BUCKET_SECONDS,
            new_seen={bucket: keys},
            expire_before_bucket=bucket - retention_buckets + 1,
        )
        store._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        sizes.append(path.stat().st_size)
        assert store.stats()["seen"] == min(hour + 1, retention_buckets) * per_bucket
    # Once the retention window is full, freed pages are reused: the file stops growing
    # (a page or two of B-tree slack either way), although ten times as many sids were
    # written by the end as the file holds.
    full = max(sizes[retention_buckets + 2 : retention_buckets + 8])
    assert max(sizes[hours // 2 :]) <= full * 1.03
    assert sizes[-1] < 2 * sizes[retention_buckets - 1]
    snapshot = store.load(())
    assert snapshot is not None
    assert sorted(snapshot.seen) == [bucket_of(BUSY) + h for h in range(hours - 6, hours)]
    store.close()


# -- restart and catch-up against the simulator ------------------------------------------------


async def test_restart_resumes_totals_exactly(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with harness(BUSY, store=SQLiteStore(path), sim={"volume": 3.0}) as h:
        await h.cycle()
        await h.run_for(1200)
        saved = h.ledger.totals.to_json()
        tracked = h.ledger.tracked()
        followed = dict(h.ledger.followed)
        watermark = h.ledger.watermark
        stopped_at = h.clock.now()
        assert sum(h.ledger.totals.calls.values()) > 50
        h.ledger.close()
    async with harness(BUSY, store=SQLiteStore(path), sim={"volume": 3.0}) as h:
        h.clock.set(stopped_at)
        assert h.ledger.totals.to_json() == saved
        assert h.ledger.tracked() == tracked
        assert h.ledger.followed == followed
        assert h.ledger.watermark == watermark
        h.clock.advance(300)
        report = await h.cycle()
        assert report.ok and report.baseline == 0
        await h.run_for(600)
        await h.settle()
        assert_matches_truth(h.ledger, h.truth())
        h.ledger.close()


async def test_catch_up_after_ten_days_reads_seven_day_slices_within_the_budget(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    poll = PollConfig(interval_seconds=60, overlap_seconds=900, max_call_seconds=14400)
    async with harness(BUSY, poll=poll, store=SQLiteStore(path)) as h:
        await h.cycle()
        await h.run_for(1800)
        stopped_at = h.clock.now()
        watermark = h.ledger.watermark
        full_mark = h.ledger.full_mark
        assert watermark is not None
        h.ledger.close()

    downtime = 10 * 86400
    # The simulator's own limit is the published 100/min; the exporter budgets 90.
    async with harness(
        BUSY,
        poll=poll,
        store=SQLiteStore(path),
        api={"requests_per_minute": 90, "page_size": 250},
        sim={"rate_limit_per_minute": 100, "history_hours": 24},
    ) as h:
        h.clock.set(stopped_at + downtime)
        restarted_at = h.clock.now()
        queries: list[dict[str, str]] = []
        fetch = h.poller.client.fetch

        async def recording_fetch(query, *args):  # type: ignore[no-untyped-def]
            queries.append({"kind": query.kind, **query.params})
            return await fetch(query, *args)

        h.poller.client.fetch = recording_fetch  # type: ignore[method-assign]
        sent_at: list[float] = []
        next_number = h.sim.next_request_number

        def numbering() -> int:
            sent_at.append(h.sim.clock())
            return next_number()

        h.sim.next_request_number = numbering  # type: ignore[method-assign]

        report = await h.cycle()
        assert report.ok, report.errors
        assert report.baseline == 0

        history = [q for q in queries if q["kind"] == "history"]
        spans = [
            (parse_api_datetime(q["start_date"], "s"), parse_api_datetime(q["end_date"], "e"))
            for q in history
        ]
        assert len(spans) == 2
        assert all(q["active"] == "0" for q in history)
        # The first slice starts at the saved last full read of the overlap (at most the
        # watermark) minus the overlap, slices are contiguous, none is longer than 7 days,
        # and the last reaches past now.
        assert full_mark is not None and watermark - 600 <= full_mark <= watermark
        assert spans[0][0] == full_mark - poll.overlap_seconds
        assert all(end - start <= SEVEN_DAYS for start, end in spans[:-1])
        assert spans[0][1] == spans[1][0]
        assert spans[-1][1] >= restarted_at
        assert spans[-1][1] - spans[-1][0] <= SEVEN_DAYS + 3900
        # Paged through ten days of calls within the budget: never a 429, never more than
        # 90 requests in any minute.
        assert len(sent_at) > 90, "the catch-up should have needed more than a minute of budget"
        assert "429" not in h.sim.stats.as_json()["status_codes"]
        for i, t in enumerate(sent_at):
            in_window = [s for s in sent_at[i:] if s < t + 60]
            assert len(in_window) <= 90
        assert h.health.followups_abandoned == 0
        # Every call that finished while the exporter was down is counted, once.
        await h.run_for(300)
        assert_matches_truth(h.ledger, h.sim.truth(since=BUSY, until=h.clock.now()))
        assert h.ledger.watermark is not None and h.ledger.watermark >= restarted_at
        h.ledger.close()


async def test_no_saved_state_records_the_first_window_without_counting(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with harness(BUSY, store=SQLiteStore(path), sim={"volume": 3.0}) as h:
        report = await h.cycle()
        assert report.baseline > 0 and report.counted == 0
        assert sum(h.ledger.totals.calls.values()) == 0
        tracked = h.ledger.tracked()
        h.ledger.close()
    snapshot = SQLiteStore(path).load(())
    assert snapshot is not None
    assert sum(len(s) for s in snapshot.seen.values()) == tracked == report.baseline
    assert sum(snapshot.totals.calls.values()) == 0


async def test_an_overdue_followed_call_gets_one_last_look_then_is_given_up(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    async with harness(BUSY, store=SQLiteStore(path)) as h:
        await h.cycle()
        # A call followed before a long downtime that the API no longer knows.
        ghost = FollowedCall("ghost-sid", 42, "Medicare", BUSY - 20000, BUSY - 20000, BUSY - 20000)
        h.ledger.followed["ghost-sid"] = ghost
        report = await h.cycle(60)
        assert report.followups >= 1 and report.abandoned == 0
        assert "ghost-sid" in h.ledger.followed
        report = await h.cycle(60)
        assert report.abandoned == 1
        assert "ghost-sid" not in h.ledger.followed
        assert h.health.followups_abandoned == 1
        h.ledger.close()
    snapshot = SQLiteStore(path).load(())
    assert snapshot is not None and "ghost-sid" not in snapshot.followed
