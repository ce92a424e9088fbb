"""Tests of tests/hub_server.py, driven only through the real (unmodified) huggingface_hub client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from huggingface_hub.utils._runtime import is_xet_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import LocalHub  # noqa: E402


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport-level errors of whichever HTTP library this huggingface_hub version uses."""
    errors: list[type[BaseException]] = []
    for name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        errors.append(getattr(module, "TransportError", None) or module.ConnectionError)
    return tuple(errors)


NETWORK_ERRORS = _network_errors()

TOKEN = "hf_test_token_5a1b9c"
OTHER_TOKEN = "hf_other_token_77e2"
READ_TOKEN = "hf_read_only_token_3f0d"
REPO = "org/reranker-seqcls"
WEIGHTS_SIZE = 3 * 1024 * 1024


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _isolated_client(monkeypatch):
    # tests/conftest.py makes the whole suite offline (HF_HUB_OFFLINE=1, read at import time into
    # `constants.HF_HUB_OFFLINE`, but checked at call time): these tests must reach the local hub.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # Never let the client pick a token from the machine (env var / token file) implicitly.
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)


@pytest.fixture
def hub():
    with LocalHub(
        tokens={TOKEN: "tester", OTHER_TOKEN: "mallory", READ_TOKEN: ("tester", "read")},
        orgs={"org": ["tester"]},
        verbose=True,  # printed logs are checked for token leaks in test_token_never_logged
    ) as hub:
        yield hub


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.url, token=TOKEN)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(WEIGHTS_SIZE))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForSequenceClassification"]}))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# Reranker\n")
    return folder


def _read_folder(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _cache(tmp_path: Path, name: str = "hf_home") -> Path:
    """A fresh HF_HOME-like folder; the hub cache lives in <HF_HOME>/hub."""
    return tmp_path / name / "hub"


# ----------------------------------------------------------------------------------------------- tests


def test_whoami_and_invalid_token(hub, api):
    me = api.whoami()
    assert me["name"] == "tester"
    assert [org["name"] for org in me["orgs"]] == ["org"]
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=hub.url, token="hf_not_a_valid_token").whoami()
    assert exc.value.response.status_code == 401


def test_create_repo_public_private_exist_ok(hub, api):
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.endpoint == hub.url
    assert hub.repo_exists(REPO) and not hub.is_private(REPO)

    # Existing repo: 409 from the server, turned into success by the client with exist_ok=True.
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(REPO)
    assert exc.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO

    api.create_repo("tester/private-model", private=True)
    assert hub.is_private("tester/private-model")
    assert api.model_info("tester/private-model").private is True
    assert api.model_info(REPO).private is False

    # Namespace without write rights -> 403; namespace defaults to the token's user.
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=hub.url, token=OTHER_TOKEN).create_repo("org/not-yours")
    assert exc.value.response.status_code == 403
    assert api.create_repo("no-namespace").repo_id == "tester/no-namespace"

    api.create_repo("org/some-dataset", repo_type="dataset")
    assert hub.repo_ids("dataset") == ["org/some-dataset"]
    # Like the Hub, a new repo starts with one commit holding .gitattributes
    assert list(hub.files(REPO)) == [".gitattributes"]


def test_upload_folder_one_commit_then_snapshot_download_identical(hub, api, model_dir, tmp_path):
    api.create_repo(REPO)
    info = api.upload_folder(repo_id=REPO, folder_path=model_dir, commit_message="Add seqcls checkpoint")

    commits = hub.commits(REPO)
    assert len(commits) == 2  # initial commit + exactly ONE upload commit
    assert commits[0]["id"] == info.oid and commits[0]["title"] == "Add seqcls checkpoint"
    assert commits[0]["files"] == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    expected = _read_folder(model_dir)
    stored = hub.files(REPO)
    assert {k: v for k, v in stored.items() if k != ".gitattributes"} == expected
    # The weights are stored/served as an LFS file (default .gitattributes pattern), config as a regular file.
    entries = hub.file_entries(REPO)
    assert entries["model.safetensors"]["lfs"] is True and entries["config.json"]["lfs"] is False

    # model_info: sha == commit id, siblings, LFS metadata.
    model_info = api.model_info(REPO, files_metadata=True)
    assert model_info.sha == info.oid
    siblings = {s.rfilename: s for s in model_info.siblings}
    assert set(siblings) == set(stored)
    assert siblings["model.safetensors"].lfs.size == WEIGHTS_SIZE
    assert siblings["model.safetensors"].size == WEIGHTS_SIZE
    assert model_info.config == {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}
    assert sorted(api.list_repo_files(REPO)) == sorted(stored)

    # Fresh cache: byte-identical files, snapshot folder named after the commit id.
    cache = _cache(tmp_path)
    local = Path(snapshot_download(REPO, endpoint=hub.url, token=TOKEN, cache_dir=cache))
    assert local.name == info.oid
    assert {k: v for k, v in _read_folder(local).items() if k != ".gitattributes"} == expected
    # The LFS file went through the 302 -> CDN redirect, which the client fetched WITHOUT the token.
    assert any(line.startswith("[cdn] GET /lfs/") and "user=-" in line for line in hub.log)


def test_hf_hub_download_single_file_and_not_found_errors(hub, api, model_dir, tmp_path):
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=model_dir)
    cache = _cache(tmp_path)

    path = hf_hub_download(REPO, "config.json", endpoint=hub.url, token=TOKEN, cache_dir=cache)
    assert Path(path).read_bytes() == (model_dir / "config.json").read_bytes()
    weights = hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=False, cache_dir=cache)
    assert Path(weights).read_bytes() == (model_dir / "model.safetensors").read_bytes()
    meta = huggingface_hub.get_hf_file_metadata(
        huggingface_hub.hf_hub_url(REPO, "model.safetensors", endpoint=hub.url), token=False
    )
    assert meta.etag == hub.file_entries(REPO)["model.safetensors"]["sha256"]
    assert meta.size == WEIGHTS_SIZE and meta.commit_hash == hub.refs(REPO)["refs/heads/main"]

    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.bin", endpoint=hub.url, token=TOKEN, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="nope", endpoint=hub.url, token=TOKEN, cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "config.json", endpoint=hub.url, token=TOKEN, cache_dir=cache)


def test_branch_revision(hub, api, tmp_path):
    api.create_repo(REPO)
    main_v1 = api.upload_file(path_or_fileobj=b'{"v": 1}', path_in_repo="config.json", repo_id=REPO).oid
    api.create_branch(REPO, branch="v2")
    api.create_branch(REPO, branch="v2", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_branch(REPO, branch="v2")
    assert exc.value.response.status_code == 409

    dev = api.upload_file(path_or_fileobj=b'{"v": 2}', path_in_repo="config.json", repo_id=REPO, revision="v2")
    assert hub.files(REPO, "v2")["config.json"] == b'{"v": 2}'
    assert hub.files(REPO, "main")["config.json"] == b'{"v": 1}'
    assert hub.refs(REPO)["refs/heads/main"] == main_v1
    assert api.model_info(REPO, revision="v2").sha == dev.oid
    assert [c.commit_id for c in api.list_repo_commits(REPO, revision="v2")][:2] == [dev.oid, main_v1]

    cache = _cache(tmp_path)
    for revision, expected in (("v2", b'{"v": 2}'), ("main", b'{"v": 1}'), (main_v1, b'{"v": 1}')):
        path = hf_hub_download(REPO, "config.json", revision=revision, endpoint=hub.url, token=TOKEN, cache_dir=cache)
        assert Path(path).read_bytes() == expected
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, revision="no-such-branch")


def test_create_pr(hub, api, model_dir, tmp_path):
    api.create_repo(REPO)
    base = api.upload_file(path_or_fileobj=b"v1", path_in_repo="README.md", repo_id=REPO).oid

    pr = api.create_commit(
        REPO,
        [CommitOperationAdd("README.md", b"v2"), CommitOperationAdd("extra.txt", b"extra")],
        commit_message="Proposed change",
        create_pr=True,
    )
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert hub.refs(REPO)["refs/heads/main"] == base  # main untouched
    assert hub.files(REPO, "refs/pr/1")["README.md"] == b"v2"
    path = hf_hub_download(REPO, "extra.txt", revision=pr.pr_revision, endpoint=hub.url, token=TOKEN, cache_dir=_cache(tmp_path))
    assert Path(path).read_bytes() == b"extra"
    details = api.get_discussion_details(REPO, 1)
    assert details.is_pull_request and details.target_branch == "refs/heads/main"

    # upload_folder(create_pr=True) takes another client code path (explicit create_pull_request + push to ref).
    pr2 = api.upload_folder(repo_id=REPO, folder_path=model_dir, create_pr=True)
    assert pr2.pr_revision == "refs/pr/2"
    assert hub.files(REPO, "refs/pr/2")["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()
    assert "model.safetensors" not in hub.files(REPO)

    api.merge_pull_request(REPO, 1)
    assert hub.files(REPO)["README.md"] == b"v2" and hub.files(REPO)["extra.txt"] == b"extra"


def test_private_repo_unreadable_without_token(hub, api, tmp_path):
    api.create_repo("tester/secret", private=True)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="tester/secret")
    cache = _cache(tmp_path)

    for token in (False, OTHER_TOKEN):
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("tester/secret", "config.json", endpoint=hub.url, token=token, cache_dir=cache)
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=hub.url, token=token).model_info("tester/secret")
        with pytest.raises(RepositoryNotFoundError):
            snapshot_download("tester/secret", endpoint=hub.url, token=token, cache_dir=cache)
    assert any("/tester/secret/resolve/" in line and "-> 401" in line for line in hub.log)  # anonymous
    assert any("/tester/secret/resolve/" in line and "-> 404" in line for line in hub.log)  # other user

    path = hf_hub_download("tester/secret", "config.json", endpoint=hub.url, token=READ_TOKEN, cache_dir=cache)
    assert Path(path).read_bytes() == b"{}"


def test_write_requires_valid_token_and_rights(hub, api):
    api.create_repo(REPO)
    before = hub.commits(REPO)
    op = [CommitOperationAdd("config.json", b"{}")]

    cases = [("hf_invalid_token", 401), (False, 401), (OTHER_TOKEN, 403), (READ_TOKEN, 403)]
    for token, status in cases:
        with pytest.raises(HfHubHTTPError) as exc:
            HfApi(endpoint=hub.url, token=token).create_commit(REPO, op, commit_message="nope")
        assert exc.value.response.status_code == status, token
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=hub.url, token="hf_invalid_token").upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=REPO)
    assert exc.value.response.status_code == 401
    assert hub.commits(REPO) == before


def test_connection_drop_mid_commit_is_atomic_and_retry_succeeds(hub, api):
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b'{"v": 1}', path_in_repo="config.json", repo_id=REPO)
    before_commits, before_files = hub.commits(REPO), hub.files(REPO)
    weights = os.urandom(WEIGHTS_SIZE)

    def ops():
        return [CommitOperationAdd("model.safetensors", weights), CommitOperationAdd("config.json", b'{"v": 2}')]

    # create_commit does not retry the commit POST: the client must surface the network error.
    hub.drop_connection_after(500_000, "/commit/")
    with pytest.raises(NETWORK_ERRORS):
        api.create_commit(REPO, ops(), commit_message="Add weights")
    assert any("/commit/main -> connection dropped" in line for line in hub.log)
    assert hub.commits(REPO) == before_commits
    assert hub.files(REPO) == before_files

    info = api.create_commit(REPO, ops(), commit_message="Add weights")
    assert hub.commits(REPO)[0]["id"] == info.oid and len(hub.commits(REPO)) == len(before_commits) + 1
    assert hub.files(REPO)["model.safetensors"] == weights
    assert hub.files(REPO)["config.json"] == b'{"v": 2}'


@pytest.mark.skipif(not is_xet_available(), reason="only the hf_xet-era upload_folder pipeline retries commits")
def test_upload_folder_retries_dropped_commit_without_duplicating_it(hub, api, model_dir):
    api.create_repo(REPO)
    hub.drop_connection_after(100_000, "/commit/")
    info = api.upload_folder(repo_id=REPO, folder_path=model_dir)  # the client retries after ~1 s
    assert hub.pending_faults() == 0  # the drop did happen
    assert [c["id"] for c in hub.commits(REPO)][0] == info.oid
    assert len(hub.commits(REPO)) == 2  # exactly one upload commit despite the retry
    assert hub.files(REPO)["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()


def test_lost_commit_response_leaves_commit_applied(hub, api):
    api.create_repo(REPO)
    hub.drop_connection("/commit/", on="response")  # processed, then the answer is lost
    with pytest.raises(NETWORK_ERRORS):
        api.create_commit(REPO, [CommitOperationAdd("a.txt", b"a")], commit_message="lost answer")
    assert hub.files(REPO)["a.txt"] == b"a"
    assert hub.commits(REPO)[0]["title"] == "lost answer"


def test_simulated_403_409_and_real_parent_commit_conflict(hub, api):
    api.create_repo(REPO)
    head = api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id=REPO).oid
    before = hub.commits(REPO)

    hub.fail_next("/commit/", 403, message="Simulated forbidden")
    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_file(path_or_fileobj=b"2", path_in_repo="a.txt", repo_id=REPO)
    assert exc.value.response.status_code == 403 and "Simulated forbidden" in str(exc.value)
    hub.fail_next("/commit/", 409, method="POST")
    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_file(path_or_fileobj=b"2", path_in_repo="a.txt", repo_id=REPO)
    assert exc.value.response.status_code == 409
    assert hub.commits(REPO) == before

    second = api.upload_file(path_or_fileobj=b"2", path_in_repo="a.txt", repo_id=REPO, parent_commit=head).oid
    with pytest.raises(HfHubHTTPError) as exc:  # stale parent -> 412, nothing written
        api.upload_file(path_or_fileobj=b"3", path_in_repo="a.txt", repo_id=REPO, parent_commit=head)
    assert exc.value.response.status_code == 412
    assert hub.refs(REPO)["refs/heads/main"] == second and hub.files(REPO)["a.txt"] == b"2"

    api.create_commit(REPO, [CommitOperationDelete("a.txt")], commit_message="delete")
    assert "a.txt" not in hub.files(REPO)


def test_lfs_basic_transfer_when_xet_is_disabled(monkeypatch, tmp_path, model_dir):
    # With hf_xet installed the client would use Xet for "lfs" files; is_xet_available() reads this at call time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    with LocalHub(tokens={TOKEN: "tester"}, upload_mode="lfs", lfs_redirect=False) as hub:
        api = HfApi(endpoint=hub.url, token=TOKEN)
        api.create_repo("tester/lfs")
        hub.drop_connection_after(1_000_000, "/__lfs/upload/")  # PUT is retried by the client
        info = api.upload_folder(repo_id="tester/lfs", folder_path=model_dir)

        assert any("/tester/lfs.git/info/lfs/objects/batch -> 200" in line for line in hub.log)
        assert sum("PUT /__lfs/upload/" in line for line in hub.log) == 2  # dropped once, then OK
        assert len(hub.commits("tester/lfs")) == 2
        tree = {f.path: f for f in api.list_repo_tree("tester/lfs", revision=info.oid)}
        assert tree["model.safetensors"].lfs.sha256 == hub.file_entries("tester/lfs")["model.safetensors"]["sha256"]
        assert tree["config.json"].lfs is None
        local = snapshot_download("tester/lfs", endpoint=hub.url, token=TOKEN, cache_dir=_cache(tmp_path))
        assert {k: v for k, v in _read_folder(Path(local)).items() if k != ".gitattributes"} == _read_folder(model_dir)


def test_download_survives_mid_body_drop_and_range_resume(hub, api, model_dir, tmp_path):
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=model_dir)
    weights = (model_dir / "model.safetensors").read_bytes()
    # Cut the CDN download mid-body with an orderly close (the client retries on that, not on a TCP reset).
    hub.drop_connection("/lfs/", on="response", after_bytes=1_000_000, reset=False)
    path = hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=TOKEN, cache_dir=_cache(tmp_path))
    assert Path(path).read_bytes() == weights
    cdn_gets = [line for line in hub.log if line.startswith("[cdn] GET /lfs/")]
    assert len(cdn_gets) == 2 and "response dropped" in cdn_gets[0]

    # The client's resume primitive sends `Range: bytes=N-` (through the 302 for LFS files): 206 + tail.
    from huggingface_hub.file_download import http_get

    for filename, content in (("model.safetensors", weights), ("config.json", (model_dir / "config.json").read_bytes())):
        url = huggingface_hub.hf_hub_url(REPO, filename, endpoint=hub.url)
        part = tmp_path / f"{filename}.part"
        part.write_bytes(content[:10])
        with part.open("ab") as f:
            http_get(url, f, resume_size=10, headers={"authorization": f"Bearer {TOKEN}"}, expected_size=len(content))
        assert part.read_bytes() == content
    assert sum("-> 206" in line for line in hub.log) == 2


def test_tree_pagination_paths_info_and_expand(tmp_path):
    with LocalHub(tokens={TOKEN: "tester"}, tree_page_size=2) as hub:
        api = HfApi(endpoint=hub.url, token=TOKEN)
        api.create_repo("tester/tree")
        api.create_commit(
            "tester/tree",
            [CommitOperationAdd(p, p.encode()) for p in ("a.txt", "sub/b.txt", "sub/deep/c.txt", "sub/d.bin")],
            commit_message="files",
        )
        last = api.upload_file(path_or_fileobj=b"new", path_in_repo="a.txt", repo_id="tester/tree").oid
        recursive = {e.path for e in api.list_repo_tree("tester/tree", recursive=True)}
        assert recursive == {".gitattributes", "a.txt", "sub", "sub/b.txt", "sub/deep", "sub/deep/c.txt", "sub/d.bin"}
        assert sum("/tree/main" in line for line in hub.log) >= 4  # 7 entries / page size 2 => paginated
        assert {e.path for e in api.list_repo_tree("tester/tree", path_in_repo="sub")} == {"sub/b.txt", "sub/deep", "sub/d.bin"}
        infos = {e.path: e for e in api.get_paths_info("tester/tree", ["a.txt", "sub", "missing"], expand=True)}
        assert set(infos) == {"a.txt", "sub"} and infos["a.txt"].last_commit.oid == last
        assert infos["sub"].last_commit.oid != last
        assert next(iter(api.get_paths_info("tester/tree", ["sub/d.bin"]))).lfs is not None  # *.bin is LFS


def test_token_never_logged(hub, api, model_dir, tmp_path, capfd):
    api.create_repo(REPO, private=True)
    api.upload_folder(repo_id=REPO, folder_path=model_dir)
    snapshot_download(REPO, endpoint=hub.url, token=TOKEN, cache_dir=_cache(tmp_path))
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=hub.url, token="hf_leaked_bad_token").whoami()
    out, err = capfd.readouterr()
    printed = out + err + "\n".join(hub.log)
    assert "[localhub] POST /api/models/org/reranker-seqcls/commit/main -> 200 (user=tester)" in err
    for secret in (TOKEN, "hf_leaked_bad_token"):
        assert secret not in printed
    assert not any("authorization" in line.lower() for line in hub.log)


def test_patch_client_for_code_without_endpoint_argument(hub, monkeypatch, tmp_path):
    # Simulates library code that calls the client without `endpoint=` (module-level helpers).
    with hub.patch_client(monkeypatch):
        huggingface_hub.create_repo(REPO, token=TOKEN)
        huggingface_hub.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=REPO, token=TOKEN)
        path = huggingface_hub.hf_hub_download(REPO, "config.json", cache_dir=_cache(tmp_path), token=False)
        assert Path(path).read_bytes() == b"{}"
        assert os.environ["HF_ENDPOINT"] == hub.url
    assert hub.files(REPO)["config.json"] == b"{}"


def test_env_var_route_transformers_autoconfig_in_subprocess(hub, tmp_path):
    config = {"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
              "intermediate_size": 37, "vocab_size": 99, "num_labels": 1}
    hub.seed(REPO, {"config.json": json.dumps(config)}, private=True)  # private: the token must be used
    hf_home = tmp_path / "sub_hf_home"
    env = {**os.environ, **hub.env(hf_home, token=TOKEN)}
    code = (
        "from transformers import AutoConfig\n"
        f"c = AutoConfig.from_pretrained({REPO!r})\n"
        "print('RESULT', c.model_type, c.hidden_size, c.num_labels)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT bert 32 1" in proc.stdout
    assert (hf_home / "hub" / "models--org--reranker-seqcls").is_dir()
    assert any("/org/reranker-seqcls/resolve/" in line and "config.json -> 200 (user=tester)" in line for line in hub.log)
