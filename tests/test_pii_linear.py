"""pii.find() in time linear in the text (issue 17): the inputs that were quadratic, and the same findings.

Each input below took 6 to 12 s before (a lazy scan to a PEM END line from every BEGIN, and an
overlap check of every finding against every kept one); it is sized so, and the bound (2 s) is
generous enough for a slow CI machine: the linear code takes 0.1-0.5 s on them. Throughput is
measured by bench/bench_pii.py, not here.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator

import pytest

from curate import pii, synthetic
from curate.pii import Finding, find

BOUND = 2.0


def timed_find(text: str) -> tuple[float, list[Finding]]:
    started = time.perf_counter()
    found = find(text)
    return time.perf_counter() - started, found


@pytest.fixture
def no_phone_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave out ``phonenumbers``: it spends ~70 µs on each digit group it tries (capped by its own
    ``max_tries``), which on digit-dense inputs would be most of the time measured, and these tests
    are about curate's patterns and the overlap resolution."""
    def none(text: str) -> Iterator[Finding]:
        return iter(())
    monkeypatch.setattr(pii, "_phones", none)


# --- the inputs that were quadratic ------------------------------------------------------------


def test_repeated_private_key_begin_lines_without_an_end_are_found_in_linear_time() -> None:
    text = "-----BEGIN PRIVATE KEY-----\n" * 7_000  # 196 KB: 12 s before
    seconds, found = timed_find(text)
    assert len(found) == 7_000 and found[1] == Finding(28, 55, "secret", "private_key")
    assert seconds < BOUND


def test_many_email_addresses_are_resolved_in_linear_time() -> None:
    text = "a1@x.io " * 20_000  # 160 KB: 9 s before
    seconds, found = timed_find(text)
    assert len(found) == 20_000 and {f.kind for f in found} == {"email"}
    assert seconds < BOUND


@pytest.mark.usefixtures("no_phone_matcher")
def test_many_card_numbers_are_resolved_in_linear_time() -> None:
    text = "4111 1111 1111 1111, " * 20_000  # 420 KB: 7 s before
    seconds, found = timed_find(text)
    assert len(found) == 20_000 and {f.kind for f in found} == {"credit_card"}
    assert seconds < BOUND


@pytest.mark.usefixtures("no_phone_matcher")
def test_many_ip_addresses_are_resolved_in_linear_time() -> None:
    text = "10.0.0.1 " * 20_000  # 180 KB: 6 s before
    seconds, found = timed_find(text)
    assert len(found) == 20_000 and {f.kind for f in found} == {"ip_address"}
    assert seconds < BOUND


def test_many_well_known_tokens_are_resolved_in_linear_time() -> None:
    text = ("AKIA" + "IOSFODNN7EXAMPLE ") * 20_000  # 420 KB: 7 s before
    seconds, found = timed_find(text)
    assert len(found) == 20_000 and {f.detector for f in found} == {"aws_access_key"}
    assert seconds < BOUND


@pytest.mark.usefixtures("no_phone_matcher")
def test_many_high_entropy_tokens_are_resolved_in_linear_time() -> None:
    text = "kJ8s9dPq2LmN3vB7xZ4wR6tY1uI0oPaSdFgHjKlQ " * 20_000  # 820 KB: 7 s before
    seconds, found = timed_find(text)
    assert len(found) == 20_000 and {f.detector for f in found} == {"entropy"}
    assert seconds < BOUND


@pytest.mark.usefixtures("no_phone_matcher")
@pytest.mark.parametrize("piece", [
    "1",                              # one digit run: a card candidate, once
    "A",                              # one token run: every secret prefix and the entropy candidate
    "aB3",
    ".",
    "1.",                             # IP-like
    "a:",                             # IPv6-like
    "a.",                             # an endless domain
    "a@",
    "-----BEGIN A ",                  # BEGIN lines whose label never ends
    "sk-",
    "eyJabcdef.",
], ids=repr)
def test_long_runs_without_findings_are_scanned_in_linear_time(piece: str) -> None:
    """A guard more than a fix: these runs were linear before too (each pattern's lookbehind lets a
    run start a candidate once, and the quantifiers that step back are bounded); they stay so."""
    text = " " + piece * (1_000_000 // len(piece))
    seconds, _ = timed_find(text)
    assert seconds < BOUND


# --- the same findings as before ---------------------------------------------------------------

ORDINARY = (
    "Hi! I'm Jane (jane.doe+news@example.co.uk, or bob@mail.example.org). Call +44 20 7946 0958 or "
    "(415) 555-2671 after 10:30. My Visa is 4111 1111 1111 1111 and the Amex 3782-822463-10005; "
    "the server is 192.168.1.10 / 2001:db8::8a2e:370:7334, not 999.1.1.1 or std::vector. "
    "Keys: AKIA" "IOSFODNN7EXAMPLE, token=kJ8s9dPq2LmN3vB7xZ4wR6tY1uI0oPaSdFgHjKlQ, "
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U and\n"
    "-----BEGIN RSA " "PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA " "PRIVATE KEY-----\n"
    "Order 12345678 on 2024-01-15; uuid 123e4567-e89b-12d3-a456-426614174000. Mail root@10.0.0.1.example.com."
)
# What find() returned for ORDINARY before issue 17's change.
ORDINARY_FINDINGS = [
    (14, 41, "email", "regex"), (46, 66, "email", "regex"), (74, 90, "phone", "phonenumbers"),
    (94, 108, "phone", "phonenumbers:US"), (133, 152, "credit_card", "luhn"), (166, 183, "credit_card", "luhn"),
    (199, 211, "ip_address", "ipaddress:v4"), (214, 237, "ip_address", "ipaddress:v6"),
    (275, 295, "secret", "aws_access_key"), (303, 343, "secret", "entropy"), (345, 429, "secret", "jwt"),
    (434, 512, "secret", "private_key"), (591, 616, "email", "regex"),
]


def test_findings_on_ordinary_text_are_unchanged() -> None:
    assert [(f.start, f.end, f.kind, f.detector) for f in find(ORDINARY)] == ORDINARY_FINDINGS
    chat = [m["content"] for seed in range(200) for m in synthetic.chat_request(seed)["messages"]]
    assert [f for text in chat for f in find(text)] == []  # none before either
    padding = chat[0] + "\n"
    shifted = find(padding + ORDINARY + "\n" + chat[1])
    assert [(f.start - len(padding), f.end - len(padding), f.kind, f.detector) for f in shifted] == ORDINARY_FINDINGS


# The private-key pattern as it was: the reference the BEGIN/END pairing must agree with.
LAZY_PRIVATE_KEY = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----(?:[\s\S]*?-----END \1PRIVATE KEY-----)?")
PEM_PIECES = ["-----BEGIN ", "-----END ", "RSA ", "EC ", "PRIVATE KEY-----", "PRIVATE ", "KEY-----", "KEY ",
              "-", "--", "\n", "x", "A"]


def test_private_keys_pair_each_begin_with_the_same_end_the_lazy_pattern_did() -> None:
    rng = random.Random(17)
    texts = ["".join(rng.choice(PEM_PIECES) for _ in range(rng.randint(1, 30))) for _ in range(20_000)]
    texts += ["-----BEGIN RSA PRIVATE KEY-----\nx\n-----END EC PRIVATE KEY-----\n-----END RSA PRIVATE KEY-----",
              "-----BEGIN PRIVATE KEY----------END PRIVATE KEY-----END PRIVATE KEY-----"]
    paired = 0
    for text in texts:
        expected = [m.span() for m in LAZY_PRIVATE_KEY.finditer(text)]
        assert [(f.start, f.end) for f in pii._private_keys(text)] == expected, text
        paired += sum("-----END" in text[a:b] for a, b in expected)
    assert paired > 50  # the pieces do make keys with END lines, not only BEGIN lines


# The patterns that were rewritten (possessive runs, lookbehinds after the prefix), as they were,
# beside what finds their matches now.
BEFORE = {
    "jwt": r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
    "openai_key": r"(?<![\w-])sk-(?:proj-|svcacct-|admin-|ant-)?(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}",
    "aws_access_key": r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])",
    "github_token": r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    "slack_token": r"(?<![\w-])xox[abpr]-[A-Za-z0-9-]{10,}",
    "google_api_key": r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])",
    "stripe_key": r"(?<![\w-])[sr]k_live_[0-9A-Za-z]{16,}",
    "huggingface_token": r"(?<![\w-])hf_[A-Za-z0-9]{30,}",
    "entropy": r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{32,256}={0,2}(?![A-Za-z0-9+/_\-=])",
    "card": r"(?<!\d)(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)",
    "ipv4": r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w)(?!\.\d)",
    "email": r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
             r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])",
}
NOW = {name: (lambda text, p=p: [m.span() for m in p.finditer(text)]) for name, p in pii._SECRETS} | {
    "entropy": lambda text: [m.span() for m in pii._HIGH_ENTROPY_CANDIDATE.finditer(text)],
    "card": lambda text: [m.span() for m in pii._CARD.finditer(text)],
    "ipv4": lambda text: [m.span() for m in pii._IPV4.finditer(text)],
    "email": lambda text: [(f.start, f.end) for f in pii._emails(text)],
}
PIECES = ["eyJ", "eyJabcdef.", "sk-", "proj-", "AKIA", "ASIA", "ghp_", "github_pat_", "xoxb-", "AIza", "sk_live_",
          "rk_live_", "hf_", "abcdef", "ABCDEF", "12", "7", "_", "-", ".", "=", "==", " ", "/", "+", "é", "x" * 30,
          "Zq9" * 12, "4111 1111 1111 1111", "1-", "10.0.0.1", "1.", "@", "a@x.io", "jane.doe", "%"]


def test_rewritten_patterns_match_what_they_matched_before() -> None:
    rng = random.Random(17)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 40))) for _ in range(5_000)]
    texts.append("AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q and AIza" + "x" * 35 + " ASIA" + "Q" * 16)
    texts.append("AKIA" + "IOSFODNN7EXAMPLE, xAKIA" + "IOSFODNN7EXAMPLE, AKIA" + "IOSFODNN7EXAMPLEx ASIA" + "Z" * 17)
    for name, before in BEFORE.items():
        pattern = re.compile(before)
        hits = 0
        for text in texts:
            expected = [m.span() for m in pattern.finditer(text)]
            assert NOW[name](text) == expected, (name, text)
            hits += len(expected)
        assert hits > 0, name


def test_the_seven_digit_gate_counts_what_str_isdigit_counts() -> None:
    rng = random.Random(17)
    for _ in range(20_000):
        text = "".join(rng.choice("12²٣①a -é") for _ in range(rng.randint(0, 12)))
        assert pii._has_seven_digits(text) == (sum(c.isdigit() for c in text) >= 7), text


def all_pairs(found: list[Finding]) -> list[Finding]:
    """The overlap rule as it was written before: each finding, in rank order, against every kept one."""
    ranked = sorted(found, key=lambda f: (-(f.end - f.start), -pii._SPECIFICITY[f.kind], f.start))
    kept: list[Finding] = []
    for f in ranked:
        if f.end > f.start and all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept)


def test_overlaps_are_resolved_as_checking_every_pair_did() -> None:
    rng = random.Random(17)
    for _ in range(3_000):
        found = []
        for _ in range(rng.randint(0, 30)):
            start = rng.randint(0, 60)
            found.append(Finding(start, start + rng.randint(0, 12), rng.choice(pii.KINDS), rng.choice("ab")))
        assert pii._resolve(found) == all_pairs(found)


def test_a_phone_number_after_65535_digit_runs_is_still_found() -> None:
    # phonenumbers gives up after 65,535 candidates unless told otherwise: a long message of
    # numbers (a log, a table) would hide the phone number at its end.
    text = " ".join(["1234567"] * 70_000) + " call (415) 555-2671 now"
    found = [f for f in pii.find(text) if f.kind == "phone"]
    assert [text[f.start:f.end] for f in found] == ["(415) 555-2671"]
