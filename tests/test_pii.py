"""Personal data and secrets: each detector on planted text, redaction, the scan over a store, the view, the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from curate import pii, synthetic
from curate.cli.pii_commands import scan_app
from curate.pii import Finding, find, redact
from curate.store import Store


def spans(text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start:f.end]) for f in find(text)]


# --- the detectors ---------------------------------------------------------------------------


def test_emails_are_found_at_their_span() -> None:
    text = "Write to jane.doe+news@example.co.uk. Or bob@mail.example.org!"
    assert find(text)[0] == Finding(9, 36, "email", "regex")
    assert spans(text) == [("email", "jane.doe+news@example.co.uk"), ("email", "bob@mail.example.org")]


def test_international_and_us_phone_numbers_are_found() -> None:
    text = "London +44 20 7946 0958, Paris +33 1 42 68 53 00, office (415) 555-2671."
    assert spans(text) == [("phone", "+44 20 7946 0958"), ("phone", "+33 1 42 68 53 00"), ("phone", "(415) 555-2671")]
    assert [f.detector for f in find(text)] == ["phonenumbers", "phonenumbers", "phonenumbers:US"]


def test_a_luhn_valid_card_is_found_and_a_luhn_invalid_one_is_not() -> None:
    assert spans("Visa 4111 1111 1111 1111 ok") == [("credit_card", "4111 1111 1111 1111")]
    assert spans("Amex 3782-822463-10005.") == [("credit_card", "3782-822463-10005")]
    assert spans("bad 4111 1111 1111 1112 and 0000000000000") == []
    assert pii.luhn_ok("79927398713") and not pii.luhn_ok("79927398710")


def test_ipv4_and_ipv6_are_found_and_an_invalid_address_is_not() -> None:
    text = "hosts 192.168.1.10, 2001:db8::8a2e:370:7334 and ::ffff:192.0.2.1; not 999.1.1.1, std::vector, 12:30:45"
    assert spans(text) == [("ip_address", "192.168.1.10"), ("ip_address", "2001:db8::8a2e:370:7334"),
                           ("ip_address", "::ffff:192.0.2.1")]
    assert spans("version 999.1.1.1 here") == []


SECRETS = {
    "openai_key": "sk-" + "proj-abc123DEF456ghi789JKL012mno",
    "aws_access_key": "AKIA" + "IOSFODNN7EXAMPLE",  # fixtures are built in pieces: no scanner sees a key here
    "github_token": "ghp_" + "a1B2c3D4e5" * 4,
    "github_pat": "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnop",
    "slack_token": "xoxb" + "-123456789012-abcdefABCDEF",
    "google_api_key": "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
    "stripe_key": "sk_" + "live_4eC39HqLyjWDarjtT1zdp7dc",
    "huggingface_token": "hf_" + "abcdEFGHijklMNOPqrstUVWXyz123456",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "private_key": "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA " + "PRIVATE KEY-----",
}


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_each_well_known_secret_prefix_is_found(name: str) -> None:
    value = SECRETS[name]
    text = f"my key is {value} thanks"
    assert find(text) == [Finding(10, 10 + len(value), "secret", "github_token" if name == "github_pat" else name)]


def test_a_random_base64_secret_is_found_and_long_ordinary_words_are_not() -> None:
    token = "kJ8s9dPq2LmN3vB7xZ4wR6tY1uI0oPaSdFgHjKlQ"
    assert len(token) == 40
    assert find(f"token={token}") == [Finding(6, 46, "secret", "entropy")]
    words = "internationalizationrepresentativesextraordinary ThisIsAVeryLongCamelCaseIdentifier123"
    assert find(words) == []
    assert find("uuid 123e4567-e89b-12d3-a456-426614174000, order 12345678, on 2024-01-15 at 10:30") == []


def test_overlapping_findings_keep_the_longest() -> None:
    # The email's domain is no separate finding; an IPv4 inside an IPv6 is the IPv6 only.
    assert spans("root@10.0.0.1.example.com") == [("email", "root@10.0.0.1.example.com")]
    assert spans("::ffff:192.0.2.1") == [("ip_address", "::ffff:192.0.2.1")]


def test_redaction_replaces_each_span_by_its_kind() -> None:
    text = ("Mail jane@example.com or call +44 20 7946 0958 from 10.0.0.1, "
            "card 4111-1111-1111-1111, key AKIAIOSFODNN7EXAMPLE.")
    assert redact(text, find(text)) == (
        "Mail [EMAIL] or call [PHONE] from [IP_ADDRESS], card [CREDIT_CARD], key [SECRET].")
    assert redact("nothing here", []) == "nothing here"


# --- the scan over a store -------------------------------------------------------------------

PLANTED = {
    0: "Reach me at jane.doe@example.com please.",
    1: [{"type": "text", "text": "My card:"}, {"type": "text", "text": "4111 1111 1111 1111"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
    2: "Server 192.168.1.10 uses AKIAIOSFODNN7EXAMPLE",
}


def planted_records() -> list[dict[str, Any]]:
    records = []
    one = synthetic.generation_record(1, state="Success")
    one["request"]["messages"] = [{"role": "user", "content": PLANTED[0]}, {"role": "user", "content": PLANTED[1]},
                                  {"role": "user", "content": PLANTED[2]}]
    records.append(one)
    two = synthetic.generation_record(2, state="Success")
    two["request"]["messages"] = [{"role": "system", "content": "Be kind."},
                                  {"role": "user", "content": "Call +1 415-555-2671."}]
    records.append(two)
    clean = synthetic.generation_record(3, state="Success")
    clean["request"]["messages"] = [{"role": "user", "content": "Nothing personal here."}]
    records.append(clean)
    return records


@pytest.fixture
def planted(store: Store) -> Store:
    store.ingest_texts([json.dumps(r) for r in planted_records()], source="t")
    return store


def findings(store: Store) -> list[dict[str, Any]]:
    return store.arrow("select id, message_index, kind, span_start, span_end, detector from pii_findings "
                       "order by id, message_index, span_start").to_pylist()


def test_scan_records_each_finding_at_a_span_that_slices_the_message_text(planted: Store) -> None:
    raw_before = planted.arrow("select id, raw from generation_rows order by id").to_pylist()
    result = pii.scan(planted)
    assert (result.rows, result.messages) == (3, 9)  # three request messages, two, one; plus each answer
    assert result.findings == {"email": 1, "phone": 1, "credit_card": 1, "ip_address": 1, "secret": 1}
    one, two = synthetic.generation_id(1), synthetic.generation_id(2)
    got = findings(planted)
    assert [(r["id"], r["message_index"], r["kind"]) for r in got] == sorted([
        (one, 0, "email"), (one, 1, "credit_card"), (one, 2, "ip_address"), (one, 2, "secret"), (two, 1, "phone"),
    ])
    messages = {r["id"]: json.loads(r["messages"]) for r in planted.arrow("select id, messages from chat").to_pylist()}
    sliced = [pii.message_text(messages[r["id"]][r["message_index"]])[r["span_start"]:r["span_end"]]  # type: ignore[index]
              for r in got]
    assert sorted(sliced) == sorted(["jane.doe@example.com", "4111 1111 1111 1111", "192.168.1.10",
                                     "AKIAIOSFODNN7EXAMPLE", "+1 415-555-2671"])
    assert planted.arrow("select id, raw from generation_rows order by id").to_pylist() == raw_before


def test_a_rescan_replaces_the_previous_findings(planted: Store) -> None:
    pii.scan(planted)
    with planted.write() as con:
        con.execute("insert into pii_findings (id, message_index, kind, span_start, span_end, detector, scanned_at) values ('stale', 0, 'email', 0, 1, 'x', now())")
    first = findings(planted)
    pii.scan(planted)
    again = findings(planted)
    assert len(again) == len(first) - 1 == 5
    assert "stale" not in {r["id"] for r in again}
    assert planted.arrow("select count(distinct scanned_at) as n from pii_findings").to_pylist() == [{"n": 1}]


def test_the_pii_view_lists_each_chat_row_with_findings(planted: Store) -> None:
    assert planted.arrow("select * from pii").num_rows == 0
    pii.scan(planted)
    expected = {
        synthetic.generation_id(1): (4, ["credit_card", "email", "ip_address", "secret"]),
        synthetic.generation_id(2): (1, ["phone"]),
    }
    got = planted.arrow("select * from pii").to_pylist()
    assert {r["id"]: (r["n_findings"], r["kinds"]) for r in got} == expected
    assert [r["id"] for r in got] == sorted(expected)


def test_the_cli_prints_counts_per_kind(planted: Store) -> None:
    runner = CliRunner()
    result = runner.invoke(scan_app, ["pii", "--db", str(planted.path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["findings"] == {"email": 1, "phone": 1, "credit_card": 1, "ip_address": 1, "secret": 1}
    assert (report["rows"], report["total"]) == (3, 5)
    table = runner.invoke(scan_app, ["pii", "--db", str(planted.path)])
    assert table.exit_code == 0, table.output
    assert "credit_card" in table.stdout and "scanned 3 chat rows" in table.stdout
    assert len(findings(planted)) == 5
