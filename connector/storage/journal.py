"""The ingest journal: deliveries acknowledged during a burst, waiting for their inbox rows.

On SQLite, storing an 11.6 KB order in ``inbox_events`` / ``inbox_bodies`` is the largest
single part of a webhook's cost: 30-46 us of the 90-105 us a delivery takes in process
(``bench/_asgi.py``); the row, its indexes and the body go through the WAL, and the
checkpoint copies them again. Under a burst the inbox writer appends each batch to this file
instead (one ``writev``, 8-10 us a delivery), answers the senders, and moves the batches
into the inbox in large transactions once the burst is over. That saves no work (the inbox
write happens after the burst, and the journal's write comes on top); it makes a burst's
answers faster. The durability promise is the inbox's own: SQLite in WAL mode with
``synchronous = NORMAL`` does not fsync a commit either, so both survive the process being
killed and both rely on the kernel for the rest.

One file per process, beside the database (``<db>-ingest-<pid>-<random>.journal``), locked with
``flock`` while the process lives. A process that finds a file nobody holds (its owner was
killed) imports it before it takes webhooks, and every few seconds while it runs
(``InboxWriter``). Records are imported in the order they were appended; a delivery that
was both journaled and stored (a crash between the import's commit and the journal's
truncation) is a duplicate the inbox's unique key drops.

Format: frames of ``MAGIC``, payload length and CRC-32, then the payload: per item a
``<II`` pair (metadata length, body length), its metadata as JSON and its raw body. A
frame cut short (the process killed inside ``write``) or failing its CRC ends the readable
part: it was never acknowledged, since the senders are answered only after ``write``
returned.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import struct
import zlib
from datetime import datetime
from pathlib import Path
from typing import Iterable

import orjson

from connector.storage.inbox import InboxItem

log = logging.getLogger("storeloop.inbox")
MAGIC = b"SLJ1"
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32 of the payload
_ITEM = struct.Struct("<II")  # metadata length, body length
_BUFFER = 8 << 20  # bytes read per import batch at most (500 orders of 11.6 KB: 5.8 MB)
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
SUFFIX = ".journal"


def journal_glob(db_path: str | Path) -> str:
    return f"{Path(db_path).name}-ingest-*{SUFFIX}"


def _encode(items: Iterable[InboxItem], received: datetime) -> tuple[list[bytes], int]:
    """A frame as the buffers to write (header first) and their total length: no copy of the
    bodies is made (each is ~11.6 KB; joining them cost more than the write)."""
    parts: list[bytes] = [b""]
    crc = length = 0
    for it in items:
        meta = orjson.dumps([
            it.store_id, it.source, it.topic, it.dedupe_key, (it.received_at or received).isoformat(),
            it.triggered_at.isoformat() if it.triggered_at else None, it.headers, it.status, it.last_error,
        ])
        for part in (_ITEM.pack(len(meta), len(it.raw_body)), meta, it.raw_body):
            crc = zlib.crc32(part, crc)
            length += len(part)
            parts.append(part)
    parts[0] = _FRAME.pack(MAGIC, length, crc)
    return parts, _FRAME.size + length


def _decode(payload: memoryview) -> list[InboxItem]:
    """The items of one frame's payload; their bodies are views into it (SQLite copies a blob
    when it binds it, so nothing else is copied on the way from the file to the inbox)."""
    items: list[InboxItem] = []
    pos = 0
    while pos < len(payload):
        meta_len, body_len = _ITEM.unpack_from(payload, pos)
        pos += _ITEM.size
        store_id, source, topic, key, received, triggered, headers, status, error = orjson.loads(payload[pos : pos + meta_len])
        pos += meta_len
        body = payload[pos : pos + body_len]
        pos += body_len
        items.append(InboxItem(
            store_id=store_id, source=source, topic=topic, dedupe_key=key, raw_body=body, headers=headers,  # type: ignore[arg-type]
            triggered_at=datetime.fromisoformat(triggered) if triggered else None, status=status, last_error=error,
            received_at=datetime.fromisoformat(received),
        ))
    return items


class IngestJournal:
    """One process's journal file: ``append`` batches, ``read`` them back in order, ``consumed``
    once they are in the inbox (the file is emptied when everything in it was consumed)."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd = fd
        self._size = os.fstat(fd).st_size
        # frames below this offset were written by a process that died: their CRC is checked. This
        # process's own frames are whole by construction (answered only after ``write`` returned,
        # the file locked), and checking 11.6 KB again costs ~6 us a row on import.
        self._check_below = self._size
        self._read = 0  # offset of the first frame not yet in the inbox
        # frames are read into one reused buffer: its pages stay mapped, where a fresh bytes
        # object of several MB per read cost as much as the read itself (first touch of new memory)
        self._buffer = bytearray()  # allocated at the first read
        self.damaged = False  # a frame that is not whole was found (and skipped with all after it)
        self.broken = False  # a failed write could not be cut back: no more appends until emptied

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> "IngestJournal | None":
        """Open and lock ``path``; None if another live process holds it (or, without ``create``,
        if it no longer exists)."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        while True:
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            # whoever held it before may have imported and unlinked it meanwhile: only a lock on
            # the file that is still at ``path`` counts
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(path, fd)
            os.close(fd)
            if not create:
                return None

    @property
    def pending(self) -> bool:
        return self._read < self._size

    @property
    def pending_bytes(self) -> int:
        """Bytes not yet imported."""
        return self._size - self._read

    @property
    def size(self) -> int:
        """Bytes in the file (consumed frames included, until everything is)."""
        return self._size

    def append(self, items: list[InboxItem], received: datetime) -> None:
        """Write one frame; returns once the kernel has all of it. On a failed or short write
        (a full disk) the file is cut back to where it was and the error raised: the senders
        get a 503, and no half frame is left for a later one to follow."""
        if self.broken:
            raise OSError(f"ingest journal {self.path.name} holds a failed write; it takes no more until it is imported")
        parts, length = _encode(items, received)
        start = self._size
        try:
            written = os.writev(self._fd, parts) if len(parts) <= _IOV_MAX else 0
            if written < length:  # a short write (or too many buffers for one call): the rest as one
                rest = b"".join(parts)
                while written < length:
                    written += os.write(self._fd, rest[written:])
        except BaseException:
            try:
                os.ftruncate(self._fd, start)
            except OSError:  # the half frame stays: what precedes it is still read (up to ``_size``)
                self.broken = True
            raise
        self._size = start + length

    def read(self, max_rows: int) -> tuple[list[InboxItem], int]:
        """Frames from the first unconsumed one, up to about ``max_rows`` items or a buffer's worth;
        and the offset to pass to ``consumed`` once they are stored. The items' bodies are views
        of this journal's read buffer: valid until the next ``read``."""
        items: list[InboxItem] = []
        if not self._buffer:
            self._buffer = bytearray(_BUFFER)
        offset, buffer, used = self._read, self._buffer, 0
        while offset < self._size and len(items) < max_rows:
            head = os.pread(self._fd, _FRAME.size, offset)
            magic, length, crc = _FRAME.unpack(head) if len(head) == _FRAME.size else (b"", 0, 0)
            end = offset + _FRAME.size + length
            if magic != MAGIC or end > self._size:
                return items, self._damaged(offset)
            if used + length > len(buffer):
                if used:
                    break  # this read is full: the rest next time
                buffer = bytearray(length)  # one frame larger than the buffer (a batch of large bodies)
            view = memoryview(buffer)[used : used + length]
            if os.preadv(self._fd, [view], offset + _FRAME.size) < length or (
                    offset < self._check_below and zlib.crc32(view) != crc):
                return items, self._damaged(offset)
            try:
                items += _decode(view)
            except (ValueError, struct.error, TypeError) as exc:
                log.error("ingest journal %s: the frame at offset %d does not decode (%s)",
                          self.path.name, offset, exc.__class__.__name__)
                return items, self._damaged(offset)
            used += length
            offset = end
        return items, offset

    def _damaged(self, offset: int) -> int:
        """Cannot happen for frames this process wrote (it answers only after ``write`` returned):
        the tail of a dead process's journal cut short inside a write, or damaged on disk. What
        precedes it is imported; the rest was never acknowledged, or cannot be read."""
        log.error("ingest journal %s: %d bytes from offset %d are not a whole frame; skipped",
                  self.path.name, self._size - offset, offset)
        self.damaged = True
        return self._size

    def consumed(self, offset: int) -> None:
        self._read = offset
        if self._read >= self._size:  # all in the inbox: start the file again
            os.ftruncate(self._fd, 0)
            self._read = self._size = self._check_below = 0
            self.broken = False

    def close(self, *, unlink: bool = False) -> None:
        """Release the file. ``unlink``: it was imported; one found damaged is kept instead, renamed
        ``*.damaged`` (no longer a journal anyone imports), for whoever investigates."""
        if self._fd < 0:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):  # still holding the lock: nobody opened it meanwhile
                if self.damaged:
                    self.path.rename(self.path.with_name(self.path.name + ".damaged"))
                else:
                    self.path.unlink()
        os.close(self._fd)  # releases the lock
        self._fd = -1


def orphans(db_path: str | Path, own: set[Path] | None = None) -> list[IngestJournal]:
    """The journals beside ``db_path`` that no live process holds (their owners died), locked
    for the caller, oldest first; ``own`` (this process's file) is left out. A file that cannot
    be opened (permissions, no file descriptors left) is logged and left for the next look."""
    directory = Path(db_path).resolve().parent
    found: list[tuple[float, IngestJournal]] = []
    for path in directory.glob(journal_glob(db_path)):
        if own and path in own:
            continue
        try:
            journal = IngestJournal.open(path, create=False)
            if journal is not None:
                found.append((os.fstat(journal._fd).st_mtime, journal))
        except OSError as exc:
            log.error("ingest journal %s cannot be opened: %s", path.name, exc.__class__.__name__)
    return [j for _, j in sorted(found, key=lambda pair: (pair[0], pair[1].path.name))]


def unimported(db_path: str | Path) -> bool:
    """Some journal beside ``db_path`` (any process's) holds frames not yet in the inbox: a file is
    emptied once all of it is imported, and deleted once it is no longer written to."""
    directory = Path(db_path).resolve().parent
    for path in directory.glob(journal_glob(db_path)):
        with contextlib.suppress(FileNotFoundError):  # imported and deleted meanwhile
            if path.stat().st_size > 0:
                return True
    return False


def journal_path(db_path: str | Path) -> Path:
    """A new journal's name: the process id and a random part, so a process never takes over a
    file a dead process left under the same pid (containers reuse pids): that one is an orphan."""
    path = Path(db_path).resolve()
    return path.with_name(f"{path.name}-ingest-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}")
