"""Pull from and push to a Hub with the real huggingface_hub client, against tests/hub_server.py.

The round trip runs the real CLI in subprocesses pointed at the local Hub through HF_ENDPOINT;
failure cases call ``seqcls.cli.main`` in-process with the client patched onto the same Hub.
The token used everywhere is a marker that must never show up in any output or in the Hub's log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest

from factory import build_model
from hub_server import LocalHub

TOKEN = "hf_MARKER_abc123"
BAD_TOKEN = "hf_MARKER_bad_456"
SECRETS = (TOKEN, BAD_TOKEN, "MARKER")
SOURCE = "org/tiny-causal"
TARGET = "tester/tiny-seqcls"
PAIRS = [("What is the capital of France?", "The capital of France is Paris."), ("What is the capital of France?", "Reranking is fun!")]

_seen_output: list[str] = []


def _no_secret(*texts: str) -> None:
    _seen_output.extend(texts)
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def _read_folder(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def _remote(hub: LocalHub, repo_id: str, revision: str = "main") -> dict[str, bytes]:
    return {k: v for k, v in hub.files(repo_id, revision).items() if k != ".gitattributes"}


@pytest.fixture(scope="module")
def hub():
    with LocalHub(tokens={TOKEN: "tester", "hf_other_token": "mallory"}, orgs={"org": ["tester"]}) as server:
        yield server
        _no_secret("\n".join(server.log))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="module")
def env(hub, workdir) -> dict[str, str]:
    return {**os.environ, **hub.env(workdir / "hf_home", token=TOKEN), "SEQCLS_CACHE": str(workdir / "seqcls_cache")}


@pytest.fixture(scope="module")
def source_repo(hub, workdir) -> dict[str, str]:
    """A tiny tied Qwen3 CausalLM on the Hub as org/tiny-causal, plus a branch v1 pointing at it."""
    folder = build_model(workdir / "source", "qwen3", tied=True)
    sha = hub.seed(SOURCE, _read_folder(folder), message="tiny model", private=True)  # private: HF_TOKEN must be used
    with hub.patch_client():
        huggingface_hub.HfApi(endpoint=hub.url, token=TOKEN).create_branch(SOURCE, branch="v1")
    return {"sha": sha, "folder": str(folder)}


def _cli(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "seqcls.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)
    _no_secret(proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def converted(hub, source_repo, env, workdir) -> Path:
    """`seqcls convert org/tiny-causal --push-to ...` in a subprocess: downloads through HF_ENDPOINT,
    verifies by default, then publishes (the round trip test pushes the same folder again with `seqcls push`)."""
    out = workdir / "tiny-seqcls"
    proc = _cli(["convert", SOURCE, "--recipe", "qwen3", "--output", str(out), "--push-to", "tester/via-convert", "--private", "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["parity"]["passed"] is True
    assert summary["push"]["commit_oid"] == hub.commits("tester/via-convert")[0]["id"] and hub.is_private("tester/via-convert")
    assert _remote(hub, "tester/via-convert") == _read_folder(out)
    return out


@pytest.fixture
def inproc(hub, workdir, monkeypatch, tmp_path):
    """Point this process's huggingface_hub at the local Hub, with an isolated cache and no machine token."""
    hub.patch_client(monkeypatch).__enter__()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.setenv("SEQCLS_CACHE", str(tmp_path / "seqcls_cache"))
    hub.clear_faults()
    return hub


def _main(args: list[str], capfd) -> tuple[int, str, str]:
    from seqcls.cli import main

    code = main(args)
    out, err = capfd.readouterr()
    _no_secret(out, err)
    return code, out, err


def _copy(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    dest = tmp_path / name
    shutil.copytree(folder, dest)
    return dest


# ------------------------------------------------------------------------------------------- round trip


def test_round_trip_convert_push_pull_verify_score_and_cross_encoder(hub, env, converted, source_repo, workdir):
    prov = json.loads((converted / "config.json").read_text())["seqcls"]
    assert (prov["source"], prov["source_kind"], prov["revision"]) == (SOURCE, "hub", source_repo["sha"])

    proc = _cli(["push", str(converted), "--repo-id", TARGET, "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pushed = json.loads(proc.stdout)
    commits = hub.commits(TARGET)
    assert len(commits) == 2 and pushed["commit_oid"] == commits[0]["id"] and not pushed["up_to_date"]
    # Every file on the Hub is byte-identical to the folder; the card was rendered for the repo id and
    # written back locally after the push, so README.md is identical too.
    local = _read_folder(converted)
    assert _remote(hub, TARGET) == local
    assert sorted(pushed["files"]) == sorted(local)
    assert f'CrossEncoder("{TARGET}")' in local["README.md"].decode()
    assert {"model.safetensors", "config.json", "parity_report.json", "tokenizer.json", "seqcls_recipe.yaml"} <= set(local)

    # Use the published repo only through its id: download + verify against the (Hub) source, and CrossEncoder.
    pulled = workdir / "pulled"
    code = (
        "import json, sys\n"
        "from huggingface_hub import snapshot_download\n"
        "from sentence_transformers import CrossEncoder\n"
        "import seqcls\n"
        f"folder = snapshot_download({TARGET!r}, local_dir={str(pulled)!r})\n"
        "report = seqcls.verify(folder, device='cpu', bf16=False, consumers=False)  # CrossEncoder is checked below\n"
        f"pairs = {PAIRS!r}\n"
        f"hub_scores = CrossEncoder({TARGET!r}, device='cpu').predict(pairs).tolist()\n"
        f"local_scores = CrossEncoder({str(converted)!r}, device='cpu').predict(pairs).tolist()\n"
        f"scorer = seqcls.Scorer({TARGET!r}, device='cpu').score([p[0] for p in pairs], [p[1] for p in pairs]).scores\n"
        "print('RESULT ' + json.dumps({'passed': report.passed, 'source': report.source, 'hub': hub_scores, 'local': local_scores, 'scorer': scorer}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    _no_secret(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["passed"] is True and result["source"] == SOURCE
    assert result["hub"] == result["local"] and len(result["hub"]) == 2
    assert max(abs(a - b) for a, b in zip(result["scorer"], result["hub"])) <= 1e-5  # seqcls scoring from the repo id
    assert (pulled / "model.safetensors").read_bytes() == local["model.safetensors"]


def test_rerun_is_up_to_date_and_makes_no_commit(inproc, converted, capfd):
    before = inproc.commits(TARGET) if inproc.repo_exists(TARGET) else None
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/rerun"], capfd)
    assert code == 0, err
    assert "Pushed" in out and len(inproc.commits("tester/rerun")) == 2
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/rerun"], capfd)
    assert code == 0 and "Up to date" in out and len(inproc.commits("tester/rerun")) == 2
    if before is not None:
        assert inproc.commits(TARGET) == before


def test_branch_private_and_create_pr(inproc, converted, capfd):
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/branchy", "--private", "--revision", "exp",
                            "--commit-message", "first try", "--json"], capfd)
    assert code == 0, err
    result = json.loads(out)
    assert result["revision"] == "exp" and inproc.is_private("tester/branchy")
    assert inproc.commits("tester/branchy", "exp")[0]["title"] == "first try"
    assert _remote(inproc, "tester/branchy", "exp") == _read_folder(converted)
    assert _remote(inproc, "tester/branchy", "main") == {}
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/branchy", "--create-pr", "--json"], capfd)
    assert code == 0, err
    result = json.loads(out)
    assert result["pr_url"] and "refs/pr/1" in inproc.refs("tester/branchy")
    assert _remote(inproc, "tester/branchy", "refs/pr/1") == _read_folder(converted)


# ----------------------------------------------------------------------------------------- pull details


def test_revision_pin_is_recorded_in_provenance(inproc, source_repo, tmp_path):
    from seqcls.errors import UsageError
    from seqcls.pipeline import output_config, plan

    for spec, revision in ((f"{SOURCE}@v1", None), (f"{SOURCE}@{source_repo['sha']}", None), (SOURCE, "v1")):
        p = plan(spec, tmp_path / "out", "qwen3", revision=revision)
        prov = output_config(p)["seqcls"]
        assert prov["revision"] == source_repo["sha"] and prov["source"] == spec
    with pytest.raises(UsageError, match="not found in"):
        plan(f"{SOURCE}@nope", tmp_path / "out", "qwen3")
    with pytest.raises(UsageError, match="give the revision once"):
        plan(f"{SOURCE}@v1", tmp_path / "out", "qwen3", revision="main")


def test_offline_mode_uses_the_cache(inproc, converted, source_repo, workdir, monkeypatch):
    from seqcls.errors import UsageError
    from seqcls.io.sources import open_source

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(workdir / "hf_home" / "hub"))  # the CLI's cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    requests = len(inproc.log)
    source = open_source(SOURCE)
    assert source.revision == source_repo["sha"] and (source.folder / "model.safetensors").is_file()
    with pytest.raises(UsageError, match="not in the local cache"):
        open_source("org/never-downloaded")
    assert len(inproc.log) == requests


def test_pickled_weights_need_allow_pickle(inproc, source_repo, tmp_path):
    import torch
    from safetensors.torch import load_file

    from seqcls.errors import UsageError
    from seqcls.io.sources import open_source

    folder = Path(source_repo["folder"])
    state = load_file(str(folder / "model.safetensors"))
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied: shared storage, as save_pretrained pickles it
    torch.save(state, tmp_path / "pytorch_model.bin")
    files = {k: v for k, v in _read_folder(folder).items() if not k.endswith(".safetensors")}
    files["pytorch_model.bin"] = (tmp_path / "pytorch_model.bin").read_bytes()
    sha = inproc.seed("org/tiny-pickle", files)

    with pytest.raises(UsageError, match="--allow-pickle"):
        open_source("org/tiny-pickle")
    source = open_source("org/tiny-pickle", allow_pickle=True)
    assert source.revision == sha and source.kind == "hub"
    converted = load_file(str(source.folder / "model.safetensors"))
    assert set(converted) == set(state) and all(torch.equal(converted[k], state[k]) for k in state)
    assert not list(source.folder.glob("*.bin"))


def test_gguf_only_repo_is_explained(inproc):
    from seqcls.errors import UsageError
    from seqcls.io.sources import open_source

    inproc.seed("org/many-gguf", {"a.Q4_0.gguf": b"GGUF0", "a.Q8_0.gguf": b"GGUF1", "README.md": "# quants"})
    with pytest.raises(UsageError, match=r"2 \.gguf files \(a\.Q4_0\.gguf, a\.Q8_0\.gguf\).*hf download"):
        open_source("org/many-gguf")


# ------------------------------------------------------------------------------------------- refusals


def test_modified_missing_or_failed_parity_is_refused(inproc, converted, tmp_path, capfd):
    modified = _copy(converted, tmp_path, "modified")
    data = bytearray((modified / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (modified / "model.safetensors").write_bytes(bytes(data))
    code, out, err = _main(["push", str(modified), "--repo-id", "tester/refused"], capfd)
    assert code == 1 and "changed after verification (model.safetensors)" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1 and not inproc.repo_exists("tester/refused")

    missing = _copy(converted, tmp_path, "missing")
    (missing / "parity_report.json").unlink()
    code, out, err = _main(["push", str(missing), "--repo-id", "tester/refused"], capfd)
    assert code == 1 and "never verified" in err and not inproc.repo_exists("tester/refused")

    failed = _copy(converted, tmp_path, "failed")
    report = json.loads((failed / "parity_report.json").read_text())
    report["passed"] = False
    (failed / "parity_report.json").write_text(json.dumps(report))
    code, out, err = _main(["push", str(failed), "--repo-id", "tester/refused"], capfd)
    assert code == 1 and "says FAILED" in err and not inproc.repo_exists("tester/refused")

    code, out, err = _main(["push", str(failed), "--repo-id", "tester/refused", "--force"], capfd)
    assert code == 0, err
    assert "Warning" in err and "--force" in err
    assert _remote(inproc, "tester/refused")["parity_report.json"] == (failed / "parity_report.json").read_bytes()
    assert "**FAILED**" in _remote(inproc, "tester/refused")["README.md"].decode()

    # Forcing stale weights publishes them without the report that no longer describes them.
    code, out, err = _main(["push", str(modified), "--repo-id", "tester/refused", "--force", "--json"], capfd)
    assert code == 0, err
    remote = _remote(inproc, "tester/refused")
    assert "parity_report.json" not in remote and remote["model.safetensors"] == bytes(data)


def test_no_token_and_offline(inproc, converted, monkeypatch, capfd):
    monkeypatch.delenv("HF_TOKEN")
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/no-token"], capfd)
    assert code == 2 and err.strip() == "Error: No Hugging Face token found; run `hf auth login` or set HF_TOKEN."
    code, out, err = _main(["convert", str(converted), "--output", str(converted.parent / "never"), "--push-to", "tester/x"], capfd)
    assert code == 2 and "No Hugging Face token" in err and not (converted.parent / "never").exists()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = _main(["convert", str(converted), "--output", str(converted.parent / "never"), "--push-to", "tester/x", "--no-verify"], capfd)
    assert code == 2 and "drop --no-verify" in err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/no-token"], capfd)
    assert code == 2 and "HF_HUB_OFFLINE" in err
    assert not inproc.repo_exists("tester/no-token")


@pytest.mark.parametrize(
    ("repo_id", "token", "fault", "expected"),
    [
        ("tester/auth", BAD_TOKEN, None, "rejected the token (401 Unauthorized); run `hf auth login`"),
        ("mallory/theirs", TOKEN, None, "may not write to mallory/theirs (403 Forbidden"),
        ("tester/auth", TOKEN, ("/commit/", 404, "RepoNotFound"), "was not found with your token (404)"),
        ("tester/auth", TOKEN, ("/commit/", 409, None), "because of a conflict (409"),
    ],
)
def test_http_errors_are_one_clear_line(inproc, converted, monkeypatch, capfd, repo_id, token, fault, expected):
    monkeypatch.setenv("HF_TOKEN", token)
    if fault:
        inproc.fail_next(fault[0], fault[1], method="POST", error_code=fault[2], message="simulated")
    code, out, err = _main(["push", str(converted), "--repo-id", repo_id], capfd)
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: ")
    if inproc.repo_exists(repo_id):
        assert len(inproc.commits(repo_id)) == 1  # only the Hub's initial .gitattributes commit


def test_connection_lost_mid_commit_then_rerun(inproc, converted, capfd):
    before = _read_folder(converted)
    inproc.drop_connection("/commit/", on="request", after_bytes=1000)
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/flaky"], capfd)
    assert code != 0 and "Lost the connection" in err and "retrying the push is safe" in err
    assert inproc.pending_faults() == 0 and len(inproc.commits("tester/flaky")) == 1
    assert _read_folder(converted) == before
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/flaky"], capfd)
    assert code == 0, err
    assert len(inproc.commits("tester/flaky")) == 2 and _remote(inproc, "tester/flaky") == _read_folder(converted)
    # Only after a successful push is the local card re-rendered for the repo id it was published to.
    assert {k for k, v in _read_folder(converted).items() if before[k] != v} == {"README.md"}
    assert 'CrossEncoder("tester/flaky")' in (converted / "README.md").read_text()

    # The commit lands but its answer is lost: the rerun sees the files already there and commits nothing.
    inproc.drop_connection("/commit/", on="response")
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/lost"], capfd)
    assert code != 0 and len(inproc.commits("tester/lost")) == 2
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/lost"], capfd)
    assert code == 0 and "Up to date" in out and len(inproc.commits("tester/lost")) == 2


def test_stale_shards_are_removed_by_the_next_push(inproc, converted, capfd):
    inproc.seed("tester/stale", {"model-00001-of-00002.safetensors": b"old", "model.safetensors.index.json": "{}", "notes.txt": "keep"})
    code, out, err = _main(["push", str(converted), "--repo-id", "tester/stale", "--json"], capfd)
    assert code == 0, err
    assert sorted(json.loads(out)["deleted"]) == ["model-00001-of-00002.safetensors", "model.safetensors.index.json"]
    assert _remote(inproc, "tester/stale") == {**_read_folder(converted), "notes.txt": b"keep"}


def test_marker_token_never_seen(hub):
    assert _seen_output, "the other tests captured output"
    _no_secret("\n".join(hub.log))
    assert not any("authorization" in line.lower() for line in hub.log)
