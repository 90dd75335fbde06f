"""Near-duplicate chat rows: MinHash signatures, LSH bands, clusters kept in ``near_duplicate_rows``.

``near_duplicates(store)`` reads each row of the ``chat`` view once, as Arrow batches: DuckDB
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
signs a batch while the other reads the next and takes the last one's signatures out of rensa
(as Python lists, its only way out) into one flat array.

**Candidates, in linear time.** Each signature is cut into ``bands`` bands of ``rows`` values
(``lsh_bands``: the fewest bands under which a pair at exactly ``threshold`` is missed with
probability at most 1 %; 16 bands of 8 at 0.85), each band hashed to a 64-bit bucket by pyarrow,
and DuckDB finds the buckets of two rows or more (as rensa's LSH index would). The rows in them
are the candidates. Rows with equal signatures count once; in each bucket each row is compared
with the bucket's first row and with the row before it (in the order of the next band, so rows
that share it too are neighbours): two comparisons a row per band, never one per pair of rows.

**Decided on the exact value near the threshold.** A pair's MinHash estimate (the share of equal
values) is off by ~0.03 at 128 permutations, so a pair whose estimate is within ``margin`` of the
threshold (three standard deviations: ±0.095 at 0.85) is decided on the exact Jaccard similarity
of the two shingle sets (``exact_similarity``); further away, on the estimate. The pairs found
similar are joined, and the connected components of two rows or more are the clusters. A cluster
is named by its representative: the longest text, then the first finished, then the smallest id.
Each member keeps its similarity to the representative, exact when the estimate is near the
threshold.

The store is not held while Python shingles and hashes: the texts are copied to a temporary
Parquet file under one read-only connection (``Store.unload``), and read from it a batch at a
time once the store is let go (the candidates' texts a second time). The clusters replace the
previous ones for the same ``on`` in one short transaction.

**What a run has seen.** Each run records the rows it compared (``pass_coverage``, pass
``near:<on>``, with each row's body hash and a digest of the settings) and its settings
(``pass_settings``). A run whose settings and rows are those already recorded does nothing; when
any row is new or changed (or gone), or the settings differ, the clusters are computed again over
every row: a new row can join, merge or re-represent any cluster, and a full recompute is the
simple way to be right (incremental LSH would need the signatures kept in the store).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import operator
import time
from array import array
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.messages import conversation_text
from curate.store import Store

__all__ = ["NearDupSummary", "exact_similarity", "near_duplicates", "pending", "recorded_settings"]

On = Literal["prompt", "conversation"]
SEED = 1729
BATCH_ROWS = 10_000
# The largest chance that LSH misses a pair at exactly the threshold (lsh_bands).
MISS = 0.01
# Shingle hashing: an odd 64-bit multiplier, and what pads a text shorter than a shingle.
_MULTIPLIER = pa.scalar(0x9E3779B97F4A7C15, pa.uint64())
_PAD = "\udc80"


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
    modulo 2^64 for the odd constant M. Windows that straddle two texts are dropped. A short text is
    padded with a lone surrogate, a code point no decoded UTF-8 text holds, so its one shingle is no
    other text's. ``_shingle_set`` is the same shingling, as strings.
    """
    strings = texts if isinstance(texts, pa.Array) else pa.array(list(texts), pa.string())
    strings = pc.fill_null(strings, "")
    lengths = pc.utf8_length(strings).to_pylist()
    offsets = array("Q", [0])
    # The windows kept, as runs: each text's own windows, then the size - 1 that straddle it and the next.
    run_ends = array("q")
    short: list[int] = []  # the texts shorter than a shingle, padded
    total = count = 0
    for i, length in enumerate(lengths):
        if length:
            if length < size:
                short.append(i)
                length = size
            total += length
            run_ends.append(total - size + 1)
            run_ends.append(total)
            count += length - size + 1
        offsets.append(count)
    if not count:
        return pa.array([], pa.uint64()), offsets
    bounds = strings.buffers()[1]
    raw = memoryview(bounds).cast("B")
    starts = (raw.cast("q") if pa.types.is_large_string(strings.type) else raw.cast("i"))[
        strings.offset : strings.offset + len(strings) + 1]
    data = memoryview(strings.buffers()[2]).cast("B")
    if short:  # the texts between two short ones as they are, each short one padded
        pieces, at = [], starts[0]
        for i in short:
            pieces += [data[at : starts[i + 1]], (_PAD * (size - lengths[i])).encode("utf-8", "surrogatepass")]
            at = starts[i + 1]
        pieces.append(data[at : starts[-1]])
        utf32 = b"".join(pieces).decode("utf-8", "surrogatepass").encode("utf-32-le", "surrogatepass")
    else:
        utf32 = str(data[starts[0] : starts[-1]], "utf-8").encode("utf-32-le")
    codes = pa.Array.from_buffers(pa.uint32(), total, [None, pa.py_buffer(utf32)]).cast(pa.uint64())
    windows = total - size + 1
    hashes = codes.slice(0, windows)
    for j in range(1, size):
        hashes = pc.add(pc.multiply(hashes, _MULTIPLIER), codes.slice(j, windows))
    if size == 1:
        return hashes, offsets
    runs = len(run_ends) - 1  # the last text's straddling windows are past the end
    kept = [True, False] * (runs // 2) + [True]
    within = pc.run_end_decode(pa.RunEndEncodedArray.from_arrays(
        pa.Array.from_buffers(pa.int64(), runs, [None, pa.py_buffer(run_ends)]), pa.array(kept, pa.bool_())))
    return pc.filter(hashes, within), offsets


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


def _texts_at(reading: pq.ParquetFile, rows: Sequence[int]) -> list[str]:
    """The texts of the unloaded rows ``rows`` (ascending), read again one batch at a time."""
    out: list[str] = []
    start = k = 0
    for batch in reading.iter_batches(batch_size=BATCH_ROWS, columns=["text"]):
        if k == len(rows):
            break
        end = start + batch.num_rows
        j = bisect.bisect_left(rows, end, k)
        if j > k:
            picked = pa.array([r - start for r in rows[k:j]], pa.int64())
            out.extend(t or "" for t in batch.column("text").take(picked).to_pylist())
        k, start = j, end
    return out


# Candidate pairs, from every signature's bands (``keys``: i = row * bands + band, bucket: a 64-bit
# hash of the band's values and number, next: the key of the row's next band) and whole signature
# (``wholes``: i = row, whole: its 64-bit hash). Rows with equal signatures are one row for the
# bands: each is paired with the first of them. In a band's bucket each row is
# paired with the bucket's first row and with the row before it, in the order of the row's next band
# (rows that share that band too are neighbours): two pairs a row, however large the bucket. The
# candidates are the rows that share a band with another row (equal rows share them all).
_PAIRS_SQL = """
    create temp table same as select i as c, min(i) over (partition by whole) as first from wholes;
    create temp table banded as
        select i // {bands} as c, bucket, next from keys
        semi join (select c from same where c = first) on i // {bands} = c;
    create temp table ordered as
        with shared as (select bucket from banded group by bucket having count(*) > 1)
        select c, first_value(c) over w as first, lag(c) over w as before
        from banded semi join shared using (bucket)
        window w as (partition by bucket order by next, c);
"""
_PAIRS_OUT_SQL = """
    select first as a, c as b from same where c <> first
    union
    select least(c, first), greatest(c, first) from ordered where c <> first
    union
    select least(c, before), greatest(c, before) from ordered where before is not null
    order by a, b
"""
_CANDIDATES_SQL = """
    select count(*) from same s
    where c <> first or exists (select 1 from same d where d.first = s.c and d.c <> d.first)
       or exists (select 1 from ordered o where o.c = s.c)
"""
PAIR_BLOCK = 16_384


def _horner(values: list[pa.Array]) -> pa.Array:
    """One 64-bit hash per row of equally long uint64 columns (collisions only make extra candidates)."""
    key = values[0]
    for value in values[1:]:
        key = pc.add(pc.multiply(key, _MULTIPLIER), value)
    return key


def _candidate_pairs(signatures: array[int], num_perm: int, bands: int) -> tuple[pa.Array, pa.Array, int]:
    """The pairs (a < b) of rows of ``signatures`` (``num_perm`` values a row) to compare, and how
    many rows are candidates (share a band with another row); see ``_PAIRS_SQL``."""
    import duckdb

    n = len(signatures) // num_perm
    numbers = pa.Array.from_buffers(pa.int64(), n * bands, [None, pa.py_buffer(array("q", range(n * bands)))])
    # Each band's values, two to a 64-bit word when they pair up (the signatures' buffer, not
    # copied), hashed to one key.
    per_word = 2 if (num_perm // bands) % 2 == 0 else 1
    words = pa.Array.from_buffers(pa.uint64() if per_word == 2 else pa.uint32(), n * num_perm // per_word,
                                  [None, pa.py_buffer(signatures)])
    banded = pa.FixedSizeListArray.from_arrays(words, num_perm // bands // per_word)
    key = _horner([pc.cast(pc.list_element(banded, j), pa.uint64()) for j in range(banded.type.list_size)])
    rows = pa.FixedSizeListArray.from_arrays(key, bands)
    band = pc.subtract(numbers, pc.multiply(pc.divide(numbers, bands), bands))
    following = pc.subtract(pc.add(numbers, 1), pc.multiply(pc.cast(pc.equal(band, bands - 1), pa.int64()), bands))
    # The bucket: the band's key and its number, in one word.
    bucket = _horner([key, pc.cast(band, pa.uint64())])
    keys = pa.table({"i": numbers, "bucket": bucket, "next": key.take(following)})
    wholes = pa.table({"i": numbers.slice(0, n), "whole": _horner([pc.list_element(rows, j) for j in range(bands)])})
    with duckdb.connect() as con:
        con.register("keys", keys)
        con.register("wholes", wholes)
        con.execute(_PAIRS_SQL.format(bands=int(bands)))
        pairs = con.sql(_PAIRS_OUT_SQL).to_arrow_table()
        ((candidates,),) = con.sql(_CANDIDATES_SQL).fetchall()
    return pairs.column("a").combine_chunks(), pairs.column("b").combine_chunks(), int(candidates)


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
    """The signed rows (numbered 0..n-1, with their signatures and row numbers) joined into components."""

    def __init__(self, signatures: array[int], rows: array[int], reading: pq.ParquetFile, *, threshold: float,
                 num_perm: int, shingle: int) -> None:
        self.signatures, self.rows, self.reading = signatures, rows, reading
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.margin = margin(threshold, num_perm)
        self.components = _Components(len(rows))
        self.texts: dict[int, str] = {}
        self.sets: dict[int, set[str]] = {}
        self.exact_checks = 0
        self.candidates = 0  # rows that share a band with another row
        self.compared: list[int] = []  # rows in a pair found similar or near, ascending

    def near(self, estimate: float) -> bool:
        return self.threshold - self.margin <= estimate < self.threshold + self.margin

    def read(self, candidates: set[int]) -> None:
        """Read the texts of ``candidates`` not read yet (for their exact similarity)."""
        wanted = sorted({self.rows[c] for c in candidates if c not in self.texts})
        if wanted:
            by_row = dict(zip(wanted, _texts_at(self.reading, wanted), strict=True))
            for c in candidates:
                self.texts.setdefault(c, by_row.get(self.rows[c], ""))

    def exact(self, a: int, b: int) -> float:
        self.exact_checks += 1
        sets = []
        for c in (a, b):
            if c not in self.sets:
                self.sets[c] = _shingle_set(self.texts[c], self.shingle)
            sets.append(self.sets[c])
        x, y = sets
        return len(x & y) / len(x | y)

    def estimate(self, a: int, b: int) -> float:
        width = self.num_perm
        x = self.signatures[a * width : (a + 1) * width]
        y = self.signatures[b * width : (b + 1) * width]
        return sum(map(operator.eq, x, y)) / width

    def similarity(self, a: int, b: int) -> float:
        """The estimate, or the exact similarity when the estimate is within the margin of the threshold."""
        estimate = self.estimate(a, b)
        if not self.near(estimate):
            return estimate
        self.read({a, b})
        return self.exact(a, b)

    def join(self, bands: int) -> None:
        """Compare the candidate pairs and join the similar ones."""
        if not self.rows:
            return
        values = pa.Array.from_buffers(pa.uint32(), len(self.signatures), [None, pa.py_buffer(self.signatures)])
        signatures = pa.FixedSizeListArray.from_arrays(values, self.num_perm)
        a, b, self.candidates = _candidate_pairs(self.signatures, self.num_perm, bands)
        # The estimates, and which pairs they decide (most pairs are neither similar nor near).
        estimate = pc.divide(pc.cast(_equal_values(signatures, a, b), pa.float64()), float(self.num_perm))
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
    id_parts: list[pa.Array] = []
    hash_parts: list[pa.Array] = []
    finished_parts: list[pa.Array] = []
    length_parts: list[pa.Array] = []
    signed = array("q")  # the row number of each signature: rows without text have none, and are never clustered
    signatures = array("I")  # num_perm values per signed row
    n = 0
    with store.scratch() as folder:
        import rensa  # imported when used: `curate --help` need not load it

        unloaded = Path(folder) / "texts.parquet"
        store.unload(_texts_sql(on), unloaded, row_group_rows=BATCH_ROWS)
        def sign(texts: pa.StringArray) -> rensa.RMinHashDigestMatrix:
            hashes, offsets = shingles(texts, shingle)
            return rensa.RMinHash.digest_matrix_from_flat_token_hashes(_u64(hashes), offsets, num_perm, SEED)

        def take_out(matrix: rensa.RMinHashDigestMatrix) -> None:
            add = signatures.fromlist
            for row in matrix.to_rows():
                add(row)

        # Two threads: one shingles and signs a batch (pyarrow and rensa let go of the GIL) while
        # the other reads the next batch and takes the last one's signatures out of rensa.
        with pq.ParquetFile(unloaded) as reading, ThreadPoolExecutor(1, thread_name_prefix="neardup") as signer:
            signing: Future[rensa.RMinHashDigestMatrix] | None = None
            for batch in reading.iter_batches(batch_size=BATCH_ROWS, columns=["id", "finished_at", "raw_hash", "text"]):
                id_parts.append(batch.column("id"))
                hash_parts.append(batch.column("raw_hash"))
                finished_parts.append(batch.column("finished_at"))
                lengths = pc.utf8_length(pc.fill_null(batch.column("text"), ""))
                length_parts.append(lengths)
                has_text = pc.greater(lengths, 0)
                signed.extend(n + i for i in pc.indices_nonzero(has_text).to_pylist())
                n += batch.num_rows
                texts = pc.filter(batch.column("text"), has_text)
                if len(texts):
                    signed_before, signing = signing, signer.submit(sign, texts)
                    if signed_before is not None:
                        take_out(signed_before.result())
            if signing is not None:
                take_out(signing.result())
            clusters_of = _Clusters(signatures, signed, reading, threshold=threshold, num_perm=num_perm,
                                    shingle=shingle)
            clusters_of.join(bands)

            members: dict[int, list[int]] = {}
            find = clusters_of.components.find
            for c in clusters_of.compared:
                members.setdefault(find(c), []).append(c)
            groups = [group for group in members.values() if len(group) > 1]
            # The id, length and finish of the rows in clusters, to name each cluster.
            in_clusters = sorted(c for group in groups for c in group)
            taken = pa.array([signed[c] for c in in_clusters], pa.int64())
            ids = pa.chunked_array(id_parts, pa.string()) if id_parts else pa.chunked_array([], pa.string())
            about = dict(zip(in_clusters, zip(
                ids.take(taken).to_pylist(),
                pa.chunked_array(length_parts, pa.int32()).take(taken).to_pylist() if length_parts else [],
                pa.chunked_array(finished_parts).take(taken).to_pylist() if finished_parts else [], strict=True),
                strict=True))
            out_ids: list[str] = []
            out_clusters: list[str] = []
            out_similarity: list[float] = []
            for group in groups:
                rep = min(group, key=lambda c: (-about[c][1], about[c][2] is None, about[c][2], about[c][0]))
                for c in group:
                    out_ids.append(about[c][0])
                    out_clusters.append(about[rep][0])
                    out_similarity.append(1.0 if c == rep else clusters_of.similarity(c, rep))
    found = pa.table(
        {"id": pa.array(out_ids, pa.string()), "cluster_id": pa.array(out_clusters, pa.string()),
         "similarity": pa.array(out_similarity, pa.float64())}
    )
    raw_hashes = pa.chunked_array(hash_parts).cast(pa.uint64()) if hash_parts else pa.chunked_array([], pa.uint64())
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
