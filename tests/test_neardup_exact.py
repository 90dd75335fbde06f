"""Near-duplicates decided on their exact similarity near the threshold, and the shingles behind it.

A MinHash estimate at 128 permutations is off by ~0.03, so a pair at 0.86 can be estimated below
0.85 and one at 0.84 above. The pairs planted here are chosen so that their estimate is on the
wrong side of the threshold: only the exact Jaccard similarity of their shingle sets decides them
right.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import rensa

from curate import neardup
from curate.neardup import exact_similarity, lsh_bands, near_duplicates, shingles
from curate.store import Store
from curate.synthetic import generation_id, generation_record

# Already normalised (lowercase, no punctuation, single spaces): the pass compares it as it is.
BASE = (
    "please write a short summary of the quarterly sales report for the northern region and "
    "explain why revenue from the new subscription product grew faster than expected while "
    "hardware sales declined slightly over the same period compared with last year overall"
)


def record(seed: int, user: str) -> str:
    body: dict[str, Any] = generation_record(seed, state="Success")
    body["request"]["messages"] = [{"role": "user", "content": user}]
    return json.dumps(body)


def estimate(a: str, b: str) -> float:
    """The pass's MinHash estimate for two normalised texts (its shingles, its seed)."""
    hashes, offsets = shingles([a, b], neardup.DEFAULT_SHINGLE)
    x, y = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
        neardup._u64(hashes), offsets, neardup.DEFAULT_NUM_PERM, neardup.SEED).to_rows()
    return sum(p == q for p, q in zip(x, y, strict=True)) / neardup.DEFAULT_NUM_PERM


def planted(lo: float, hi: float, wrong_side: Callable[[float], bool]) -> tuple[str, float, float]:
    """A variant of BASE whose exact similarity to it is in [lo, hi) and whose estimate ``wrong_side`` accepts."""
    rnd = random.Random(19)
    for _ in range(5000):
        words = BASE.split()
        for _ in range(rnd.randint(2, 5)):
            i = rnd.randrange(len(words))
            words[i] = "".join(rnd.choice("bdfgkmpqvwxz") for _ in range(rnd.randint(3, 6)))
        text = " ".join(words)
        exact = exact_similarity(BASE, text)
        if lo <= exact < hi:
            guess = estimate(BASE, text)
            if wrong_side(guess):
                return text, exact, guess
    raise AssertionError("no such variant")


def members(store: Store) -> list[dict[str, Any]]:
    return store.arrow("select id, cluster_id, similarity from near_duplicate_rows order by id").to_pylist()


def test_a_pair_just_above_the_threshold_estimated_below_it_is_joined(store: Store) -> None:
    text, exact, guess = planted(0.85, 0.87, lambda e: e < 0.85)
    assert guess < 0.85 <= exact
    store.ingest_texts([record(1, BASE), record(2, text)], source="t")
    result = near_duplicates(store)
    assert (result.clusters, result.rows_in_clusters) == (1, 2)
    assert result.exact_checks >= 1
    rows = members(store)
    assert {r["id"] for r in rows} == {generation_id(1), generation_id(2)}
    # The similarity kept is the exact one, near the threshold.
    assert sorted(r["similarity"] for r in rows) == [exact, 1.0]


def test_a_pair_just_below_the_threshold_estimated_above_it_is_not_joined(store: Store) -> None:
    text, exact, guess = planted(0.83, 0.85, lambda e: e >= 0.85)
    assert exact < 0.85 <= guess
    store.ingest_texts([record(1, BASE), record(2, text)], source="t")
    result = near_duplicates(store)
    assert (result.clusters, result.rows_in_clusters) == (0, 0)
    assert result.exact_checks >= 1
    assert members(store) == []


def test_both_planted_pairs_in_one_store_are_each_decided_on_their_exact_value(store: Store) -> None:
    above, _, _ = planted(0.85, 0.87, lambda e: e < 0.85)
    below, _, _ = planted(0.83, 0.85, lambda e: e >= 0.85)
    # Each variant's similarity to the other is far lower: the cluster is BASE and the one above.
    assert exact_similarity(above, below) < 0.8
    store.ingest_texts([record(1, BASE), record(2, above), record(3, below)], source="t")
    result = near_duplicates(store)
    assert result.clusters == 1
    assert {r["id"] for r in members(store)} == {generation_id(1), generation_id(2)}


def test_far_from_the_threshold_the_estimate_decides_alone(store: Store) -> None:
    text = BASE.replace("quarterly", "annual")  # one word of ~40 changed: ~0.93
    store.ingest_texts([record(1, BASE), record(2, BASE), record(3, text)], source="t")
    result = near_duplicates(store, threshold=0.5)
    # At 0.5 the margin is ±0.13: both pairs are estimated far above it and none is checked exactly.
    assert result.clusters == 1 and result.rows_in_clusters == 3
    assert result.exact_checks == 0


def test_the_hashed_shingles_are_the_exact_shingle_sets() -> None:
    texts = ["", "abc", "abcde", "hello world", "naïve café 🙂 東京の天気 ok", "the the the the the the", BASE]
    hashes, offsets = shingles(texts, 5)
    values = hashes.to_pylist()
    per_text = [values[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
    assert per_text[0] == []
    for text, hashed in zip(texts[1:], per_text[1:], strict=True):
        assert len(set(hashed)) == len(neardup._shingle_set(text, 5)), text
    # The same shingle hashes the same in any text, and a short text is no other text's shingle.
    again, _ = shingles(["xx hello world yy"], 5)
    assert set(per_text[3]) <= set(again.to_pylist())
    assert not set(per_text[1]) & set(per_text[2])
    assert exact_similarity("abc", "abc") == 1.0 and exact_similarity("abc", "abcde") == 0.0


def test_the_bands_miss_a_pair_at_the_threshold_at_most_one_time_in_a_hundred() -> None:
    for threshold in (0.5, 0.7, 0.8, 0.85, 0.9, 0.95):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows == 128
        assert (1 - threshold**rows) ** bands <= 0.01
    assert lsh_bands(0.85, 128) == (16, 8)


def test_an_arrow_batch_shingles_as_its_strings_do() -> None:
    # The pass hands shingles an Arrow slice of a batch (offset, nulls, short and non-ASCII texts);
    # its UTF-8 bytes are decoded at once, and hash as the same texts given as strings.
    import pyarrow as pa

    texts = ["skip me", "abc", None, "", "naïve café 🙂 東京の天気 ok", "é", "hello world", "ab", BASE, "x"]
    batch = pa.array(texts, pa.string()).slice(1)
    for size in (1, 3, 5):
        as_strings = shingles([t or "" for t in texts[1:]], size)
        for arrow in (batch, batch.cast(pa.large_string())):
            hashes, offsets = shingles(arrow, size)
            assert hashes.equals(as_strings[0]) and offsets == as_strings[1]


def test_rows_sharing_one_band_are_paired_whatever_the_band_width() -> None:
    from array import array

    rnd = random.Random(19)
    for num_perm, bands in ((128, 16), (100, 4), (100, 25), (30, 6)):
        width = num_perm // bands
        base = [rnd.getrandbits(32) for _ in range(num_perm)]
        rows = [[rnd.getrandbits(32) for _ in range(num_perm)] for _ in range(6)]
        rows[1][width : 2 * width] = base[width : 2 * width]  # rows 1 and 4 share band 1 alone
        rows[4][width : 2 * width] = base[width : 2 * width]
        rows[5] = list(rows[2])  # rows 2 and 5 are equal
        a, b, candidates = neardup._candidate_pairs(array("I", [v for row in rows for v in row]), num_perm, bands)
        assert list(zip(a.to_pylist(), b.to_pylist(), strict=True)) == [(1, 4), (2, 5)]
        assert candidates == 4
