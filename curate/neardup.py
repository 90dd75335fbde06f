"""Near-duplicate chat rows: MinHash signatures, LSH bands, clusters kept in ``near_duplicate_rows``.

``near_duplicates(store)`` reads each row of the ``chat`` view once, as Arrow batches: DuckDB
extracts the text of the messages (the request's on ``on="prompt"``, all of them on
``on="conversation"``; ``curate.messages.conversation_text``) and normalises it (lowercase,
punctuation removed, whitespace collapsed).
Each text becomes a set of ``shingle``-character shingles and a MinHash signature (rensa, fixed
seed). Characters, not words: chat prompts are short, and in a 40-word prompt one changed word
alters 5 of 37 word 5-grams (Jaccard ~0.76, a miss at 0.85) but ~10 of ~250 character 5-grams
(~0.92, a hit), while unrelated prompts share few character 5-grams. Rows whose signatures agree on a whole
LSH band are candidates; candidates whose estimated Jaccard similarity reaches ``threshold`` are
joined, and the connected components of two rows or more are the clusters. A cluster is named by
its representative: the longest text, then the first finished, then the smallest id.

The store is not held while Python shingles and hashes: the texts are copied to a temporary
Parquet file under one read-only connection (``Store.unload``), and read from it a batch at a
time once the store is let go. The clusters replace the previous ones for the same ``on`` in one
short transaction.

**What a run has seen.** Each run records the rows it compared (``pass_coverage``, pass
``near:<on>``, with each row's body hash and a digest of the settings) and its settings
(``pass_settings``). A run whose settings and rows are those already recorded does nothing; when
any row is new or changed (or gone), or the settings differ, the clusters are computed again over
every row: a new row can join, merge or re-represent any cluster, and a full recompute is the
simple way to be right (incremental LSH would need the signatures kept in the store).
"""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from curate.messages import conversation_text
from curate.store import Store

__all__ = ["NearDupSummary", "near_duplicates", "pending", "recorded_settings"]

On = Literal["prompt", "conversation"]
SEED = 1729
BATCH_ROWS = 10_000


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


DEFAULT_THRESHOLD = 0.85
DEFAULT_NUM_PERM = 128
DEFAULT_SHINGLE = 5
# Bumped when the texts compared or the clustering change in a way the settings do not show.
# 2: a message's text is curate.messages' rule (only "text" parts with a string text count).
VERSION = 2


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


def shingles(text: str, size: int) -> list[str]:
    """The distinct ``size``-character shingles of a normalised text (the text itself if shorter)."""
    if len(text) > size:
        return sorted({text[i : i + size] for i in range(len(text) - size + 1)})
    return [text]


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising false positives plus false negatives around ``threshold``."""

    def integral(f: object, lo: float, hi: float) -> float:
        steps = 200
        width = (hi - lo) / steps
        return sum(f(lo + (i + 0.5) * width) for i in range(steps)) * width  # type: ignore[operator]

    best = (num_perm, 1)
    best_error = float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = integral(lambda s, b=b, r=r: 1 - (1 - s**r) ** b, 0.0, threshold)
            fn = integral(lambda s, b=b, r=r: 1 - (1 - (1 - s**r) ** b), threshold, 1.0)
            if fp + fn < best_error:
                best, best_error = (b, r), fp + fn
    return best


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
    ids: list[str] = []
    hashes: list[int] = []
    finished: list[object] = []
    lengths = array("q")
    signatures = array("I")  # num_perm per row with text; rows without text have none
    has_text = bytearray()
    with store.scratch() as folder:
        import rensa  # imported when used: `curate --help` need not load it

        unloaded = Path(folder) / "texts.parquet"
        store.unload(_texts_sql(on), unloaded, row_group_rows=BATCH_ROWS)
        with pq.ParquetFile(unloaded) as reading:
            for batch in reading.iter_batches(batch_size=BATCH_ROWS, columns=["id", "finished_at", "raw_hash", "text"]):
                texts = batch.column("text").to_pylist()
                ids.extend(batch.column("id").to_pylist())
                hashes.extend(batch.column("raw_hash").to_pylist())
                finished.extend(batch.column("finished_at").to_pylist())
                token_sets = []
                for text in texts:
                    text = text or ""
                    lengths.append(len(text))
                    has_text.append(1 if text else 0)
                    if text:
                        token_sets.append(shingles(text, shingle))
                if token_sets:
                    matrix = rensa.RMinHash.digest_matrix_from_token_sets(token_sets, num_perm, SEED)
                    for row in matrix.to_rows():
                        signatures.extend(row)
    n = len(ids)
    # Row number of each signature (rows without text are never clustered).
    signed = [i for i in range(n) if has_text[i]]
    components = _Components(n)

    def similarity(a: int, b: int) -> float:
        sa, sb = a * num_perm, b * num_perm
        x, y = signatures[sa : sa + num_perm], signatures[sb : sb + num_perm]
        return sum(1 for p, q in zip(x, y, strict=True) if p == q) / num_perm

    bands, per_band = lsh_bands(threshold, num_perm)
    for band in range(bands):
        lo = band * per_band
        keys = [hash(signatures[s * num_perm + lo : s * num_perm + lo + per_band].tobytes()) for s in range(len(signed))]
        order = sorted(range(len(signed)), key=keys.__getitem__)
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and keys[order[end]] == keys[order[start]]:
                end += 1
            if end - start > 1:
                # Compare each member with one member of each component already in the bucket.
                reps: list[int] = []
                for s in sorted(order[start:end]):
                    for m in reps:
                        if components.find(signed[s]) != components.find(signed[m]) and similarity(s, m) >= threshold:
                            components.union(signed[s], signed[m])
                    if all(components.find(signed[m]) != components.find(signed[s]) for m in reps):
                        reps.append(s)
            start = end

    signature_of = {row: s for s, row in enumerate(signed)}
    members: dict[int, list[int]] = {}
    for row in signed:
        members.setdefault(components.find(row), []).append(row)
    out_ids: list[str] = []
    out_clusters: list[str] = []
    out_similarity: list[float] = []
    clusters = 0
    for rows in members.values():
        if len(rows) < 2:
            continue
        clusters += 1
        rep = min(rows, key=lambda r: (-lengths[r], finished[r] is None, finished[r], ids[r]))
        for row in rows:
            out_ids.append(ids[row])
            out_clusters.append(ids[rep])
            out_similarity.append(1.0 if row == rep else similarity(signature_of[row], signature_of[rep]))
    found = pa.table(
        {"id": pa.array(out_ids, pa.string()), "cluster_id": pa.array(out_clusters, pa.string()),
         "similarity": pa.array(out_similarity, pa.float64())}
    )
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
        con.register("compared_rows", pa.table({"id": pa.array(ids, pa.string()),
                                                "raw_hash": pa.array(hashes, pa.uint64())}))
        con.execute("delete from pass_coverage where pass = ?", [pass_name(on)])
        con.execute("insert into pass_coverage (pass, id, raw_hash, settings, scanned_at) "
                    "select ?, id, raw_hash, ?, now() from compared_rows", [pass_name(on), settings])
        con.unregister("compared_rows")
        con.execute("delete from pass_settings where pass = ?", [pass_name(on)])
        con.execute("insert into pass_settings values (?, ?, ?, now())", [
            pass_name(on), settings,
            json.dumps({"on": on, "threshold": threshold, "num_perm": num_perm, "shingle": shingle})])
    return NearDupSummary(
        on=on, threshold=threshold, rows=n, clusters=clusters, rows_in_clusters=len(out_ids),
        seconds=time.perf_counter() - started,
    )
