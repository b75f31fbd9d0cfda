"""The ledger on disk: an SQLite file written once per poll cycle, in one transaction."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any

from leadflow_exporter.ledger import FollowedCall, Snapshot, StagedSids, Totals
from leadflow_exporter.records import sid_key

SCHEMA_VERSION = 1
APPLICATION_ID = 0x4C464C57  # "LFLW": tells our file apart from any other SQLite database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The sids themselves: the in-memory dedup keys are per-process hashes, made again at load.
-- Clustered by hour bucket, so expiry deletes a range and needs no second index.
CREATE TABLE IF NOT EXISTS seen (
    bucket INTEGER NOT NULL,
    sid TEXT NOT NULL,
    PRIMARY KEY (bucket, sid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS followed (
    sid TEXT PRIMARY KEY,
    set_name TEXT NOT NULL,
    call_ts REAL NOT NULL,
    first_seen REAL NOT NULL,
    last_active REAL NOT NULL
);
"""

# Each entry upgrades the schema from version N-1 to N; version 1 is the first.
_MIGRATIONS: dict[int, str] = {}


# SQLite's primary result codes for a file it may not open or write, as against a damaged one.
_CANNOT_OPEN = frozenset({sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN})


class StateError(Exception):
    """The state file cannot be used; the daemon must not start from zero silently."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def lock_path_for(path: Path) -> Path:
    # Beside the real file: two paths to one database (a symlink) must take one lock.
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".lock")


def _holder_pid(fd: int) -> int | None:
    # The holder writes its pid only after taking the lock, so there may be nothing yet.
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _lock_state_file(path: Path) -> int:
    """Take the state file's lock for this process's life, or refuse.

    Two exporters on one file would each count the same calls and overwrite each other's
    totals. The lock is a flock on a sidecar file, not on the database: SQLite keeps POSIX
    locks on its own file, and closing any descriptor of that file drops them all. The
    kernel releases a flock when its holder dies, however it dies, so no stale lock is left
    to clean up. The sidecar is never deleted: a running exporter would keep its lock on the
    deleted file while the next one created and locked a new one beside it.
    """
    lock_path = lock_path_for(path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"{lock_path}: cannot open the state lock file ({_reason(exc)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        pid = _holder_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StateError(f"{lock_path}: cannot lock the state file ({_reason(exc)})") from None
        holder = "" if pid is None else f" (pid {pid})"
        raise StateError(
            f"state file {path} is in use by another leadflow-exporter process{holder}; "
            "two exporters must not share one state file"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        # The pid is only for the message a second process prints; the lock is what counts.
        pass
    return fd


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # A StateError, not an OSError: the CLI takes a bare OSError for a bind failure.
            # The error names the ancestor that failed, which may lie above the parent.
            where = Path(exc.filename or self.path.parent)
            # Name the file in the way when there is one, however far up: mkdir's own "File
            # exists" or "Not a directory" would leave the reader looking for it.
            blocker = next(
                (p for p in (where, *where.parents) if p.exists() and not p.is_dir()), None
            )
            if blocker is not None:
                raise StateError(
                    f"cannot create directory {where}: {blocker} exists but is not a directory"
                ) from None
            raise StateError(f"cannot create directory {where}: {_reason(exc)}") from None
        # The poller writes from a worker thread; close() must never run under a write.
        self._writing = threading.Lock()
        # Before the database is even opened: a second process must not touch the file at all.
        lock_fd = _lock_state_file(self.path)
        # A store dropped without close() still lets go of the lock, as its connection does.
        self._unlock = weakref.finalize(self, os.close, lock_fd)
        try:
            self._open()
        except BaseException:
            db: sqlite3.Connection | None = getattr(self, "_db", None)
            if db is not None:
                db.close()
            self._unlock()
            raise

    def _open(self) -> None:
        try:
            fresh = self._create_or_check()
        except OSError as exc:
            raise StateError(f"{self.path}: cannot open the state file ({_reason(exc)})") from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._prepare(fresh)
        except sqlite3.DatabaseError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _CANNOT_OPEN:
                raise StateError(f"{self.path}: cannot open the state file ({exc})") from None
            raise StateError(f"{self.path}: not a usable state file ({exc})") from None

    def _create_or_check(self) -> bool:
        """Create the file if it is missing; say whether it was.

        An existing file is opened for writing once, and closed before SQLite opens it: SQLite
        would fall back to read-only on a file it cannot write, and the daemon would start only
        to fail at its first save.
        """
        try:
            # Owner-only from the first byte: call ids and totals are commercial data.
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
            fresh = True
        except FileExistsError:
            fd = os.open(self.path, os.O_RDWR)
            fresh = False
        os.close(fd)
        return fresh

    def _prepare(self, fresh: bool) -> None:
        app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        if fresh or (app_id == 0 and not tables):
            self._use_wal()
            # One transaction: a crash here leaves an empty file, never a half-made schema.
            self._run_script(f"PRAGMA application_id={APPLICATION_ID};\n{_SCHEMA}", SCHEMA_VERSION)
            return
        if app_id != APPLICATION_ID:
            raise StateError(
                f"{self.path}: this SQLite file was not written by leadflow-exporter; "
                "point state.path at a new file"
            )
        # Only now, once the file is known to be ours: switching to WAL rewrites the header.
        self._use_wal()
        version = int(self._meta("schema_version") or 0)
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: schema version {version} is newer than this exporter "
                f"understands ({SCHEMA_VERSION}); upgrade the exporter"
            )
        if version < 1:
            raise StateError(f"{self.path}: the state file has no schema version")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            try:
                self._run_script(_MIGRATIONS[target], target)
            except sqlite3.Error as exc:
                raise StateError(
                    f"{self.path}: migrating the state file from schema version {target - 1} "
                    f"to {target} failed ({exc}); the file was left at version {target - 1}"
                ) from None

    def _run_script(self, script: str, version: int) -> None:
        """Run a schema script and record its version, all in one transaction.

        `executescript` commits any open transaction before it starts, so BEGIN and COMMIT
        must be part of the script itself.
        """
        try:
            self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\n;\n"
                "INSERT INTO meta (key, value) VALUES ('schema_version', "
                f"'{int(version)}') ON CONFLICT(key) DO UPDATE SET value = excluded.value;\n"
                "COMMIT;"
            )
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _use_wal(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def load(self, extra_labels: tuple[str, ...], timezone: str | None = None) -> Snapshot | None:
        try:
            return self._load(extra_labels, timezone)
        except sqlite3.DatabaseError as exc:
            # Damage deeper in the file shows only when its pages are read.
            raise StateError(f"{self.path}: not a usable state file ({exc})") from None

    def _load(self, extra_labels: tuple[str, ...], timezone: str | None) -> Snapshot | None:
        watermark = self._meta("watermark")
        if watermark is None and self._meta("totals") is None:
            return None
        # Without a watermark no history read succeeded yet, but cycles may have been saved:
        # calls seen live (counted when they finish) and calls counted by sid meanwhile.
        full_mark = self._meta("full_read")
        covered_from = self._meta("covered_from")
        saved_labels = tuple(json.loads(self._meta("extra_labels") or "[]"))
        if saved_labels != extra_labels:
            raise StateError(
                f"{self.path}: totals were saved with metrics.extra_labels {list(saved_labels)} "
                f"but the config now has {list(extra_labels)}; keep the old labels or start a "
                "new state file"
            )
        saved_zone = self._meta("timezone")
        if timezone is not None and saved_zone is not None and saved_zone != timezone:
            # The seen sids are kept by the hour their call started, read in this zone: in
            # another zone the calls of the last overlap would not be found, and count again.
            raise StateError(
                f"{self.path}: calls were counted reading call dates in api.timezone "
                f"{saved_zone!r} but the config now has {timezone!r}; the calls of the last "
                "overlap would be counted again. Keep the old time zone or start a new state file"
            )
        try:
            totals = Totals.from_json(
                json.loads(self._meta("totals") or "{}"), label_count=2 + len(extra_labels)
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise StateError(f"{self.path}: saved totals are unreadable ({exc})") from None
        seen: dict[int, set[int]] = {}
        for bucket, sid in self._db.execute("SELECT bucket, sid FROM seen"):
            keys = seen.get(bucket)
            if keys is None:
                keys = seen[bucket] = set()
            keys.add(sid_key(sid))
        return Snapshot(
            totals=totals,
            seen=seen,
            followed=self._followed(),
            watermark=None if watermark is None else float(watermark),
            extra_labels=extra_labels,
            full_mark=None if full_mark is None else float(full_mark),
            covered_from=None if covered_from is None else float(covered_from),
        )

    def _followed(self) -> dict[str, FollowedCall]:
        return {
            sid: FollowedCall(sid, sid_key(sid), *rest)
            for sid, *rest in self._db.execute(
                "SELECT sid, set_name, call_ts, first_seen, last_active FROM followed"
            )
        }

    def write_cycle(
        self,
        *,
        totals: Totals,
        new_seen: StagedSids,
        expire_before_bucket: int,
        followed: dict[str, FollowedCall],
        watermark: float | None,
        extra_labels: tuple[str, ...] = (),
        full_mark: float | None = None,
        covered_from: float | None = None,
        timezone: str | None = None,
    ) -> None:
        with self._writing:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for bucket, sids in new_seen.items():
                    db.executemany(
                        "INSERT OR IGNORE INTO seen (bucket, sid) VALUES (?, ?)",
                        ((bucket, sid) for sid in sids.values()),
                    )
                db.execute("DELETE FROM seen WHERE bucket < ?", (expire_before_bucket,))
                db.execute("DELETE FROM followed")
                db.executemany(
                    "INSERT INTO followed (sid, set_name, call_ts, first_seen, last_active)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        (c.sid, c.set_name, c.call_ts, c.first_seen, c.last_active)
                        for c in followed.values()
                    ),
                )
                self._set_meta("totals", json.dumps(totals.to_json(), separators=(",", ":")))
                self._set_meta("extra_labels", json.dumps(list(extra_labels)))
                if timezone is not None:
                    self._set_meta("timezone", timezone)
                if watermark is not None:
                    self._set_meta("watermark", repr(watermark))
                if full_mark is not None:
                    self._set_meta("full_read", repr(full_mark))
                if covered_from is not None:
                    self._set_meta("covered_from", repr(covered_from))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def stats(self) -> dict[str, Any]:
        return {
            "seen": self._db.execute("SELECT count(*) FROM seen").fetchone()[0],
            "followed": self._db.execute("SELECT count(*) FROM followed").fetchone()[0],
        }

    def close(self) -> None:
        with self._writing:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                try:
                    self._db.close()
                finally:
                    # Only once the database is closed: a new owner must not find it in use.
                    self._unlock()
