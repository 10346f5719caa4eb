"""One SQLite file shared by threads and processes: WAL, durable commits, queued writers.

:class:`SqliteFile` is what :class:`nextbest.serve.store.OnlineStore` is built on: a
connection per thread (and per process: a forked child opens its own) in WAL mode with
``synchronous=FULL``, so a commit is fsynced before it returns; write transactions that hold
SQLite's write lock from their start (``BEGIN IMMEDIATE``), optionally queued in the kernel
(``queue_writers``); optionally a thread that checkpoints the WAL off the request path
(``checkpoint_every``). A second connection per thread, with ``synchronous=NORMAL``, takes the
writes that need not wait for the disk (``_write(fsync=False)``: they survive a killed process,
not a power loss); switching one connection's setting back and forth around each such write
cost two statements a write.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nextbest.errors import DataError

__all__ = ["SqliteFile"]

log = logging.getLogger(__name__)


class SqliteFile:
    """A SQLite file in WAL mode, safe to share between threads and processes.

    Parameters
    ----------
    db_path
        The file (its folder is created).
    checkpoint_every
        Seconds between passive checkpoints by a daemon thread (None: SQLite checkpoints
        itself, inside the commit that crosses its 1,000-page mark).
    queue_writers
        Writers of this file wait for their turn on a lock file (see :meth:`_turn`).
    """

    def __init__(
        self,
        db_path: Path,
        *,
        checkpoint_every: float | None = None,
        queue_writers: bool = False,
    ) -> None:
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._queue_writers = queue_writers
        self._writers = threading.Lock()
        self._turn_fd: tuple[int, int] | None = None  # (pid, descriptor of the lock file)
        self._checkpoint_every = checkpoint_every
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_pid = 0
        self._stop = threading.Event()
        self._starting = threading.Lock()

    def _con(self, *, fsync: bool = True) -> sqlite3.Connection:
        """This thread's connection: commits wait for the disk, or (``fsync=False``) not."""
        name = "con" if fsync else "con_nosync"
        con: sqlite3.Connection | None = getattr(self._local, name, None)
        if con is not None and getattr(self._local, name + "_pid", None) == os.getpid():
            return con
        # A new thread, or a forked child (which must not use its parent's connection).
        con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        con.execute("PRAGMA busy_timeout = 10000")
        mode = _wal(con)
        if str(mode).lower() != "wal":
            raise DataError(f"{self.path}: expected SQLite to use WAL journaling, got {mode!r}")
        con.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
        con.execute("PRAGMA secure_delete = ON")  # deletions overwrite what they delete
        if self._checkpoint_every is not None:
            con.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's job
            self._start_checkpointer()
        setattr(self._local, name, con)
        setattr(self._local, name + "_pid", os.getpid())
        return con

    def _start_checkpointer(self) -> None:
        """With ``checkpoint_every`` seconds: a daemon thread copies the WAL into the database
        (a passive checkpoint, which waits for no reader or writer) that often, instead of the
        commit that happens to cross SQLite's 1,000-page mark. That commit would otherwise
        copy the pages and wait for the disk inside a request. Commits stay durable as
        before: a commit is on disk once in the WAL."""
        with self._starting:
            alive = self._checkpointer is not None and self._checkpointer.is_alive()
            if alive and self._checkpointer_pid == os.getpid():
                return
            self._checkpointer_pid = os.getpid()
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="online-store-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        interval = float(self._checkpoint_every or 1.0)
        while not self._stop.wait(interval):
            try:
                self._con().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:  # busy or closed: the next round tries again
                log.info("online store: checkpoint skipped (%s)", type(exc).__name__)

    @contextmanager
    def _write(self, *, fsync: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start; ``fsync=False``
        commits without waiting for the disk (``synchronous=NORMAL``: safe from a crash of the
        process, not from a power loss)."""
        con = self._con(fsync=fsync)
        with self._turn():
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """With ``queue_writers``: this file's writers, in every process, wait for their
        turn in the kernel (a lock on ``<db>.writers``), woken the moment the writer before
        them is done. Left to SQLite, a writer finding the lock taken sleeps and retries
        (1, 2, 5, 10 ms...), which costs requests milliseconds for a lock held a fraction of
        one. Writers that do not queue (other modules, other tools) still meet SQLite's lock."""
        if not self._queue_writers:
            yield
            return
        with self._writers:  # this process's threads (a file lock is one per process)
            fd = self._turn_file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _turn_file(self) -> int:
        if self._turn_fd is None or self._turn_fd[0] != os.getpid():  # new, or forked
            path = self.path.with_name(self.path.name + ".writers")
            self._turn_fd = (os.getpid(), os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        return self._turn_fd[1]

    def close(self) -> None:
        """Close this thread's connections (another thread's close when that thread ends) and
        stop the checkpointer, if any."""
        self._stop.set()
        for name in ("con", "con_nosync"):
            con: sqlite3.Connection | None = getattr(self._local, name, None)
            if con is not None and getattr(self._local, name + "_pid", None) == os.getpid():
                con.close()
            setattr(self._local, name, None)


def _wal(con: sqlite3.Connection) -> str:
    """Switch to WAL; the switch skips the busy handler, so processes racing to create the file
    retry here for up to 10 s."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            return str(con.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
