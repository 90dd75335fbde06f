"""The near-duplicate pass's vectorised steps against plain-Python statements of the same rules.

Shingles are hashed a chunk of windows at a time, LSH buckets are found band by band with pyarrow's
kernels, exact similarities are taken on the shingles' 64-bit hashes, and Python's cyclic collector
is off while signatures come out of rensa: each must give what the rule it implements says.
"""

from __future__ import annotations

import gc
import itertools
import json
import random
from array import array
from typing import Any

import pyarrow as pa
import pytest

from curate import neardup
from curate.neardup import exact_similarity, near_duplicates, shingles
from curate.store import Store
from curate.synthetic import generation_record

M = 0x9E3779B97F4A7C15
MASK = 2**64 - 1


def texts_for(rnd: random.Random, n: int) -> list[str]:
    alphabet = "ab cé🙂東"
    return ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40))) for _ in range(n)]


def test_shingles_hashed_a_few_windows_at_a_time_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = texts_for(random.Random(7), 300)
    for size in (1, 2, 3, 4, 5, 6):
        whole = shingles(texts, size)
        monkeypatch.setattr(neardup, "_CHUNK", 7)  # windows of one text, and straddling ones, split across chunks
        chunked = shingles(texts, size)
        monkeypatch.setattr(neardup, "_CHUNK", 1 << 17)
        assert chunked[0].equals(whole[0]) and chunked[1] == whole[1]
        # Each text's hashes are the polynomial of its windows' code points (a short text padded).
        for i in (0, 1, 17, 299):
            points = [ord(c) for c in texts[i]]
            if 0 < len(points) < size:
                points += [0xDC80] * (size - len(points))
            expected = []
            for at in range(len(points) - size + 1 if points else 0):
                value = 0
                for p in points[at : at + size]:
                    value = (value * M + p) & MASK
                expected.append(value)
            assert whole[0].to_pylist()[whole[1][i] : whole[1][i + 1]] == expected


def band_key(values: list[int], per_word: int) -> int:
    """One band's key as ``_candidate_pairs`` hashes it: its 64-bit words (two values each when they pair up)."""
    words = ([values[j] | values[j + 1] << 32 for j in range(0, len(values), 2)] if per_word == 2 else values)
    key = words[0]
    for word in words[1:]:
        key = (key * M + word) & MASK
    return key


def reference_pairs(rows: list[list[int]], bands: int) -> tuple[list[tuple[int, int]], int]:
    """The rule of ``_candidate_pairs``, row by row in Python."""
    width = len(rows[0]) // bands
    per_word = 2 if width % 2 == 0 else 1
    keys = [[band_key(row[b * width : (b + 1) * width], per_word) for b in range(bands)] for row in rows]
    first: dict[tuple[int, ...], int] = {}
    pairs: set[tuple[int, int]] = set()
    candidates: set[int] = set()
    kept = []
    for c, row in enumerate(rows):
        f = first.setdefault(tuple(row), c)
        if f != c:
            pairs.add((f, c))
            candidates |= {f, c}
        else:
            kept.append(c)
    for band in range(bands):
        buckets: dict[int, list[int]] = {}
        for c in kept:
            buckets.setdefault((keys[c][band] * M + band) & MASK, []).append(c)
        for members in buckets.values():
            if len(members) < 2:
                continue
            members.sort(key=lambda c: (keys[c][(band + 1) % bands], c))
            candidates |= set(members)
            for before, c in itertools.pairwise(members):
                pairs.add((min(before, c), max(before, c)))
                if c != members[0]:
                    pairs.add((min(members[0], c), max(members[0], c)))
    return sorted(pairs), len(candidates)


def test_candidate_pairs_follow_the_rule_in_every_band_shape() -> None:
    rnd = random.Random(19)
    for num_perm, bands in ((128, 16), (100, 4), (100, 25), (30, 6), (8, 8)):
        width = num_perm // bands
        rows = [[rnd.getrandbits(32) for _ in range(num_perm)] for _ in range(60)]
        for _ in range(80):  # bands shared between random rows, some rows sharing several
            a, b, band = rnd.randrange(60), rnd.randrange(60), rnd.randrange(bands)
            rows[b][band * width : (band + 1) * width] = rows[a][band * width : (band + 1) * width]
        for a, b in ((3, 40), (3, 41), (7, 8)):  # rows equal to an earlier one
            rows[b] = list(rows[a])
        a_, b_, candidates = neardup._candidate_pairs(array("I", [v for row in rows for v in row]), num_perm, bands)
        expected, expected_candidates = reference_pairs(rows, bands)
        assert list(zip(a_.to_pylist(), b_.to_pylist(), strict=True)) == expected
        assert candidates == expected_candidates


def test_no_rows_and_no_shared_band_give_no_pairs() -> None:
    assert [x.to_pylist() if isinstance(x, pa.Array) else x
            for x in neardup._candidate_pairs(array("I"), 128, 16)] == [[], [], 0]
    rnd = random.Random(3)
    lone = array("I", [rnd.getrandbits(32) for _ in range(128 * 5)])
    a, b, candidates = neardup._candidate_pairs(lone, 128, 16)
    assert (a.to_pylist(), b.to_pylist(), candidates) == ([], [], 0)


def test_the_exact_check_on_hashed_shingles_is_the_exact_similarity() -> None:
    rnd = random.Random(5)
    base = "please write a short summary of the quarterly sales report for the northern region"
    texts = [base, "abc", "abc", "ab", "naïve café 🙂 東京の天気 ok", "naïve café 🙂 東京の天気 ko"]
    for _ in range(20):
        words = base.split()
        words[rnd.randrange(len(words))] = "".join(rnd.choice("xyzé") for _ in range(rnd.randint(1, 6)))
        texts.append(" ".join(words))
    signatures = array("I", bytes(4 * 128 * len(texts)))
    clusters = neardup._Clusters(signatures, pa.chunked_array([pa.array(texts)]), threshold=0.85, num_perm=128,
                                 shingle=5)
    clusters.read(set(range(len(texts))))
    for a in range(len(texts)):
        for b in range(a + 1, len(texts)):
            assert clusters.exact(a, b) == exact_similarity(texts[a], texts[b]), (texts[a], texts[b])


def test_the_collector_is_paused_while_signatures_come_out_and_left_as_it_was(store: Store,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real = neardup.shingles

    def spy(texts: Any, size: int) -> Any:
        seen.append(gc.isenabled())
        return real(texts, size)

    monkeypatch.setattr(neardup, "shingles", spy)
    bodies = [generation_record(seed, state="Success") for seed in range(4)]
    store.ingest_texts([json.dumps(body) for body in bodies], source="t")
    assert gc.isenabled()
    near_duplicates(store)
    assert seen and not any(seen) and gc.isenabled()
    gc.disable()
    try:
        near_duplicates(store, full=True)
        assert not gc.isenabled()
    finally:
        gc.enable()
