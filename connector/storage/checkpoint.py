"""SQLite's WAL checkpoints, run from a thread of their own instead of inside our commits.

Left to SQLite, the commit that takes the write-ahead log past ``wal_autocheckpoint``
pages copies the log into the database file (reads and writes every page, then an fsync)
before it returns. In ``storeloop serve`` that commit is the webhook writer's, on the event
loop: every delivery waits for the copy. A ``PASSIVE`` checkpoint from another connection
does the same copy without the write lock, and the sqlite3 module runs it without the GIL,
so it lands on the second core and the writer's own checkpoints find little left to copy.
SQLite's autocheckpoint stays on as the fallback for when this thread falls behind, stops,
or was never started (short CLI commands).

Other commits (the processor's, journey timers', the dispatcher's, the reorder tick's) do not
wake the thread: waking it after each small transaction made the timers a quarter slower.
It also looks every ``idle_interval`` seconds, so the log those commits add is copied here
too, instead of by whichever of them passes SQLite's threshold (10,000 pages, ~80 MB: the
reorder tick that did took 130 ms instead of ~30).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

log = logging.getLogger("storeloop.storage")


class WalCheckpointer:
    """One daemon thread per SQLite file: after the webhook writer's commits, at most every
    ``min_interval`` seconds, and every ``idle_interval`` seconds whatever else committed."""

    def __init__(self, path: str, *, min_interval: float = 0.02, idle_interval: float = 0.5):
        self.path = path
        self.min_interval = min_interval
        self.idle_interval = idle_interval
        self.checkpoints = 0  # PASSIVE checkpoints that ran
        self.frames = 0  # log frames they copied into the database
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        """A transaction committed: the log has grown."""
        self._wake.set()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join(timeout=10)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            while True:
                self._wake.wait(self.idle_interval)
                if self._stopping:
                    return
                self._wake.clear()
                try:
                    busy, _log_frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                    self.frames += max(copied, 0)
                except sqlite3.Error as exc:  # locked for a moment: the next commit wakes us again
                    log.debug("wal checkpoint skipped: %s", exc)
                time.sleep(self.min_interval)
        except Exception:  # never take the process down: SQLite's autocheckpoint still runs
            log.exception("the WAL checkpoint thread stopped; SQLite checkpoints inside commits from now on")
        finally:
            if conn is not None:
                conn.close()
