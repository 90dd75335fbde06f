"""No password of a lake URI is printed, stored or put in an error, whatever form it is written in.

One test per form: its secret must not be in the store's ``lake_sent`` rows (read by SQL), in
``curate lake info``'s output, nor in the error of a connection that fails. PostgreSQL takes the
forms libpq knows (``user:password@``, ``password=``, ``sslpassword=``; the test server trusts
every login, so the password is sent and ignored); a SQLite catalog takes the others, whose
parameters SQLAlchemy ignores with a warning (``token=``, ``access_key=``/``secret=``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from curate.lake.table import Lake, LakeConfig, LakeError, masked, push
from curate.store import Store
from curate.synthetic import generation_record

CURATE = str(Path(sys.executable).parent / "curate")
SECRET = "Zq7SecretValue"  # the value every test looks for


def curate(*args: str) -> subprocess.CompletedProcess[str]:
    # Wide enough that rich never wraps a URI (a wrapped secret would escape the check).
    return subprocess.run([CURATE, *args], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "1000"})


def stored_lakes(store: Store) -> str:
    """Every lake_sent row, as text."""
    with store.read() as con:
        rows = con.execute("select * from lake_sent").fetchall()
    assert rows, "nothing was pushed"
    return "\n".join(map(str, rows))


def check_form(store: Store, lake: str, unreachable: str) -> None:
    """``lake`` works and leaks nothing; ``unreachable`` fails and leaks nothing."""
    assert SECRET in lake and SECRET in unreachable
    store.ingest_texts([json.dumps(generation_record(i)) for i in range(3)], source="test")

    assert push(store, lake).rows == 3
    assert SECRET not in stored_lakes(store)

    for args in (["lake", "info", "--lake", lake], ["lake", "info", "--json", "--lake", lake]):
        info = curate(*args)
        assert info.returncode == 0, info.stderr
        assert SECRET not in info.stdout + info.stderr
    assert "generations" in info.stdout

    failed = curate("lake", "info", "--lake", unreachable)
    assert failed.returncode == 2, failed.stderr
    assert "error: " in failed.stderr and "Traceback" not in failed.stderr
    assert SECRET not in failed.stdout + failed.stderr

    with pytest.raises(LakeError) as error:
        Lake(unreachable).table()
    assert SECRET not in str(error.value) and SECRET not in repr(error.value)


@pytest.fixture
def postgres_lake(postgres_url: str, tmp_path: Path) -> Callable[[str, str], tuple[str, str]]:
    """(a lake on the test server, the same on a port nobody listens on), the URI written with
    ``netloc`` in place of ``postgres@`` and ``query`` (before the warehouse) added."""
    base, dbname = postgres_url.rsplit("/", 1)
    port = base.rsplit(":", 1)[1]

    def make(netloc: str, query: str = "") -> tuple[str, str]:
        tail = f"/{dbname}?{query}{'&' if query else ''}warehouse={tmp_path / 'warehouse'}"
        good = base.replace("postgres@", netloc) + tail
        return good, good.replace(f":{port}/", ":1/")

    return make


@pytest.fixture
def sqlite_lake(tmp_path: Path) -> Callable[[str], tuple[str, str]]:
    """(a SQLite-catalog lake with ``query`` in its URI, the same with a catalog that cannot be opened)."""

    def make(query: str) -> tuple[str, str]:
        good = f"sqlite:///{tmp_path / 'catalog.db'}?{query}&warehouse={tmp_path / 'warehouse'}"
        return good, good.replace(str(tmp_path / "catalog.db"), str(tmp_path / "no" / "such" / "catalog.db"))

    return make


def test_a_password_in_the_user_part_is_masked(store: Store, postgres_lake: Callable[..., tuple[str, str]]) -> None:
    check_form(store, *postgres_lake(f"postgres:{SECRET}@"))


def test_a_password_query_parameter_is_masked(store: Store, postgres_lake: Callable[..., tuple[str, str]]) -> None:
    check_form(store, *postgres_lake("postgres@", f"password={SECRET}"))


def test_an_sslpassword_query_parameter_is_masked(store: Store, postgres_lake: Callable[..., tuple[str, str]]) -> None:
    check_form(store, *postgres_lake("postgres@", f"sslpassword={SECRET}"))


@pytest.mark.filterwarnings("ignore:Query string argument")  # SQLite ignores them, says so
def test_a_token_query_parameter_is_masked(store: Store, sqlite_lake: Callable[[str], tuple[str, str]]) -> None:
    check_form(store, *sqlite_lake(f"token={SECRET}"))


@pytest.mark.filterwarnings("ignore:Query string argument")  # SQLite ignores them, says so
def test_access_key_and_secret_query_parameters_are_masked(
    store: Store, sqlite_lake: Callable[[str], tuple[str, str]]
) -> None:
    check_form(store, *sqlite_lake(f"access_key=AKIA{SECRET}&secret={SECRET}"))


def test_a_libpq_connection_string_is_refused_without_its_password(tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port=1 dbname=curate password={SECRET}"
    result = subprocess.run([CURATE, "lake", "info", "--lake", dsn], check=False, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "postgresql://" in result.stderr and SECRET not in result.stdout + result.stderr
    assert not list(tmp_path.iterdir())  # not taken for a folder (whose name held the password)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"postgresql://me:{SECRET}@db:5432/curate", "postgresql://me:***@db:5432/curate"),
        (f"postgresql://me:a@{SECRET}@db/curate", "postgresql://me:***@db/curate"),
        (f"postgresql://me:a/{SECRET}@db/curate", "postgresql://me:***@db/curate"),
        (f"postgresql://me@db/c?password={SECRET}&sslmode=require", "postgresql://me@db/c?password=***&sslmode=require"),
        (f"postgresql://me@db/c?sslpassword={SECRET}", "postgresql://me@db/c?sslpassword=***"),
        (f"sqlite:////l/c.db?api_key={SECRET}&AWS-Secret-Access-Key={SECRET}&x=1",
         "sqlite:////l/c.db?api_key=***&AWS-Secret-Access-Key=***&x=1"),
        (f"pg://db/c?warehouse=s3://AK:{SECRET}@bucket/lake", "pg://db/c?warehouse=s3://AK:***@bucket/lake"),
        (f"pg://db/c?warehouse=s3%3A%2F%2FAK%3A{SECRET}%40bucket", "pg://db/c?warehouse=s3://AK:***@bucket"),
        (f"host=db password={SECRET} dbname=c", "host=db password=*** dbname=c"),
        (f"host=db password='{SECRET} \\' x' user=u", "host=db password=*** user=u"),
        (f"cannot reach 'postgresql://u:{SECRET}@h/d?token={SECRET}': refused",
         "cannot reach 'postgresql://u:***@h/d?token=***': refused"),
        ("postgresql://me@db:5432/curate?sslmode=require#curate.generations",
         "postgresql://me@db:5432/curate?sslmode=require#curate.generations"),
        ("sqlite:////abs/catalog.db", "sqlite:////abs/catalog.db"),
    ],
)
def test_masked_hides_every_form_and_keeps_the_rest(text: str, shown: str) -> None:
    assert masked(text) == shown


def test_a_config_never_shows_its_password(tmp_path: Path) -> None:
    config = LakeConfig.parse(f"postgresql://me:{SECRET}@db/c?password={SECRET}&warehouse=s3://AK:{SECRET}@b/l")
    assert SECRET in config.catalog_uri  # the catalog still gets it
    for text in (config.identity, str(config), repr(config), repr(Lake(config))):
        assert SECRET not in text and "***" in text


def test_the_user_part_identity_is_what_earlier_versions_stored() -> None:
    # lake_sent rows are keyed by it: a new spelling would send the whole store again.
    config = LakeConfig.parse("postgresql://me:secret@db:5432/curate?warehouse=/shared/lake")
    assert config.identity == "postgresql+psycopg2://me:***@db:5432/curate#curate.generations"


def test_a_sqlite_uri_keeps_its_absolute_path(tmp_path: Path) -> None:
    config = LakeConfig.parse(f"sqlite:///{tmp_path}/catalog.db?warehouse={tmp_path}/warehouse")
    assert config.catalog_uri == f"sqlite:///{tmp_path}/catalog.db"
    with Lake(config) as lake:
        assert lake.table().name() == ("curate", "generations")


@pytest.mark.filterwarnings("ignore:Query string argument")  # SQLite ignores them, says so
def test_rows_an_earlier_curate_recorded_under_a_password_in_the_query_lose_it_and_are_not_sent_again(
    store: Store, sqlite_lake: Callable[[str], tuple[str, str]]
) -> None:
    lake, _ = sqlite_lake(f"token={SECRET}")
    store.ingest_texts([json.dumps(generation_record(i)) for i in range(3)], source="test")
    assert push(store, lake).rows == 3
    config = LakeConfig.parse(lake)
    with store.write() as con:  # as an earlier curate recorded it: the query as it was given
        con.execute("update lake_sent set lake = ?", [config.former_identity])
    assert SECRET in stored_lakes(store)
    assert push(store, lake).rows == 0
    assert SECRET not in stored_lakes(store)
