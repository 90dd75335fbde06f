"""The spool: where writers make what they learn durable before the store's file is theirs.

A DuckDB file takes one writer or many readers at a time, and a notebook or an export may hold
it for minutes. What a writer must never lose while it waits (a delivery it is about to
acknowledge, a body it fetched, an id the API returned) goes first into the spool, a folder
beside the store (``STORE.duckdb.spool/``), and is merged into the store whenever some writer
can take the file.

The folder holds segments, one per writing process (``PID-NANOS-RANDOM.seg``). A segment starts
with ``MAGIC`` and is a run of frames: a little-endian ``u32`` length and ``u32`` CRC-32 of the
payload, then the payload: one line of JSON (the record's header: what to do with it) and the raw
bytes it carries, if any. Frames are only appended, and ``append`` returns once they are on disk
(``fdatasync``); appends from several threads share one sync (group commit). A process holds an
``flock`` on its segment for as long as it owns it, so a segment whose lock can be taken belongs
to a process that has ended (or rotated it away): any writer may then merge it.

``drain`` merges inside one DuckDB transaction per round: it applies the frames after the offset
recorded for each segment in ``spool_merged``, and records the new offset in the same
transaction, so a segment merged again after a crash starts where the last commit ended. A
segment is deleted only after the commit that merged its last frame. A frame cut short by a
crash (a torn write) can only be a segment's last: it is skipped with a logged reason.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from curate import merge
from curate.store import Store, StoreLocked, fsync

__all__ = [
    "MAGIC", "DrainSummary", "Record", "SpoolStatus", "SpoolWriter", "drain", "encode", "finish", "read_records",
    "segments", "status", "writer_pids",
]

log = logging.getLogger("curate.spool")

MAGIC = b"curate-spool 1\n"
_FRAME = struct.Struct("<II")
SUFFIX = ".seg"
ROTATE_BYTES = 64 * 1024 * 1024  # a fully merged segment past this is replaced by a new one
ROUND_BYTES = 64 * 1024 * 1024  # what one merge transaction reads at most (but always one whole frame)
MAX_FRAME = 256 * 1024 * 1024  # a length past this is corrupt, not a record (the listener takes 10 MB)


@dataclass(frozen=True)
class Record:
    """One spooled record: its header (``op`` says what it is) and the raw bytes it carries."""

    header: dict[str, Any]
    body: bytes = b""


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    """One frame: length, CRC-32, then the header's JSON line and ``body``."""
    payload = orjson.dumps(header) + b"\n" + body
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _create(folder: Path) -> tuple[Path, int]:
    """A new segment, locked and holding ``MAGIC`` on disk before any drain can see its name.

    It is made under a name drains ignore (``.new``) and renamed once locked: a drain that
    listed it between its creation and its lock would take it for a dead writer's empty segment
    and delete it under the writer's feet.
    """
    folder.mkdir(exist_ok=True)
    stem = f"{os.getpid()}-{time.time_ns()}-{secrets.token_hex(3)}"
    staging = folder / f"{stem}.new"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _write_all(fd, MAGIC)
        os.fsync(fd)
        path = folder / f"{stem}{SUFFIX}"
        os.rename(staging, path)
        fsync(folder)  # the segment's name survives a crash too
    except BaseException:
        os.close(fd)
        staging.unlink(missing_ok=True)
        raise
    return path, fd


class SpoolWriter:
    """This process's segment of a store's spool: ``append`` returns once frames are on disk."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self.records = 0  # frames appended since this writer started, over all its segments
        # Line numbers for the records' rejects key: unique within a process's segments, and
        # unlikely to meet another process's (microseconds since the epoch at the start).
        self._next_line = time.time_ns() // 1000
        self.path, self._fd = _create(self.folder)
        self.written = self.durable = len(MAGIC)
        self._segment = 0  # which of this writer's segments is current
        self._broken: str | None = None  # a failed append could not be undone: start a new segment

    def append(self, frames: Sequence[bytes]) -> int:
        """Write ``frames`` and make them durable; return this segment's durable length.

        A write that fails (a full disk) is undone before the error is raised, so the segment
        stays a clean run of frames and later appends land where the readers expect them.
        """
        data = b"".join(frames)
        with self._write_lock:
            if self._broken is not None:
                self._rotate()  # raises while the disk still refuses
            try:
                _write_all(self._fd, data)
            except OSError:
                try:
                    os.ftruncate(self._fd, self.written)
                except OSError as exc:
                    self._broken = f"{type(exc).__name__}: {exc}"
                raise
            self.written += len(data)
            self.records += len(frames)
            end, segment = self.written, self._segment
        self._sync(segment, end)
        return end

    def _sync(self, segment: int, end: int) -> None:
        with self._sync_lock:
            if segment != self._segment or self.durable >= end:
                return  # a rotation, or another thread's sync, covered these frames
            target = self.written
            os.fdatasync(self._fd)
            self.durable = target

    def lines(self, n: int) -> range:
        """``n`` line numbers no other record of this writer has."""
        with self._write_lock:
            first = self._next_line
            self._next_line += n
        return range(first, first + n)

    def rotate(self) -> None:
        """Start a new segment; the old one (let go of) is merged and deleted by the next drain."""
        with self._write_lock:
            self._rotate()

    def _rotate(self) -> None:
        with self._sync_lock:
            path, fd = _create(self.folder)  # first: if this fails, the old segment stays current
            os.fdatasync(self._fd)  # what was written to the old one is on disk before it is let go
            old = self._fd
            self.path, self._fd = path, fd
            self.written = self.durable = len(MAGIC)
            self._segment += 1
            self._broken = None
            os.close(old)

    def close(self) -> None:
        """Let go of the segment: what is in it stays for the next drain, by any writer."""
        with self._write_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def finish(store: Store, writer: SpoolWriter) -> DrainSummary:
    """Let go of ``writer``'s segment and merge what is left if the file is free (else it waits
    in the spool for the next writer)."""
    writer.close()
    return drain(store, None, wait=0.0)


CUT_SHORT = "cut short"  # how a problem that only the end of the data can explain is named


def read_records(data: bytes, start: int = 0) -> tuple[list[Record], int, str | None]:
    """The whole frames in ``data`` from ``start``: (records, where they end, why reading stopped early).

    The reason is None when ``data`` ends on a frame boundary; otherwise it says what is wrong
    with the frame at the returned offset: cut short (it contains ``CUT_SHORT``: the data ends
    inside it), or failing its checksum, or a header that is not JSON.
    """
    records: list[Record] = []
    at = start
    size = len(data)
    while at < size:
        if at + _FRAME.size > size:
            return records, at, f"a frame header {CUT_SHORT} ({size - at} of {_FRAME.size} bytes)"
        length, crc = _FRAME.unpack_from(data, at)
        if length > MAX_FRAME:
            return records, at, f"a frame whose length ({length:,} bytes) is past any record's"
        begin = at + _FRAME.size
        if begin + length > size:
            return records, at, f"a frame {CUT_SHORT} ({size - begin} of {length} bytes)"
        payload = data[begin:begin + length]
        if zlib.crc32(payload) != crc:
            return records, at, "a frame whose checksum does not match"
        newline = payload.find(b"\n")
        try:
            header = orjson.loads(payload[:newline])
            why = merge.problem(header)
        except orjson.JSONDecodeError:
            why = "is not JSON"
        if why is not None:
            # The frame is whole (its checksum holds), so the frames after it are sound: only
            # this record cannot be applied. It is kept, as it was spooled, in rejects.
            header = {"op": "reject", "source": "spool", "reason": f"a spooled record whose header {why}"}
            records.append(Record(header, payload))
        else:
            records.append(Record(header, payload[newline + 1:]))
        at = begin + length
    return records, at, None


@dataclass
class DrainSummary:
    """What one ``drain`` merged: records, segments finished (deleted), and whether more remain."""

    records: int = 0
    segments_done: int = 0
    rounds: int = 0
    remaining: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    own_to: tuple[Path, int] | None = None  # (the caller's own segment, how far it is merged), if looked at


def writer_pids(folder: Path, *, besides: Path | None = None) -> set[int]:
    """The PIDs of the processes whose segments are still in ``folder`` (a segment's name starts
    with its writer's PID, ``_create``), leaving out the segment ``besides``."""
    return {int(pid) for p in segments(folder) if p != besides and (pid := p.name.split("-", 1)[0]).isdigit()}


def segments(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return []


@dataclass
class _Claim:
    path: Path
    fd: int | None  # an orphan's lock, held until it is deleted; None for our own live segment
    end: int


def _claim(path: Path, own: SpoolWriter | None) -> _Claim | None:
    """Our own segment up to what is durable, or a segment nobody holds (its writer has ended)."""
    if own is not None and path == own.path:
        return _Claim(path, None, own.durable)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None  # deleted by another drain meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None  # alive: its writer merges it
    return _Claim(path, fd, os.fstat(fd).st_size)


@dataclass
class _Read:
    records: list[Record]
    offset: int  # where the records read end: the segment's new merged offset
    finished: bool = False  # nothing more will come: delete the segment once this is committed
    damaged: bool = False  # a frame in the middle is corrupt: keep the file aside once committed
    cut: bool = False  # the round's byte budget stopped the read: more to read now
    rotate: bool = False  # our own segment is damaged: start a new one, and let this one be an orphan


def _read(claim: _Claim, start: int, budget: int) -> _Read:
    """Frames of ``claim`` from ``start``, at most ``budget`` bytes of them."""
    orphan = claim.fd is not None
    if claim.end <= len(MAGIC):  # created, then its writer ended before writing a frame
        return _Read([], max(start, claim.end), finished=orphan)
    with claim.path.open("rb") as segment:
        if start < len(MAGIC):
            if segment.read(len(MAGIC)) != MAGIC:
                log.warning("spool segment %s does not start as a curate spool segment: left as it is",
                            claim.path.name)
                return _Read([], start)
            start = len(MAGIC)
        segment.seek(start)
        first = segment.read(_FRAME.size)
        whole = _FRAME.size + _FRAME.unpack(first)[0] if len(first) == _FRAME.size else 0
        end = min(claim.end, start + max(budget, min(whole, _FRAME.size + MAX_FRAME)))  # one frame at least
        segment.seek(start)
        data = segment.read(end - start)
    records, stop, problem = read_records(data)
    offset = start + stop
    if problem is None:
        return _Read(records, offset, finished=orphan and offset >= claim.end)
    if CUT_SHORT in problem:
        if end < claim.end:
            return _Read(records, offset, cut=True)  # the budget, not the segment, ended here
        if not orphan:
            return _Read(records, offset)  # cannot be: what is durable of our own ends on a frame
        # A torn last write: the expected way for a crashed writer's segment to end.
        log.warning("spool segment %s: skipped %s at byte %d (%d bytes left unmerged): a write torn by a crash",
                    claim.path.name, problem, offset, claim.end - offset)
        return _Read(records, claim.end, finished=True)
    # Corrupt in the middle: nothing after it can be framed again. The frames before it are
    # merged; the file is kept aside (NAME.seg.damaged) for a person to look at, never deleted.
    # Our own segment is let go of first (rotated), and then handled like any other.
    log.error("spool segment %s: %s at byte %d; the %d bytes from there are not merged and the segment is "
              "kept as %s.damaged", claim.path.name, problem, offset, claim.end - offset, claim.path.name)
    if not orphan:
        return _Read(records, offset, rotate=True)
    return _Read(records, claim.end, finished=True, damaged=True)


def drain(store: Store, own: SpoolWriter | None = None, *, wait: float | None = 0.0) -> DrainSummary:
    """Merge every segment of ``store``'s spool that this process may merge, until none is left.

    ``own`` is this process's writer (its segment is merged up to what is durable). Segments of
    other live processes are theirs to merge. ``wait`` is how long to wait for the file before
    giving up with what was merged so far (0: not at all; None: as long as it takes).
    Returns what was merged; ``remaining`` says a round stopped for want of the file.
    """
    result = DrainSummary()
    folder = store.spool_dir
    one_by_one = False  # after a round the store refused: one record per round, to find which
    while True:
        if not segments(folder):
            return result
        try:
            more = _round(store, own, result, wait, budget=1 if one_by_one else ROUND_BYTES)
        except StoreLocked:
            result.remaining = True
            return result
        except _Refused as refused:
            if not one_by_one:
                log.warning("a spool merge failed (%s); merging one record at a time to find the one",
                            refused.reason)
                one_by_one = True
                continue
            # This one record, alone, cannot be merged: it is kept in rejects with the reason
            # (raw and all), so it is not lost and the records after it are not held up.
            log.error("spool segment %s: the record at byte %d cannot be merged (%s): kept in rejects",
                      refused.segment, refused.start, refused.reason)
            more = _round(store, own, result, wait, budget=1, refuse=refused)
            one_by_one = False
        if not more:
            return result


# What a merge raises when a record, not the moment, is at fault: retrying it would fail again.
REFUSED = (duckdb.OutOfMemoryException, duckdb.InvalidInputException, duckdb.ConversionException,
           duckdb.OutOfRangeException)


class _Refused(Exception):
    """A round the store refused, and where its first record is."""

    def __init__(self, segment: str, start: int, exc: BaseException) -> None:
        self.segment, self.start = segment, start
        self.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        super().__init__(self.reason)


def _round(store: Store, own: SpoolWriter | None, result: DrainSummary, wait: float | None, *,
           budget: int = ROUND_BYTES, refuse: _Refused | None = None) -> bool:
    """One transaction: merge up to ``budget`` bytes (always one whole frame); True if more is
    left to merge now. With ``refuse``, the record it names is put in rejects instead, with why."""
    claims: list[_Claim] = []
    finished: list[tuple[_Claim, bool]] = []
    more = False
    own_to: tuple[Path, int] | None = None
    rotate = False
    try:
        with store.write(wait=wait) as con:
            # Listed with the file held, so every segment a writer merged before is listed.
            paths = segments(store.spool_dir)
            merged = dict(con.execute("select segment, merged_to from spool_merged").fetchall())
            for path in paths:
                claim = _claim(path, own)
                if claim is None:
                    continue
                claims.append(claim)
                start = merged.get(path.name, 0)
                if budget <= 0 or (refuse is not None and (path.name, start) != (refuse.segment, refuse.start)):
                    more = more or start < claim.end
                    continue
                read = _read(claim, start, budget)
                records, offset = read.records, read.offset
                # More to read now: the budget cut a frame, or ended exactly on one with frames after it.
                more = more or read.cut or (start < offset < claim.end and not read.finished)
                rotate = rotate or read.rotate
                budget -= offset - start
                if records and refuse is not None:
                    merge.refuse(con, records, f"could not be merged: {refuse.reason}")
                    result.counts["rejected"] = result.counts.get("rejected", 0) + len(records)
                    result.records += len(records)
                elif records:
                    try:
                        counts = merge.apply(con, records)
                    except REFUSED as exc:
                        raise _Refused(path.name, start, exc) from exc
                    for name, n in counts.items():
                        result.counts[name] = result.counts.get(name, 0) + n
                    result.records += len(records)
                if claim.fd is None:
                    own_to = (path, offset)
                if offset != start:
                    con.execute(
                        "insert into spool_merged values (?, ?, ?, now()) on conflict (segment) do update "
                        "set merged_to = excluded.merged_to, records = spool_merged.records + excluded.records, "
                        "merged_at = excluded.merged_at",
                        [path.name, offset, len(records)],
                    )
                if read.finished:
                    finished.append((claim, read.damaged))
            listed = {p.name for p in paths}
            gone = [name for name in merged if name not in listed]
            if gone:
                con.execute("delete from spool_merged where segment in (select unnest(?::varchar[]))", [gone])
        result.rounds += 1
        if own_to is not None:
            result.own_to = own_to
        for claim, damaged in finished:  # only after the commit that merged their last frame
            if damaged:
                claim.path.rename(claim.path.with_name(claim.path.name + ".damaged"))
            else:
                claim.path.unlink(missing_ok=True)
            result.segments_done += 1
        if finished:
            fsync(store.spool_dir)
        if own is not None and (rotate or (own.durable >= ROTATE_BYTES and not more)):
            own.rotate()
            more = True  # the old segment is now an orphan to merge or delete
    finally:
        for claim in claims:
            if claim.fd is not None:
                os.close(claim.fd)
    return more


@dataclass(frozen=True)
class SpoolStatus:
    """What waits in a spool: segments, records and bytes not yet merged, and the oldest one's time."""

    segments: int
    records: int
    bytes: int
    oldest: datetime | None

    @property
    def age_seconds(self) -> float | None:
        return None if self.oldest is None else max(0.0, (datetime.now(UTC) - self.oldest).total_seconds())


def _frames(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    """(offset, header line) of each whole frame from ``start``, reading only headers."""
    with path.open("rb") as segment:
        size = os.fstat(segment.fileno()).st_size
        at = max(start, len(MAGIC))
        while at + _FRAME.size <= size:
            segment.seek(at)
            length, _ = _FRAME.unpack(segment.read(_FRAME.size))
            if at + _FRAME.size + length > size:
                return
            yield at, segment.readline(min(length, 4096))
            at += _FRAME.size + length


def status(folder: str | os.PathLike[str], merged: dict[str, int]) -> SpoolStatus:
    """What waits in the spool ``folder``, given each segment's merged offset (``spool_merged``)."""
    found = records = pending = 0
    oldest: datetime | None = None
    for path in segments(Path(folder)):
        start = merged.get(path.name, 0)
        try:
            frames = list(_frames(path, start))
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if not frames:
            continue
        found += 1
        records += len(frames)
        pending += size - frames[0][0]
        try:
            at = json.loads(frames[0][1]).get("at")
        except ValueError:
            at = None
        if isinstance(at, (int, float)):
            first = datetime.fromtimestamp(at, UTC)
            oldest = first if oldest is None or first < oldest else oldest
    return SpoolStatus(found, records, pending, oldest)
