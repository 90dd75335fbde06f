"""Publishing an export folder to the Hub, and merging dataset cards: the Hub is a fake at HfApi's boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError
from typer.testing import CliRunner

from curate import card
from curate.cli.publish_commands import publish_command
from curate.publisher import HubError, PublishError, publish

REPO = "acme/chats"

GENERATED_BLOCK = f"""{card.START}
## About this dataset

3 chat rows exported by curate from inference.net generations.
{card.END}"""

GENERATED = f"""---
license: other
task_categories:
- text-generation
tags:
- curate
- synthetic
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
dataset_info:
  splits:
  - name: train
    num_examples: 3
---

{GENERATED_BLOCK}
"""

HAND_EDITED = f"""---
license: apache-2.0
language:
- en
pretty_name: Acme chats
tags:
- math
- curate
configs:
- config_name: default
  data_files:
  - split: train
    path: data/old-*
---

# Acme chats

Written by hand, *before* the block.  Trailing spaces and all.

{card.START}
old generated text
{card.END}

## Citation

Written by hand, after the block.
"""


def hub_error(cls: type[HfHubHTTPError], status: int, message: str = "refused") -> HfHubHTTPError:
    request = httpx2.Request("POST", f"https://huggingface.co/api/datasets/{REPO}/commit/main")
    return cls(message, response=httpx2.Response(status, request=request))


class FakeHub:
    """The HfApi methods publish calls: a repository held in memory, every call recorded.

    ``files`` is the remote repository (path -> bytes); a commit applies to it, so publishing twice
    sees the first publish's result. ``fail`` maps a method name to the exception it raises.
    """

    def __init__(self, cache: Path, files: dict[str, bytes] | None = None,
                 fail: dict[str, Exception] | None = None) -> None:
        self.cache = cache
        self.files = dict(files or {})
        self.fail = fail or {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.commits: list[list[CommitOperationAdd | CommitOperationDelete]] = []

    def _call(self, name: str, **kwargs: Any) -> None:
        self.calls.append((name, kwargs))
        if name in self.fail:
            raise self.fail[name]

    def create_repo(self, repo_id: str, *, repo_type: str, private: bool, exist_ok: bool) -> str:
        self._call("create_repo", repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=exist_ok)
        return f"https://huggingface.co/datasets/{repo_id}"

    def create_branch(self, repo_id: str, *, branch: str, repo_type: str, exist_ok: bool) -> None:
        self._call("create_branch", repo_id=repo_id, branch=branch, repo_type=repo_type, exist_ok=exist_ok)

    def list_repo_files(self, repo_id: str, *, repo_type: str, revision: str | None) -> list[str]:
        self._call("list_repo_files", repo_id=repo_id, repo_type=repo_type, revision=revision)
        return sorted(self.files)

    def hf_hub_download(self, repo_id: str, filename: str, *, repo_type: str, revision: str | None) -> str:
        self._call("hf_hub_download", repo_id=repo_id, filename=filename, repo_type=repo_type, revision=revision)
        if filename not in self.files:
            raise hub_error(RemoteEntryNotFoundError, 404)
        path = self.cache / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.files[filename])
        return str(path)

    def create_commit(self, repo_id: str, operations: list[CommitOperationAdd | CommitOperationDelete], *,
                      commit_message: str, repo_type: str, revision: str | None) -> CommitInfo:
        self._call("create_commit", repo_id=repo_id, commit_message=commit_message, repo_type=repo_type,
                   revision=revision)
        self.commits.append(list(operations))
        for op in operations:
            if isinstance(op, CommitOperationDelete):
                del self.files[op.path_in_repo]
            elif isinstance(op.path_or_fileobj, bytes):
                self.files[op.path_in_repo] = op.path_or_fileobj
            else:
                self.files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()  # type: ignore[arg-type]
        return CommitInfo(commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/abc123",
                          commit_message=commit_message, commit_description="", oid="abc123")

    def called(self) -> list[str]:
        return [name for name, _ in self.calls]

    def card(self) -> str:
        return self.files["README.md"].decode()


def write_export(folder: Path, shards: int = 1, readme: str | None = GENERATED) -> Path:
    """An export folder as curate.export writes it, plus the hidden files a folder picks up."""
    (folder / "data").mkdir(parents=True)
    rows = pa.table({"messages": ['[{"role": "user", "content": "hi"}]'] * 3})
    for i in range(shards):
        pq.write_table(rows, folder / "data" / f"train-{i:05d}-of-{shards:05d}.parquet")
    pq.write_table(pa.table({"id": ["g1", "g2", "g3"]}), folder / "lineage.parquet")
    if readme is not None:
        (folder / "README.md").write_text(readme, encoding="utf-8")
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "download.lock").write_text("")
    (folder / ".DS_Store").write_bytes(b"\0")
    return folder


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return write_export(tmp_path / "export")


@pytest.fixture
def hub(tmp_path: Path) -> FakeHub:
    return FakeHub(tmp_path / "hub-cache")


def operations(hub: FakeHub) -> list[tuple[str, str]]:
    return [(type(op).__name__, op.path_in_repo) for op in hub.commits[-1]]


# card.split and card.compose


def test_split_reads_front_matter_and_body() -> None:
    header, body = card.split(GENERATED)
    assert header["license"] == "other" and header["configs"][0]["data_files"][0]["path"] == "data/train-*"
    assert body == f"\n{GENERATED_BLOCK}\n"


def test_split_without_front_matter_is_an_empty_header_and_the_whole_text() -> None:
    assert card.split("# Title\n\n---\nnot front matter\n") == ({}, "# Title\n\n---\nnot front matter\n")


def test_split_names_the_line_of_bad_yaml() -> None:
    with pytest.raises(ValueError, match="front matter, line 3: "):
        card.split("---\nlicense: mit\ntags: a: b\n---\nbody\n")


def test_split_refuses_front_matter_that_is_never_closed() -> None:
    with pytest.raises(ValueError, match="no closing '---'"):
        card.split("---\nlicense: mit\n")


def test_compose_then_split_gives_back_header_and_body() -> None:
    header = {"pretty_name": "Café chats", "tags": ["b", "a"], "license": "mit"}
    text = card.compose(header, "\nbody\n")
    assert text == "---\npretty_name: Café chats\ntags:\n- b\n- a\nlicense: mit\n---\n\nbody\n"
    assert card.split(text) == (header, "\nbody\n")


# card.merge


def test_merge_replaces_the_block_and_keeps_prose_around_it_byte_for_byte() -> None:
    merged_body = card.split(card.merge(HAND_EDITED, GENERATED))[1]
    existing_body = card.split(HAND_EDITED)[1]
    before, after = existing_body.split(card.START)[0], existing_body.split(card.END)[1]
    assert merged_body == before + GENERATED_BLOCK + after
    assert "old generated text" not in merged_body


def test_merge_puts_the_block_after_prose_that_has_none() -> None:
    merged = card.merge("# Mine\n\nHand-written.", GENERATED)
    assert card.split(merged)[1] == f"# Mine\n\nHand-written.\n\n{GENERATED_BLOCK}\n"


def test_merge_into_no_card_is_the_generated_card() -> None:
    assert card.merge("", GENERATED) == GENERATED


def test_merge_generated_keys_win() -> None:
    header = card.split(card.merge(HAND_EDITED, GENERATED))[0]
    assert header["configs"] == card.split(GENERATED)[0]["configs"]
    assert header["dataset_info"] == card.split(GENERATED)[0]["dataset_info"]


def test_merge_keeps_user_yaml_keys() -> None:
    header = card.split(card.merge(HAND_EDITED, GENERATED))[0]
    assert list(header) == ["license", "task_categories", "tags", "configs", "dataset_info", "language", "pretty_name"]
    assert (header["language"], header["pretty_name"]) == (["en"], "Acme chats")


def test_merge_keeps_a_hand_set_license_over_the_placeholder() -> None:
    assert card.split(card.merge(HAND_EDITED, GENERATED))[0]["license"] == "apache-2.0"
    generated_mit = GENERATED.replace("license: other", "license: mit")
    assert card.split(card.merge(HAND_EDITED, generated_mit))[0]["license"] == "mit"


def test_merge_keeps_hand_added_tags_after_the_generated_ones() -> None:
    assert card.split(card.merge(HAND_EDITED, GENERATED))[0]["tags"] == ["curate", "synthetic", "math"]


@pytest.mark.parametrize("existing", ["", "# Mine\n", HAND_EDITED, GENERATED, "---\nlanguage: [fr]\n---\n"],
                         ids=["none", "prose-only", "hand-edited", "same", "header-only"])
def test_merge_is_idempotent(existing: str) -> None:
    once = card.merge(existing, GENERATED)
    assert card.merge(once, GENERATED) == once


@pytest.mark.parametrize("existing", [f"{card.START}\nno end\n", f"{card.END}\n{card.START}\n",
                                      f"{GENERATED_BLOCK}\n{GENERATED_BLOCK}\n"],
                         ids=["no-end", "reversed", "two-blocks"])
def test_merge_refuses_markers_that_do_not_make_one_block(existing: str) -> None:
    with pytest.raises(ValueError, match="do not make one block"):
        card.merge(existing, GENERATED)


def test_merge_refuses_a_generated_card_without_a_block() -> None:
    with pytest.raises(ValueError, match="generated card has no"):
        card.merge(HAND_EDITED, "---\nlicense: mit\n---\nno block\n")


# publish: what is sent


def test_publish_uploads_every_file_and_the_card(export: Path, hub: FakeHub) -> None:
    result = publish(export, REPO, api=hub)
    assert operations(hub) == [
        ("CommitOperationAdd", "README.md"),
        ("CommitOperationAdd", "data/train-00000-of-00001.parquet"),
        ("CommitOperationAdd", "lineage.parquet"),
    ]
    assert hub.card() == GENERATED == result.card
    assert hub.files["data/train-00000-of-00001.parquet"] == (export / "data/train-00000-of-00001.parquet").read_bytes()
    assert result.uploaded == ("README.md", "data/train-00000-of-00001.parquet", "lineage.parquet")
    assert result.deleted == ()


def test_publish_creates_the_dataset_repo_then_commits_once(export: Path, hub: FakeHub) -> None:
    result = publish(export, REPO, private=True, api=hub)
    assert hub.called() == ["create_repo", "list_repo_files", "create_commit"]
    assert hub.calls[0][1] == {"repo_id": REPO, "repo_type": "dataset", "private": True, "exist_ok": True}
    assert hub.calls[-1][1] == {"repo_id": REPO, "commit_message": "curate export: 3 rows", "repo_type": "dataset",
                                "revision": None}
    assert (result.url, result.revision) == (f"https://huggingface.co/datasets/{REPO}", "main")
    assert result.commit_url == f"https://huggingface.co/datasets/{REPO}/commit/abc123"


def test_publish_to_a_revision_creates_the_branch_and_commits_to_it(export: Path, hub: FakeHub) -> None:
    result = publish(export, REPO, revision="v2", message="Second cut", api=hub)
    assert hub.calls[1] == ("create_branch", {"repo_id": REPO, "branch": "v2", "repo_type": "dataset",
                                              "exist_ok": True})
    assert {kwargs.get("revision") for _, kwargs in hub.calls[2:]} == {"v2"}
    assert hub.calls[-1][1]["commit_message"] == "Second cut"
    assert result.url == f"https://huggingface.co/datasets/{REPO}/tree/v2"


def test_publish_without_a_row_count_uses_a_plain_message(tmp_path: Path, hub: FakeHub) -> None:
    folder = write_export(tmp_path / "export", readme=f"---\nlicense: mit\n---\n{GENERATED_BLOCK}\n")
    publish(folder, REPO, api=hub)
    assert hub.calls[-1][1]["commit_message"] == "Publish dataset with curate"


def test_publish_keeps_hand_written_prose_from_the_hub(export: Path, tmp_path: Path) -> None:
    hub = FakeHub(tmp_path / "hub-cache", files={"README.md": HAND_EDITED.encode()})
    result = publish(export, REPO, api=hub)
    assert hub.card() == result.card == card.merge(HAND_EDITED, GENERATED)
    assert "Written by hand, *before* the block.  Trailing spaces and all." in result.card
    assert "## Citation\n\nWritten by hand, after the block.\n" in result.card
    assert hub.calls[2] == ("hf_hub_download", {"repo_id": REPO, "filename": "README.md", "repo_type": "dataset",
                                                "revision": None})


def test_publish_deletes_stale_shards(tmp_path: Path) -> None:
    old = write_export(tmp_path / "old", shards=3)
    hub = FakeHub(tmp_path / "hub-cache", files={".gitattributes": b"*.parquet filter=lfs\n",
                                                 "notes.md": b"mine\n", "data/test.jsonl": b"{}\n"})
    assert publish(old, REPO, api=hub).deleted == ("data/test.jsonl",)
    new = write_export(tmp_path / "new", shards=1)
    (new / "lineage.parquet").unlink()
    result = publish(new, REPO, api=hub)
    assert result.deleted == ("data/train-00000-of-00003.parquet", "data/train-00001-of-00003.parquet",
                              "data/train-00002-of-00003.parquet", "lineage.parquet")
    assert operations(hub)[:4] == [("CommitOperationDelete", path) for path in result.deleted]
    assert sorted(hub.files) == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet", "notes.md"]


def test_publishing_twice_changes_nothing_the_second_time(export: Path, tmp_path: Path) -> None:
    hub = FakeHub(tmp_path / "hub-cache", files={"README.md": HAND_EDITED.encode()})
    first = publish(export, REPO, api=hub)
    files = dict(hub.files)
    second = publish(export, REPO, api=hub)
    assert (second.card, second.deleted, hub.files) == (first.card, (), files)


def test_publish_leaves_the_local_folder_as_it_was(export: Path, tmp_path: Path) -> None:
    hub = FakeHub(tmp_path / "hub-cache", files={"README.md": HAND_EDITED.encode()})
    before = {p: p.read_bytes() for p in export.rglob("*") if p.is_file()}
    publish(export, REPO, api=hub)
    assert {p: p.read_bytes() for p in export.rglob("*") if p.is_file()} == before


# publish: refusals before any network call


def test_publish_refuses_a_folder_that_does_not_exist(tmp_path: Path, hub: FakeHub) -> None:
    with pytest.raises(PublishError, match="no-such: no such folder"):
        publish(tmp_path / "no-such", REPO, api=hub)
    assert hub.calls == []


def test_publish_refuses_a_folder_without_a_card(tmp_path: Path, hub: FakeHub) -> None:
    folder = write_export(tmp_path / "export", readme=None)
    with pytest.raises(PublishError, match=r"README\.md: missing"):
        publish(folder, REPO, api=hub)
    assert hub.calls == []


def test_publish_refuses_a_card_without_a_curate_block(tmp_path: Path, hub: FakeHub) -> None:
    folder = write_export(tmp_path / "export", readme="---\nlicense: mit\n---\n# Mine\n")
    with pytest.raises(PublishError, match=r"README\.md: no <!-- curate:generated:start -->"):
        publish(folder, REPO, api=hub)
    assert hub.calls == []


def test_publish_refuses_a_card_with_bad_yaml(tmp_path: Path, hub: FakeHub) -> None:
    folder = write_export(tmp_path / "export", readme=f"---\ntags: a: b\n---\n{GENERATED_BLOCK}\n")
    with pytest.raises(PublishError, match=r"README\.md: front matter, line 2"):
        publish(folder, REPO, api=hub)


def test_publish_refuses_a_folder_without_data(tmp_path: Path, hub: FakeHub) -> None:
    folder = write_export(tmp_path / "export")
    (folder / "data" / "train-00000-of-00001.parquet").unlink()
    with pytest.raises(PublishError, match=r"data: no data files"):
        publish(folder, REPO, api=hub)
    assert hub.calls == []


def _link(export: Path, outside: Path, where: str, target: str) -> Path:
    """A symbolic link at ``where`` in ``export`` to a file or folder inside it or ``outside`` it."""
    (outside / "secret").mkdir(parents=True)
    (outside / "secret" / "id_rsa").write_text("PRIVATE KEY\n")
    to = {"file inside": export / "lineage.parquet", "folder inside": export / "data",
          "file outside": outside / "secret" / "id_rsa", "folder outside": outside / "secret",
          "nothing": outside / "gone"}[target]
    link = export / where
    link.symlink_to(to)
    return link


@pytest.mark.parametrize("where", ["data/extra.parquet", "notes", ".hidden-link"])
@pytest.mark.parametrize("target", ["file inside", "folder inside", "file outside", "folder outside", "nothing"])
def test_publish_refuses_a_folder_holding_a_symbolic_link(
    export: Path, tmp_path: Path, hub: FakeHub, where: str, target: str
) -> None:
    link = _link(export, tmp_path / "elsewhere", where, target)
    with pytest.raises(PublishError) as raised:
        publish(export, REPO, api=hub)
    assert str(raised.value) == (f"{link}: a symbolic link; publish uploads only files inside the folder, so "
                                 "replace it with a copy of what it points to")
    assert hub.calls == []


def test_publish_refuses_a_linked_card(export: Path, hub: FakeHub) -> None:
    (export / "card.md").write_bytes((export / "README.md").read_bytes())
    (export / "README.md").unlink()
    (export / "README.md").symlink_to(export / "card.md")
    with pytest.raises(PublishError, match=r"README\.md: a symbolic link"):
        publish(export, REPO, api=hub)
    assert hub.calls == []


def test_publish_takes_a_folder_named_through_a_link(export: Path, tmp_path: Path, hub: FakeHub) -> None:
    (tmp_path / "latest").symlink_to(export)
    assert publish(tmp_path / "latest", REPO, api=hub).uploaded == (
        "README.md", "data/train-00000-of-00001.parquet", "lineage.parquet")


@pytest.mark.parametrize("repo", ["chats", "acme/chats/extra", "acme/", "acme/-chats", "acme/ch--ats", "acme/chäts"])
def test_publish_refuses_a_repo_that_is_not_org_slash_name(export: Path, hub: FakeHub, repo: str) -> None:
    with pytest.raises(PublishError, match="repo must be ORG/NAME"):
        publish(export, repo, api=hub)
    assert hub.calls == []


def test_publish_without_token_says_how_to_log_in(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PublishError, match="no Hugging Face token to publish acme/chats with: log in with "
                                           "`hf auth login` .* or set HF_TOKEN"):
        publish(export, REPO)


def test_publish_takes_the_token_from_hf_token(export: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens: list[str] = []
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_stored_login")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token: tokens.append(token) or hub)
    publish(export, REPO)
    publish(export, REPO, token="hf_argument")
    assert tokens == ["hf_from_env", "hf_argument"]


# publish: the Hub failing


@pytest.mark.parametrize(("method", "error", "message"), [
    ("create_repo", hub_error(HfHubHTTPError, 401, "401 Client Error: Unauthorized\nmore detail"),
     "acme/chats: the Hub answered 401: 401 Client Error: Unauthorized; log in with `hf auth login`"),
    ("list_repo_files", hub_error(HfHubHTTPError, 500, "500 Server Error"), "acme/chats: the Hub answered 500"),
    ("create_commit", hub_error(RepositoryNotFoundError, 404), "acme/chats: the Hub has no such dataset repository"),
    ("create_repo", httpx2.ConnectError("[Errno -2] Name or service not known"),
     "acme/chats: cannot reach the Hugging Face Hub: "),
], ids=["unauthorized", "server-error", "not-found", "offline"])
def test_publish_turns_hub_errors_into_one_line_naming_the_repo(
    export: Path, tmp_path: Path, method: str, error: Exception, message: str
) -> None:
    hub = FakeHub(tmp_path / "hub-cache", fail={method: error})
    with pytest.raises(HubError) as raised:
        publish(export, REPO, api=hub)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_publish_treats_a_new_branch_without_files_as_an_empty_repo(export: Path, tmp_path: Path) -> None:
    hub = FakeHub(tmp_path / "hub-cache", fail={"list_repo_files": hub_error(RepositoryNotFoundError, 404)})
    result = publish(export, REPO, revision="new", api=hub)
    assert result.card == GENERATED and hub.called()[-1] == "create_commit"


def test_publish_names_a_broken_card_on_the_hub(export: Path, tmp_path: Path) -> None:
    hub = FakeHub(tmp_path / "hub-cache", files={"README.md": b"---\ntags: a: b\n---\nmine\n"})
    with pytest.raises(PublishError, match=r"acme/chats: the README\.md on the Hub cannot be merged: front matter, "
                                           r"line 2"):
        publish(export, REPO, api=hub)
    assert "create_commit" not in hub.called()


# curate publish


@pytest.fixture
def cli(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """The command as the lead registers it, over the fake Hub, logged in through HF_TOKEN."""
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token: hub)
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("publish")(publish_command)
    return app


def test_cli_publish_prints_each_file_then_the_url(cli: typer.Typer, export: Path, hub: FakeHub) -> None:
    hub.files["data/train-00000-of-00009.parquet"] = b"stale"
    result = CliRunner().invoke(cli, ["publish", str(export), "--repo", REPO, "--private"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "uploaded README.md",
        "uploaded data/train-00000-of-00001.parquet",
        "uploaded lineage.parquet",
        "deleted data/train-00000-of-00009.parquet",
        f"https://huggingface.co/datasets/{REPO}",
    ]
    assert hub.calls[0][1]["private"] is True


def test_cli_publish_reports_a_folder_to_fix_in_one_line_with_exit_2(cli: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["publish", str(tmp_path / "no-such"), "--repo", REPO])
    assert (result.exit_code, result.stderr) == (2, f"error: {tmp_path / 'no-such'}: no such folder\n")


def test_cli_publish_refuses_a_link_in_one_line_with_exit_2(cli: typer.Typer, export: Path, hub: FakeHub,
                                                             tmp_path: Path) -> None:
    link = _link(export, tmp_path / "elsewhere", "data/train-00001-of-00001.parquet", "file outside")
    result = CliRunner().invoke(cli, ["publish", str(export), "--repo", REPO])
    message = f"{link}: a symbolic link; publish uploads only files inside the folder, so replace it with a copy"
    assert (result.exit_code, result.stderr) == (2, f"error: {message} of what it points to\n")
    assert hub.calls == []


def test_cli_publish_reports_a_hub_failure_in_one_line_with_exit_1(cli: typer.Typer, export: Path,
                                                                  hub: FakeHub) -> None:
    hub.fail["create_commit"] = hub_error(HfHubHTTPError, 500, "500 Server Error")
    result = CliRunner().invoke(cli, ["publish", str(export), "--repo", REPO])
    assert (result.exit_code, result.stderr) == (1, "error: acme/chats: the Hub answered 500: 500 Server Error\n")
