"""Near-duplicate chat rows: MinHash signatures, LSH bands, clusters kept in ``near_duplicate_rows``.

``near_duplicates(store)`` reads each row of the ``chat`` view once, as Arrow batches: DuckDB
extracts the text of the messages (the request's on ``on="prompt"``, all of them on
``on="conversation"``; ``curate.messages.conversation_text``) and normalises it (lowercase,
punctuation removed, whitespace collapsed).

**Shingles.** Each text is the set of its ``shingle``-character shingles (the text itself if
shorter). Characters, not words: chat prompts are short, and in a 40-word prompt one changed word
alters 5 of 37 word 5-grams (Jaccard ~0.76, a miss at 0.85) but ~10 of ~250 character 5-grams
(~0.92, a hit), while unrelated prompts share few character 5-grams. No Python object is made per
shingle: ``shingles`` hashes a batch's every shingle to 64 bits with pyarrow's kernels over the
batch's code points, and rensa signs the flat hashes (``digest_matrix_from_flat_token_hashes``,
128 permutations, fixed seed).

**Candidates, in linear time.** The signatures go into rensa's LSH index, ``bands`` bands of
``rows`` values each (``lsh_bands``: the fewest bands under which a pair at exactly ``threshold``
is missed with probability at most 1 %; 16 bands of 8 at 0.85). The rows that share a whole band
with another row are the candidates, the only ones read, shingled and signed again to be compared
in Python. Rows with equal signatures count once; in each band's bucket each row is compared with
the bucket's first row and with the row before it (in the order of the next band, so rows that
share it too are neighbours): two comparisons a row per band, never one per pair of rows.

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
from dataclasses import dataclass
from itertools import chain, compress
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


def shingles(texts: Sequence[str], size: int) -> tuple[pa.UInt64Array, array[int]]:
    """The ``size``-character shingles of each normalised text, hashed to 64 bits, in flat arrays.

    Returns ``(hashes, offsets)``: the hashes of text ``i``'s shingles are
    ``hashes[offsets[i]:offsets[i + 1]]`` (a shingle that recurs is there each time; an empty text
    has none; a text shorter than ``size`` is one shingle, itself). No Python object is made per
    shingle: the batch is one UTF-32 string, and pyarrow's kernels hash every window of ``size``
    code points at once, ``c0·M^(size-1) + c1·M^(size-2) + ... + c(size-1)`` modulo 2^64 for the
    odd constant M. Windows that straddle two texts are dropped. A short text is padded with a lone
    surrogate, a code point no decoded UTF-8 text holds, so its one shingle is no other text's.
    ``_shingle_set`` is the same shingling, as strings.
    """
    padded = [t if len(t) >= size or not t else t + _PAD * (size - len(t)) for t in texts]
    offsets = array("Q", [0])
    ends = array("q")  # where each non-empty text ends, in code points
    rows = array("q")  # which text that is
    total = count = 0
    for i, text in enumerate(padded):
        if text:
            total += len(text)
            ends.append(total)
            rows.append(i)
            count += len(text) - size + 1
        offsets.append(count)
    if not count:
        return pa.array([], pa.uint64()), offsets
    codes = pa.Array.from_buffers(
        pa.uint32(), total, [None, pa.py_buffer("".join(padded).encode("utf-32-le", "surrogatepass"))]
    ).cast(pa.uint64())
    windows = total - size + 1
    hashes = codes.slice(0, windows)
    for j in range(1, size):
        hashes = pc.add(pc.multiply(hashes, _MULTIPLIER), codes.slice(j, windows))
    text_of = pc.run_end_decode(pa.RunEndEncodedArray.from_arrays(pa.array(ends, pa.int64()), pa.array(rows, pa.int64())))
    within = pc.equal(text_of.slice(0, windows), text_of.slice(size - 1, windows))
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
    """(bands, rows per band): the fewest bands, splitting ``num_perm`` evenly (rensa's index needs
    that), under which a pair at exactly ``threshold`` shares no band with probability at most ``MISS``.

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


# Candidate pairs, from each candidate's band keys (``banded``: c, band, key, next) and whole
# signature's key (``signed``: c, whole). Rows with equal signatures are one row for the bands: each
# is paired with the first of them. In a band's bucket each row is paired with the bucket's first
# row and with the row before it, in the order of the next band's key (rows that share that band
# too are neighbours): two pairs a row, however large the bucket.
_PAIRS_SQL = """
    with same as (select c, min(c) over (partition by whole) as first from signed),
    banded_once as (select b.* from banded b semi join (select c from same where c = first) using (c)),
    shared as (select band, key from banded_once group by band, key having count(*) > 1),
    ordered as (
        select c, first_value(c) over w as first, lag(c) over w as before
        from banded_once semi join shared using (band, key)
        window w as (partition by band, key order by next, c)
    )
    select first as a, c as b from same where c <> first
    union
    select least(c, first), greatest(c, first) from ordered where c <> first
    union
    select least(c, before), greatest(c, before) from ordered where before is not null
    order by a, b
"""
PAIR_BLOCK = 16_384


def _horner(values: list[pa.Array]) -> pa.Array:
    """One 64-bit hash per row of equally long unsigned columns (collisions only make extra candidates)."""
    key = pc.cast(values[0], pa.uint64())
    for value in values[1:]:
        key = pc.add(pc.multiply(key, _MULTIPLIER), pc.cast(value, pa.uint64()))
    return key


def _candidate_pairs(signatures: pa.FixedSizeListArray, bands: int, per_band: int) -> tuple[pa.Array, pa.Array]:
    """The pairs (a < b) of candidates to compare, numbered as ``signatures``' rows (see ``_PAIRS_SQL``)."""
    import duckdb

    n = len(signatures)
    keys = [_horner([pc.list_element(signatures, band * per_band + j) for j in range(per_band)])
            for band in range(bands)]
    c = pa.array(range(n), pa.int64())
    signed = pa.table({"c": c, "whole": _horner(keys)})
    banded = pa.concat_tables([
        pa.table({"c": c, "band": pa.repeat(pa.scalar(band, pa.int32()), n), "key": keys[band],
                  "next": keys[(band + 1) % bands]})
        for band in range(bands)])
    with duckdb.connect() as con:
        con.register("signed", signed)
        con.register("banded", banded)
        pairs = con.sql(_PAIRS_SQL).to_arrow_table()
    return pairs.column("a").combine_chunks(), pairs.column("b").combine_chunks()


def _equal_values(signatures: pa.FixedSizeListArray, a: pa.Array, b: pa.Array) -> list[int]:
    """For each pair (a[i], b[i]) of signature rows, how many of their values are equal."""
    width = signatures.type.list_size
    out: list[int] = []
    for lo in range(0, len(a), PAIR_BLOCK):
        x = signatures.take(a.slice(lo, PAIR_BLOCK)).flatten()
        y = signatures.take(b.slice(lo, PAIR_BLOCK)).flatten()
        running = pc.cumulative_sum(pc.cast(pc.equal(x, y), pa.int64()))
        ends = running.take(pa.array(range(width - 1, len(running), width), pa.int64())).to_pylist()
        out.extend(end - start for start, end in zip([0, *ends[:-1]], ends, strict=True))
    return out


class _Clusters:
    """Candidates (numbered 0..n-1, with their signatures and row numbers) joined into components."""

    def __init__(self, signatures: array[int], rows: array[int], reading: pq.ParquetFile, *, threshold: float,
                 num_perm: int, shingle: int) -> None:
        self.signatures, self.rows, self.reading = signatures, rows, reading
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.margin = margin(threshold, num_perm)
        self.components = _Components(len(rows))
        self.texts: dict[int, str] = {}
        self.sets: dict[int, set[str]] = {}
        self.exact_checks = 0

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

    def join(self, bands: int, per_band: int) -> None:
        """Compare the candidate pairs and join the similar ones."""
        if not self.rows:
            return
        values = pa.Array.from_buffers(pa.uint32(), len(self.signatures), [None, pa.py_buffer(self.signatures)])
        signatures = pa.FixedSizeListArray.from_arrays(values, self.num_perm)
        a, b = _candidate_pairs(signatures, bands, per_band)
        near: list[tuple[int, int]] = []
        for x, y, equal in zip(a.to_pylist(), b.to_pylist(), _equal_values(signatures, a, b), strict=True):
            estimate = equal / self.num_perm
            if estimate >= self.threshold + self.margin:
                self.components.union(x, y)
            elif self.near(estimate):
                near.append((x, y))
        near = [(x, y) for x, y in near if self.components.find(x) != self.components.find(y)]
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
    bands, per_band = lsh_bands(threshold, num_perm)
    id_parts: list[pa.Array] = []
    hash_parts: list[pa.Array] = []
    finished_parts: list[pa.Array] = []
    length_parts: list[pa.Array] = []
    signed = array("q")  # the row number of each signature: rows without text have none, and are never clustered
    candidate_rows = array("q")  # the row number of each candidate (a row that shares a band with another)
    candidate_signatures = array("I")  # num_perm values per candidate
    n = 0
    with store.scratch() as folder:
        import rensa  # imported when used: `curate --help` need not load it

        unloaded = Path(folder) / "texts.parquet"
        store.unload(_texts_sql(on), unloaded, row_group_rows=BATCH_ROWS)
        index = rensa.RMinHashLSH(threshold, num_perm, bands)
        matrices = []
        with pq.ParquetFile(unloaded) as reading:
            for batch in reading.iter_batches(batch_size=BATCH_ROWS, columns=["id", "finished_at", "raw_hash", "text"]):
                id_parts.append(batch.column("id"))
                hash_parts.append(batch.column("raw_hash"))
                finished_parts.append(batch.column("finished_at"))
                lengths = pc.utf8_length(pc.fill_null(batch.column("text"), ""))
                length_parts.append(lengths)
                has_text = pc.greater(lengths, 0)
                signed.extend(n + i for i in pc.indices_nonzero(has_text).to_pylist())
                n += batch.num_rows
                texts = pc.filter(batch.column("text"), has_text).to_pylist()
                if texts:
                    hashes, offsets = shingles(texts, shingle)
                    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(_u64(hashes), offsets, num_perm, SEED)
                    index.insert_matrix(matrix, start_key=len(signed) - len(texts))
                    matrices.append(matrix)
            # The candidates: the rows that share a whole band with another row, and their signatures.
            first = 0
            for matrix in matrices:
                flags = index.query_duplicate_flags_matrix(matrix)
                if any(flags):
                    candidate_rows.extend(compress(signed[first : first + len(flags)], flags))
                    candidate_signatures.extend(chain.from_iterable(compress(matrix.to_rows(), flags)))
                first += matrix.len()
            del matrices, index
            clusters_of = _Clusters(candidate_signatures, candidate_rows, reading, threshold=threshold,
                                    num_perm=num_perm, shingle=shingle)
            clusters_of.join(bands, per_band)

            members: dict[int, list[int]] = {}
            find = clusters_of.components.find
            for c in range(len(candidate_rows)):
                members.setdefault(find(c), []).append(c)
            groups = [group for group in members.values() if len(group) > 1]
            # The id, length and finish of the rows in clusters, to name each cluster.
            in_clusters = sorted(c for group in groups for c in group)
            taken = pa.array([candidate_rows[c] for c in in_clusters], pa.int64())
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
        seconds=time.perf_counter() - started, candidates=len(candidate_rows), exact_checks=clusters_of.exact_checks,
    )
