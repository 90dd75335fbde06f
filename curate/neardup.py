"""Near-duplicate chat rows: MinHash signatures, LSH bands, clusters kept in ``near_duplicate_rows``.

``near_duplicates(store)`` reads each row of the ``chat`` view once, into Arrow: DuckDB
extracts the text of the messages (the request's on ``on="prompt"``, all of them on
``on="conversation"``; ``curate.messages.conversation_text``) and normalises it (lowercase,
punctuation removed, whitespace collapsed).

**Shingles.** Each text is the set of its ``shingle``-character shingles (the text itself if
shorter). Characters, not words: chat prompts are short, and in a 40-word prompt one changed word
alters 5 of 37 word 5-grams (Jaccard ~0.76, a miss at 0.85) but ~10 of ~250 character 5-grams
(~0.92, a hit), while unrelated prompts share few character 5-grams. No Python object is made per
shingle, nor per text: ``shingles`` decodes a batch's UTF-8 bytes to code points at once and
hashes its every shingle to 64 bits with pyarrow's kernels, and rensa signs the flat hashes
(``digest_matrix_from_flat_token_hashes``, 128 permutations, fixed seed). One thread shingles and
signs a batch of ``BATCH_ROWS`` texts while the other takes the last one's signatures out of rensa
(as Python lists, its only way out, with Python's cyclic collector paused) into one flat array.

**Candidates, in linear time.** Each signature is cut into ``bands`` bands of ``rows`` values
(``lsh_bands``: the fewest bands under which a pair at exactly ``threshold`` is missed with
probability at most 1 %; 16 bands of 8 at 0.85), each band hashed to a 64-bit bucket, and the
buckets of two rows or more found band by band (as rensa's LSH index would), all with pyarrow's
kernels (``_candidate_pairs``). The rows in them are the candidates. Rows with equal signatures count once; in each bucket each row is compared
with the bucket's first row and with the row before it (in the order of the next band, so rows
that share it too are neighbours): two comparisons a row per band, never one per pair of rows.

**Decided on the exact value near the threshold.** A pair's MinHash estimate (the share of equal
values) is off by ~0.03 at 128 permutations, so a pair whose estimate is within ``margin`` of the
threshold (three standard deviations: ±0.095 at 0.85) is decided on the exact Jaccard similarity
of the two shingle sets (the sets of their 64-bit hashes, those the estimate samples: as
``exact_similarity`` unless two distinct shingles share a hash); further away, on the estimate. The pairs found
similar are joined, and the connected components of two rows or more are the clusters. A cluster
is named by its representative: the longest text, then the first finished, then the smallest id.
Each member keeps its similarity to the representative, exact when the estimate is near the
threshold.

The store is not held while Python shingles and hashes: the texts (with each row's id, body hash
and finish) are read into Arrow by one query under a read-only connection, held for that query
alone, and stay in memory for the exact checks (about the size of the texts: 50 MB for 95,652
prompts, 100 MB for their conversations, beside 512 bytes of signature a row). The clusters
replace the previous ones for the same ``on`` in one short transaction.

**What a run has seen.** Each run records the rows it compared (``pass_coverage``, pass
``near:<on>``, with each row's body hash and a digest of the settings) and its settings
(``pass_settings``). A run whose settings and rows are those already recorded does nothing; when
any row is new or changed (or gone), or the settings differ, the clusters are computed again over
every row: a new row can join, merge or re-represent any cluster, and a full recompute is the
simple way to be right (incremental LSH would need the signatures kept in the store).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import time
from array import array
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from curate.messages import conversation_text
from curate.store import FOREVER, Store, _user_query, interruptible

__all__ = ["NearDupSummary", "exact_similarity", "near_duplicates", "pending", "recorded_settings"]

On = Literal["prompt", "conversation"]
SEED = 1729
# Rows shingled and signed at a time: their signatures come out of rensa as Python ints, whose memory
# is handed back to the system when a batch is freed; smaller batches touch fresh pages less often
# (2,000: half the page faults and 100 MiB less peak memory than 10,000, for the same CPU).
BATCH_ROWS = 2_000
# The largest chance that LSH misses a pair at exactly the threshold (lsh_bands).
MISS = 0.01
# Shingle hashing: an odd 64-bit multiplier, and what pads a text shorter than a shingle.
_MULTIPLIER = pa.scalar(0x9E3779B97F4A7C15, pa.uint64())
_MULTIPLIER_SQUARED = pa.scalar(0x9E3779B97F4A7C15**2 % 2**64, pa.uint64())
_PAD = "\udc80"
# Windows hashed at a time: each kernel's output (1 MiB) stays in the CPU's cache for the next one.
_CHUNK = 1 << 17


def _texts_sql(on: On) -> str:
    messages = "msgs" if on == "conversation" else "list_slice(msgs, 1, len(msgs) - 1)"
    return f"""
        with rows as (select c.id, c.finished_at, json_extract(c.messages, '$[*]') as msgs,
                             coalesce(g.raw_hash, hash(c.messages::varchar)) as raw_hash
                      from chat c left join generation_rows g on g.id = c.id),
        joined as (
            select id, finished_at, raw_hash,
                   lower({conversation_text(messages)}) as t
            from rows
        )
        select id, finished_at, raw_hash,
               trim(regexp_replace(regexp_replace(t, '[[:punct:]]', '', 'g'), '\\s+', ' ', 'g')) as text
        from joined
    """


@dataclass(frozen=True)
class NearDupSummary:
    """What one run found: rows scanned, clusters (of two rows or more), rows in them, and time.

    ``up_to_date``: nothing had changed since the last run with these settings, so nothing was
    computed (``rows`` and the clusters are then what that run recorded)."""

    on: str
    threshold: float
    rows: int
    clusters: int
    rows_in_clusters: int
    seconds: float
    up_to_date: bool = False
    candidates: int = 0  # rows that shared an LSH band with another row, and were compared
    exact_checks: int = 0  # pairs decided on their exact similarity (their estimate was near the threshold)


DEFAULT_THRESHOLD = 0.85
DEFAULT_NUM_PERM = 128
DEFAULT_SHINGLE = 5
# Bumped when the texts compared or the clustering change in a way the settings do not show.
# 2: a message's text is curate.messages' rule (only "text" parts with a string text count).
# 3: shingles hashed by pyarrow, bands for 1 % misses at the threshold, pairs near the threshold
#    decided on their exact similarity (and members' similarity exact near the threshold).
VERSION = 3


def pass_name(on: str) -> str:
    return f"near:{on}"


def settings_digest(on: str, threshold: float, num_perm: int, shingle: int) -> str:
    text = json.dumps({"on": on, "threshold": threshold, "num_perm": num_perm, "shingle": shingle, "seed": SEED,
                       "version": VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded_settings(store: Store, on: str) -> dict[str, float | int] | None:
    """The settings of the last recorded run on ``on`` (threshold, num_perm, shingle), or None."""
    rows = store.arrow("select params::varchar as params from pass_settings where pass = ?",
                       [pass_name(on)]).to_pylist()
    if not rows:
        return None
    params = json.loads(rows[0]["params"])
    return {k: params[k] for k in ("threshold", "num_perm", "shingle")}


def _pending_sql(on: str, settings: str) -> str:
    """Rows of chat not compared as they are under ``settings``, plus compared rows no longer in chat."""
    name = pass_name(on)
    return f"""
        with rows as (select c.id, coalesce(g.raw_hash, hash(c.messages::varchar)) as raw_hash
                      from chat c left join generation_rows g on g.id = c.id),
        covered as (select id, raw_hash from pass_coverage where pass = '{name}' and settings = '{settings}')
        select (select count(*) from rows r where not exists
                    (select 1 from covered p where p.id = r.id and p.raw_hash = r.raw_hash))
             + (select count(*) from covered p where not exists
                    (select 1 from rows r where r.id = p.id and r.raw_hash = p.raw_hash))
             + (select count(*) from pass_coverage where pass = '{name}' and settings <> '{settings}') as n
    """


def pending(store: Store, *, on: On = "prompt", threshold: float = DEFAULT_THRESHOLD,
            num_perm: int = DEFAULT_NUM_PERM, shingle: int = DEFAULT_SHINGLE) -> int:
    """How many chat rows are new, changed or gone since the last run with these settings (0: up to date).

    Never run with these settings: every chat row (and at least 1, so an empty store counts as not run)."""
    settings = settings_digest(on, threshold, num_perm, shingle)
    n = store.arrow(_pending_sql(on, settings)).to_pylist()[0]["n"]
    if n == 0 and not store.arrow("select 1 from pass_settings where pass = ? and settings = ?",
                                  [pass_name(on), settings]).num_rows:
        return 1
    return int(n)


def shingles(texts: Sequence[str] | pa.StringArray, size: int) -> tuple[pa.UInt64Array, array[int]]:
    """The ``size``-character shingles of each normalised text, hashed to 64 bits, in flat arrays.

    ``texts``: strings, or an Arrow string array (a null is an empty text). Returns ``(hashes,
    offsets)``: the hashes of text ``i``'s shingles are ``hashes[offsets[i]:offsets[i + 1]]`` (a
    shingle that recurs is there each time; an empty text has none; a text shorter than ``size`` is
    one shingle, itself). No Python object is made per shingle, nor per text from an Arrow array:
    the batch's UTF-8 bytes are decoded to one UTF-32 string, and pyarrow's kernels hash every
    window of ``size`` code points at once, ``c0·M^(size-1) + c1·M^(size-2) + ... + c(size-1)``
    modulo 2^64 for the odd constant M (as ``(c0·M + c1)·M^(size-2) + (c2·M + c3)·M^(size-4) ...``:
    each pair of neighbours is combined once, for every window it starts). Windows that straddle two
    texts are dropped. A short text is padded with a lone surrogate, a code point no decoded UTF-8
    text holds, so its one shingle is no other text's. ``_shingle_set`` is the same shingling, as
    strings.
    """
    strings = texts if isinstance(texts, pa.Array) else pa.array(list(texts), pa.string())
    strings = pc.fill_null(strings, "")
    lengths = pc.cast(pc.utf8_length(strings), pa.int64())
    empty = pc.equal(lengths, 0)
    padded = pc.if_else(empty, 0, pc.max_element_wise(lengths, size))  # code points, a short text padded
    offsets = array("Q", [0])
    offsets.frombytes(_values(pc.cumulative_sum(pc.if_else(empty, 0, pc.subtract(padded, size - 1)))))
    if not offsets[-1]:
        return pa.array([], pa.uint64()), offsets
    ends = array("q")  # where each text's code points end, padded; empty texts left out
    ends.frombytes(_values(pc.filter(pc.cumulative_sum(padded), pc.invert(empty))))
    total = ends[-1]
    bounds = strings.buffers()[1]
    raw = memoryview(bounds).cast("B")
    starts = (raw.cast("q") if pa.types.is_large_string(strings.type) else raw.cast("i"))[
        strings.offset : strings.offset + len(strings) + 1]
    data = memoryview(strings.buffers()[2]).cast("B")
    short = pc.indices_nonzero(pc.and_(pc.invert(empty), pc.less(lengths, size))).to_pylist()
    if short:  # the texts between two short ones as they are, each short one padded
        pieces, at = [], starts[0]
        for i in short:
            pieces += [data[at : starts[i + 1]], (_PAD * (size - lengths[i].as_py())).encode("utf-8", "surrogatepass")]
            at = starts[i + 1]
        pieces.append(data[at : starts[-1]])
        utf32 = b"".join(pieces).decode("utf-8", "surrogatepass").encode("utf-32-le", "surrogatepass")
    else:
        utf32 = str(data[starts[0] : starts[-1]], "utf-8").encode("utf-32-le")
    codes = pa.Array.from_buffers(pa.uint32(), total, [None, pa.py_buffer(utf32)])  # widened a chunk at a time
    windows = total - size + 1
    within = None
    if size > 1:
        # The windows kept, as runs: each text's own windows, then the size - 1 that straddle it and
        # the next (the last text's are past the end).
        run_ends = array("q", bytes(16 * len(ends)))
        runs = memoryview(run_ends)
        runs[1::2] = memoryview(ends)
        runs[0::2] = _values(pc.subtract(pa.Array.from_buffers(pa.int64(), len(ends), [None, pa.py_buffer(ends)]),
                                         size - 1)).cast("q")
        count = len(run_ends) - 1
        within = pc.run_end_decode(pa.RunEndEncodedArray.from_arrays(
            pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(run_ends)]),
            pa.array([True, False] * (count // 2) + [True], pa.bool_())))
    out = []
    for lo in range(0, windows, _CHUNK):
        m = min(_CHUNK, windows - lo)
        hashed = _window_hashes(codes, lo, m, size)
        out.append(hashed if within is None else pc.filter(hashed, within.slice(lo, m)))
    return (out[0] if len(out) == 1 else pa.concat_arrays(out)), offsets


def _window_hashes(codes: pa.Array, lo: int, m: int, size: int) -> pa.Array:
    """The hashes of the ``m`` windows of ``size`` code points from ``lo`` (see ``shingles``)."""
    wide = codes.slice(lo, m + size - 1).cast(pa.uint64())
    if size == 1:
        return wide
    pairs = pc.add(pc.multiply(wide.slice(0, m + size - 2), _MULTIPLIER), wide.slice(1, m + size - 2))
    hashed = pairs.slice(0, m)
    for j in range(2, size - 1, 2):
        hashed = pc.add(pc.multiply(hashed, _MULTIPLIER_SQUARED), pairs.slice(j, m))
    if size % 2:
        hashed = pc.add(pc.multiply(hashed, _MULTIPLIER), wide.slice(size - 1, m))
    return hashed


def _values(values: pa.Array) -> memoryview:
    """A fixed-width Arrow array's values (no nulls), as bytes (no copy)."""
    width = values.type.byte_width
    return memoryview(values.buffers()[1]).cast("B")[values.offset * width : (values.offset + len(values)) * width]


def _shingle_set(text: str, size: int) -> set[str]:
    """The distinct ``size``-character shingles of a normalised text, as strings (the text itself if shorter)."""
    if len(text) > size:
        return {text[i : i + size] for i in range(len(text) - size + 1)}
    return {text}


def exact_similarity(a: str, b: str, size: int = DEFAULT_SHINGLE) -> float:
    """The exact Jaccard similarity of two normalised texts' ``size``-character shingle sets."""
    x, y = _shingle_set(a, size), _shingle_set(b, size)
    return len(x & y) / len(x | y)


def _u64(values: pa.Array) -> memoryview:
    """A uint64 Arrow array's values, as a typed memoryview (no copy) for rensa."""
    if not len(values):
        return memoryview(array("Q"))
    data = values.buffers()[1]
    return memoryview(data).cast("B")[values.offset * 8 : (values.offset + len(values)) * 8].cast("Q")


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band): the fewest bands, splitting ``num_perm`` evenly (each band is an equal
    slice of the signature), under which a pair at exactly ``threshold`` shares no band with
    probability at most ``MISS``.

    Fewer bands, longer ones, mean fewer candidates; at 0.85 and 128 permutations: 16 bands of 8
    (a pair at 0.85 is missed with probability 0.6 %, at 0.80 5 %, at 0.90 0.02 %)."""
    for bands in (d for d in range(1, num_perm + 1) if num_perm % d == 0):
        rows = num_perm // bands
        if (1 - threshold**rows) ** bands <= MISS:
            return bands, rows
    return num_perm, 1


def margin(threshold: float, num_perm: int) -> float:
    """How far from ``threshold`` an estimate is decided on the exact similarity: three standard
    deviations of the estimate of a pair at ``threshold`` (±0.095 at 0.85 and 128 permutations)."""
    return 3 * math.sqrt(threshold * (1 - threshold) / num_perm)


class _Components:
    def __init__(self, n: int) -> None:
        self.parent = array("q", range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _arange(n: int) -> pa.Array:
    """0, 1, ..., n - 1 (int64), made by a kernel rather than from Python ints."""
    return pc.cast(pc.indices_nonzero(pc.is_null(pa.nulls(n))), pa.int64())


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (and back on after, if it was on).

    rensa's only way out for signatures is ``to_rows``: a list of ``num_perm`` ints per row, each
    list a container the collector tracks, so taking out 100,000 rows triggers its collections
    again and again over the lists still alive (measured: 0.50 CPU s with it, 0.31 without). Nothing
    made here forms a cycle."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


PAIR_BLOCK = 16_384


def _horner(values: list[pa.Array]) -> pa.Array:
    """One 64-bit hash per row of equally long uint64 columns (collisions only make extra candidates)."""
    key = values[0]
    for value in values[1:]:
        key = pc.add(pc.multiply(key, _MULTIPLIER), value)
    return key


def _candidate_pairs(signatures: array[int], num_perm: int, bands: int) -> tuple[pa.Array, pa.Array, int]:
    """The pairs (a < b, ascending) of rows of ``signatures`` (``num_perm`` values a row) to compare,
    and how many rows are candidates (share a band with another row, or equal another row).

    Each band's values are hashed to one 64-bit key (two values to a 64-bit word when they pair up:
    the signatures' buffer, not copied), and the whole signature to the hash of its band keys. Rows
    with equal signatures are one row for the bands: each is paired with the first of them. A band's
    bucket is its key and number hashed together; in each bucket of two rows or more, each row is
    paired with the bucket's first row and with the row before it, in the order of the row's next
    band's key then its number (rows that share that band too are neighbours): two pairs a row,
    however large the bucket. Buckets of two rows or more are found band by band (a hash table of
    one band's rows stays in the CPU's cache), all in pyarrow's kernels."""
    n = len(signatures) // num_perm
    width = num_perm // bands
    per_word = 2 if width % 2 == 0 else 1
    words = pa.Array.from_buffers(pa.uint64() if per_word == 2 else pa.uint32(), n * num_perm // per_word,
                                  [None, pa.py_buffer(signatures)])
    rows = _arange(n)
    at = pc.multiply(rows, num_perm // per_word)
    step = width // per_word
    keys = [_horner([pc.cast(words.take(pc.add(at, band * step + j)), pa.uint64()) for j in range(step)])
            for band in range(bands)]
    whole = _horner(keys)
    first = pc.cast(pc.index_in(whole, value_set=whole), pa.int64())  # the first row with this signature
    copy = pc.not_equal(first, rows)
    copies, originals = pc.filter(rows, copy), pc.filter(first, copy)
    if len(copies):  # the bands of the rows that are no copy
        kept = pc.invert(copy)
        rows, keys = pc.filter(rows, kept), [pc.filter(key, kept) for key in keys]
    position = pc.cast(_arange(len(rows)), pa.int32())
    shared: list[pa.Table] = []
    for band in range(bands):
        bucket = _horner([keys[band], pa.scalar(band, pa.uint64())])
        at_first = pc.index_in(bucket, value_set=bucket)  # the position of the bucket's first row
        later = pc.not_equal(at_first, position)
        in_shared = pc.or_(later, pc.is_in(position, value_set=pc.filter(at_first, later)))
        shared.append(pa.table({"bucket": pc.filter(bucket, in_shared),
                                "next": pc.filter(keys[(band + 1) % bands], in_shared),
                                "c": pc.filter(rows, in_shared)}))
    ordered = pa.concat_tables(shared).combine_chunks()
    ordered = ordered.take(pc.sort_indices(ordered, sort_keys=[("bucket", "ascending"), ("next", "ascending"),
                                                               ("c", "ascending")]))
    bucket, c = ordered.column("bucket").combine_chunks(), ordered.column("c").combine_chunks()
    m = len(c)
    firsts, seconds = [originals], [copies]
    if m:
        opens = pa.concat_arrays([pa.array([True]), pc.not_equal(bucket.slice(1), bucket.slice(0, m - 1))])
        head = pc.fill_null_forward(pc.if_else(opens, c, pa.scalar(None, pa.int64())))  # the bucket's first row
        differ = pc.not_equal(c, head)
        inner = pc.invert(opens.slice(1))  # a row and the row before it, in one bucket
        for x, y in ((pc.filter(head, differ), pc.filter(c, differ)),
                     (pc.filter(c.slice(0, m - 1), inner), pc.filter(c.slice(1), inner))):
            firsts.append(pc.min_element_wise(x, y))
            seconds.append(pc.max_element_wise(x, y))
    pair = pc.unique(pc.add(pc.multiply(pa.concat_arrays(firsts), n), pa.concat_arrays(seconds)))
    pair = pair.take(pc.sort_indices(pair))
    a = pc.divide(pair, n)
    candidates = pc.count_distinct(pa.concat_arrays([c, copies, originals])).as_py()
    return a, pc.subtract(pair, pc.multiply(a, n)), int(candidates)


def _equal_values(signatures: pa.FixedSizeListArray, a: pa.Array, b: pa.Array) -> pa.Array:
    """For each pair (a[i], b[i]) of signature rows, how many of their values are equal (int64)."""
    width = signatures.type.list_size
    out: list[pa.Array] = []
    for lo in range(0, len(a), PAIR_BLOCK):
        x = signatures.take(a.slice(lo, PAIR_BLOCK)).flatten()
        y = signatures.take(b.slice(lo, PAIR_BLOCK)).flatten()
        equal = pa.FixedSizeListArray.from_arrays(pc.cast(pc.equal(x, y), pa.int64()), width)
        running = pc.cumulative_sum(pc.list_flatten(equal))
        ends = pc.list_element(pa.FixedSizeListArray.from_arrays(running, width), width - 1)
        out.append(pc.subtract(ends, pa.concat_arrays([pa.array([0], pa.int64()), ends.slice(0, len(ends) - 1)])))
    return pa.concat_arrays(out) if out else pa.array([], pa.int64())


class _Clusters:
    """The signed rows (numbered 0..n-1, with their signatures and texts) joined into components."""

    def __init__(self, signatures: array[int], texts: pa.ChunkedArray, *, threshold: float, num_perm: int,
                 shingle: int) -> None:
        self.signatures, self.texts = signatures, texts
        values = pa.Array.from_buffers(pa.uint32(), len(signatures), [None, pa.py_buffer(signatures)])
        self.matrix = pa.FixedSizeListArray.from_arrays(values, num_perm)
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.margin = margin(threshold, num_perm)
        self.components = _Components(len(signatures) // num_perm)
        self.sets: dict[int, set[int]] = {}
        self.exact_checks = 0
        self.candidates = 0  # rows that share a band with another row
        self.compared: list[int] = []  # rows in a pair found similar or near, ascending

    def near(self, estimate: float) -> bool:
        return self.threshold - self.margin <= estimate < self.threshold + self.margin

    def estimates(self, a: pa.Array, b: pa.Array) -> pa.Array:
        """The MinHash estimate of each pair (a[i], b[i]): the share of equal values (float64)."""
        return pc.divide(pc.cast(_equal_values(self.matrix, a, b), pa.float64()), float(self.num_perm))

    def read(self, rows: set[int]) -> None:
        """The shingle sets of ``rows`` not read yet: their texts taken out of Arrow, shingled at once."""
        wanted = sorted(c for c in rows if c not in self.sets)
        if wanted:
            hashes, offsets = shingles(self.texts.take(pa.array(wanted, pa.int64())).combine_chunks(), self.shingle)
            values = hashes.to_pylist()
            for c, lo, hi in zip(wanted, offsets, offsets[1:], strict=False):
                self.sets[c] = set(values[lo:hi])

    def exact(self, a: int, b: int) -> float:
        """The exact Jaccard similarity of two read rows' shingle sets (the sets of their 64-bit hashes:
        the sets the estimate samples; two distinct shingles of two prompts share a hash with
        probability ~10^-14)."""
        self.exact_checks += 1
        x, y = self.sets[a], self.sets[b]
        common = len(x & y)
        return common / (len(x) + len(y) - common)

    def similarities(self, pairs: list[tuple[int, int]]) -> list[float]:
        """For each pair, its estimate, or its exact similarity when the estimate is within the margin
        of the threshold."""
        if not pairs:
            return []
        estimates = self.estimates(pa.array([x for x, _ in pairs], pa.int64()),
                                   pa.array([y for _, y in pairs], pa.int64())).to_pylist()
        self.read({c for pair, estimate in zip(pairs, estimates, strict=True) if self.near(estimate) for c in pair})
        return [self.exact(x, y) if self.near(estimate) else estimate
                for (x, y), estimate in zip(pairs, estimates, strict=True)]

    def join(self, bands: int) -> None:
        """Compare the candidate pairs and join the similar ones."""
        if not self.signatures:
            return
        a, b, self.candidates = _candidate_pairs(self.signatures, self.num_perm, bands)
        # The estimates, and which pairs they decide (most pairs are neither similar nor near).
        estimate = self.estimates(a, b)
        similar = pc.greater_equal(estimate, self.threshold + self.margin)
        close = pc.and_(pc.greater_equal(estimate, self.threshold - self.margin),
                        pc.less(estimate, self.threshold + self.margin))
        for x, y in zip(pc.filter(a, similar).to_pylist(), pc.filter(b, similar).to_pylist(), strict=True):
            self.components.union(x, y)
        near = [(x, y) for x, y in zip(pc.filter(a, close).to_pylist(), pc.filter(b, close).to_pylist(), strict=True)
                if self.components.find(x) != self.components.find(y)]
        either = pc.or_(similar, close)
        self.compared = sorted(set(pc.filter(a, either).to_pylist()) | set(pc.filter(b, either).to_pylist()))
        self.read({c for pair in near for c in pair})
        for x, y in near:
            if self.components.find(x) != self.components.find(y) and self.exact(x, y) >= self.threshold:
                self.components.union(x, y)


def near_duplicates(
    store: Store,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    on: On = "prompt",
    num_perm: int = DEFAULT_NUM_PERM,
    shingle: int = DEFAULT_SHINGLE,
    full: bool = False,
) -> NearDupSummary:
    """Cluster the ``chat`` rows whose texts are near-identical; replace the clusters for ``on``.

    Does nothing when no row is new, changed or gone since the last run with the same settings
    (``full``: compute anyway)."""
    if on not in ("prompt", "conversation"):
        raise ValueError(f"on must be 'prompt' or 'conversation', not {on!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}")
    started = time.perf_counter()
    settings = settings_digest(on, threshold, num_perm, shingle)
    if not full and pending(store, on=on, threshold=threshold, num_perm=num_perm, shingle=shingle) == 0:
        (seen,) = store.arrow(
            "select (select count(*) from pass_coverage where pass = ?) as a, count(distinct cluster_id) as b, "
            "count(*) as c from near_duplicate_rows where on_what = ?", [pass_name(on), on]).to_pylist()
        rows_seen, clusters_seen, members_seen = seen["a"], seen["b"], seen["c"]
        return NearDupSummary(on=on, threshold=threshold, rows=int(rows_seen), clusters=int(clusters_seen),
                             rows_in_clusters=int(members_seen), seconds=time.perf_counter() - started,
                             up_to_date=True)
    bands, _ = lsh_bands(threshold, num_perm)
    # Every row's text, into Arrow by one query; the store is held for the query alone.
    # (As Store.unload did: waits as a writer would, and what DuckDB refuses, such as memory, is a QueryError.)
    with store.read(wait=FOREVER) as con, _user_query():  # a pass's first step: it then writes
        rows = interruptible(con, lambda: con.sql(_texts_sql(on)).to_arrow_table())
    import rensa  # imported when used: `curate --help` need not load it

    n = rows.num_rows
    lengths = pc.utf8_length(pc.fill_null(rows.column("text"), ""))
    has_text = pc.greater(lengths, 0)
    signed = pc.indices_nonzero(has_text)  # the row of each signature: rows without text are never clustered
    texts = pc.filter(rows.column("text"), has_text)
    signatures = array("I")  # num_perm values per signed row

    def sign(batch: pa.StringArray) -> rensa.RMinHashDigestMatrix:
        hashes, offsets = shingles(batch, shingle)
        return rensa.RMinHash.digest_matrix_from_flat_token_hashes(_u64(hashes), offsets, num_perm, SEED)

    def take_out(matrix: rensa.RMinHashDigestMatrix) -> None:
        add = signatures.fromlist
        for row in matrix.to_rows():
            add(row)

    # Two threads: one shingles and signs a batch (pyarrow's kernels let go of the GIL) while the
    # other takes the last one's signatures out of rensa.
    with _collector_paused(), ThreadPoolExecutor(1, thread_name_prefix="neardup") as signer:
        signing: Future[rensa.RMinHashDigestMatrix] | None = None
        for chunk in texts.chunks:
            for start in range(0, len(chunk), BATCH_ROWS):
                signed_before, signing = signing, signer.submit(sign, chunk.slice(start, BATCH_ROWS))
                if signed_before is not None:
                    take_out(signed_before.result())
        if signing is not None:
            take_out(signing.result())
        clusters_of = _Clusters(signatures, texts, threshold=threshold, num_perm=num_perm, shingle=shingle)
        clusters_of.join(bands)

        members: dict[int, list[int]] = {}
        find = clusters_of.components.find
        for c in clusters_of.compared:
            members.setdefault(find(c), []).append(c)
        groups = [group for group in members.values() if len(group) > 1]
        # The id, length and finish of the rows in clusters, to name each cluster.
        in_clusters = sorted(c for group in groups for c in group)
        taken = signed.take(pa.array(in_clusters, pa.int64()))
        ids = rows.column("id")
        about = dict(zip(in_clusters, zip(ids.take(taken).to_pylist(), lengths.take(taken).to_pylist(),
                                          rows.column("finished_at").take(taken).to_pylist(), strict=True),
                         strict=True))
        representatives = [min(group, key=lambda c: (-about[c][1], about[c][2] is None, about[c][2], about[c][0]))
                           for group in groups]
        # Each member's similarity to its representative (exact near the threshold), all at once.
        similarity = iter(clusters_of.similarities([(c, rep) for group, rep in zip(groups, representatives, strict=True)
                                                    for c in group if c != rep]))
        out_ids: list[str] = []
        out_clusters: list[str] = []
        out_similarity: list[float] = []
        for group, rep in zip(groups, representatives, strict=True):
            for c in group:
                out_ids.append(about[c][0])
                out_clusters.append(about[rep][0])
                out_similarity.append(1.0 if c == rep else next(similarity))
    found = pa.table(
        {"id": pa.array(out_ids, pa.string()), "cluster_id": pa.array(out_clusters, pa.string()),
         "similarity": pa.array(out_similarity, pa.float64())}
    )
    raw_hashes = rows.column("raw_hash").cast(pa.uint64())
    with store.write() as con:
        con.execute("delete from near_duplicate_rows where on_what = ?", [on])
        con.register("found_near_duplicates", found)
        con.execute(
            "insert into near_duplicate_rows (id, on_what, cluster_id, similarity, threshold, computed_at) "
            "select id, ?, cluster_id, similarity, ?, now() from found_near_duplicates",
            [on, threshold],
        )
        con.unregister("found_near_duplicates")
        # What this run compared: every chat row, with its body, under these settings.
        con.register("compared_rows", pa.table({"id": ids, "raw_hash": raw_hashes}))
        con.execute("delete from pass_coverage where pass = ?", [pass_name(on)])
        con.execute("insert into pass_coverage (pass, id, raw_hash, settings, scanned_at) "
                    "select ?, id, raw_hash, ?, now() from compared_rows", [pass_name(on), settings])
        con.unregister("compared_rows")
        con.execute("delete from pass_settings where pass = ?", [pass_name(on)])
        con.execute("insert into pass_settings values (?, ?, ?, now())", [
            pass_name(on), settings,
            json.dumps({"on": on, "threshold": threshold, "num_perm": num_perm, "shingle": shingle})])
    return NearDupSummary(
        on=on, threshold=threshold, rows=n, clusters=len(groups), rows_in_clusters=len(out_ids),
        seconds=time.perf_counter() - started, candidates=clusters_of.candidates, exact_checks=clusters_of.exact_checks,
    )
