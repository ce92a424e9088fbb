"""The streaming converter against transformers: exact logits, bit-identical backbones, clean failures."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import seqcls
from factory import ARCHS, build_model, config_of, read_tensors
from seqcls.recipe import Recipe, Template

TEMPLATE = Template(query="Q: {query}\n", document="D: {document}\n", suffix="Relevant:")
TWO_WAY = Recipe(name="test-2way", method="from_2_way_softmax", tokens=["no", "yes"], template=TEMPLATE)
ROWS = Recipe(name="test-rows", method="no_post_processing", tokens=["Yes", 7, "no"], template=TEMPLATE)


def _batch(lengths: list[int], pad_id: int, side: str, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens = torch.randint(10, 400, (n,), generator=gen)
        tokens[tokens == pad_id] = 11
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, sl] = tokens
        mask[row, sl] = 1
    return ids, mask


def _last_logits(model, ids, mask, side):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    if side == "left":
        return logits[:, -1]
    return logits[torch.arange(len(ids)), mask.sum(1) - 1]


def _expected_head(src: Path, method: str, token_ids: list[int], tied: bool, out_dtype: torch.dtype) -> torch.Tensor:
    tensors = read_tensors(src)
    weight = tensors["model.embed_tokens.weight" if tied else "lm_head.weight"].float()
    rows = weight[token_ids]
    head = rows[1:2] - rows[0:1] if method == "from_2_way_softmax" else rows
    return head.to(out_dtype)


CASES = [(arch, tied) for arch in ARCHS for tied in (False, True)]


@pytest.mark.parametrize("arch,tied", CASES, ids=[f"{a}-{'tied' if t else 'untied'}" for a, t in CASES])
def test_every_architecture_matches_causal_lm(arch, tied, tmp_path):
    sharded = (list(ARCHS).index(arch) + tied) % 2 == 0
    src = build_model(tmp_path / "src", arch, tied=tied, shard="150KB" if sharded else None)
    assert len(list(src.glob("*.safetensors"))) > 1 if sharded else (src / "model.safetensors").is_file()
    causal = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    source_tensors = read_tensors(src)
    lengths = [5, 17, 9, 1]
    for recipe in (TWO_WAY, ROWS):
        out = tmp_path / f"out-{recipe.name}"
        result = seqcls.convert(str(src), output=out, recipe=recipe, verify=False, max_shard_size="100KB" if sharded else None)
        token_ids = result.plan.token_ids
        config = config_of(out)
        assert config["architectures"] == [seqcls.pipeline.mapping_for([ARCHS[arch][1]]).seq_cls]
        assert config["pad_token_id"] is not None and config["use_sep_token"] is False and config["use_pad_token"] is False
        assert "method" not in config and "classifier_from_token" not in config
        assert config["seqcls"]["token_ids"] == token_ids
        if sharded:
            assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) > 1
        # every backbone tensor bit-identical, the head equal to fp32 row arithmetic
        out_tensors = read_tensors(out)
        assert set(out_tensors) == (set(source_tensors) - {"lm_head.weight"}) | {"score.weight"}
        for name, tensor in source_tensors.items():
            if name != "lm_head.weight":
                assert torch.equal(out_tensors[name], tensor), name
        assert torch.equal(out_tensors["score.weight"], _expected_head(src, recipe.method, token_ids, tied, torch.float32))

        seq = AutoModelForSequenceClassification.from_pretrained(str(out), dtype=torch.float32).eval()
        assert seq.config.pad_token_id == config["pad_token_id"]
        for side in ("left", "right"):
            ids, mask = _batch(lengths, config["pad_token_id"], side)
            original = _last_logits(causal, ids, mask, side)[:, token_ids]
            expected = original[:, 1:2] - original[:, 0:1] if recipe.method == "from_2_way_softmax" else original
            with torch.no_grad():
                got = seq(input_ids=ids, attention_mask=mask).logits
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_bf16_head_is_fp32_arithmetic_rounded(tmp_path):
    src = build_model(tmp_path / "src", "qwen3", tied=False, dtype=torch.bfloat16)
    out = tmp_path / "out"
    result = seqcls.convert(str(src), output=out, recipe=TWO_WAY, verify=False)
    tensors = read_tensors(out)
    assert tensors["score.weight"].dtype == torch.bfloat16
    assert torch.equal(tensors["score.weight"], _expected_head(src, "from_2_way_softmax", result.plan.token_ids, False, torch.bfloat16))
    assert config_of(out)["dtype"] == "bfloat16"


def test_dtype_cast_output(tmp_path):
    src = build_model(tmp_path / "src", "llama", tied=True)
    out = tmp_path / "out"
    seqcls.convert(str(src), output=out, recipe=TWO_WAY, verify=False, dtype="bfloat16")
    tensors, source = read_tensors(out), read_tensors(src)
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert torch.equal(tensors["model.norm.weight"], source["model.norm.weight"].to(torch.bfloat16))
    assert torch.equal(tensors["model.embed_tokens.weight"], source["model.embed_tokens.weight"].to(torch.bfloat16))


def test_smollm2_gguf_matches_causal_lm(smollm2_converted):
    from seqcls.io.sources import open_source

    config = config_of(smollm2_converted)
    source = open_source(config["seqcls"]["source"])
    report = json.loads((smollm2_converted / "parity_report.json").read_text())
    assert report["passed"] and report["max_abs_diff"] <= 1e-4
    # independently of the parity module: causal LM vs converted on a padded batch
    from transformers import AutoTokenizer

    recipe = seqcls.load_recipe(str(smollm2_converted / "seqcls_recipe.yaml"))
    tok = AutoTokenizer.from_pretrained(str(smollm2_converted))
    texts = [recipe.template.render("What is the capital of France?", d) for d in ("The capital of France is Paris", "Reranking is fun!")]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    assert tok.padding_side == "left"
    causal = AutoModelForCausalLM.from_pretrained(str(source.folder), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = causal(**enc).logits[:, -1, config["seqcls"]["token_ids"]]
    del causal
    seq = AutoModelForSequenceClassification.from_pretrained(str(smollm2_converted), dtype=torch.float32).eval()
    with torch.no_grad():
        got = seq(**enc).logits[:, 0]
    torch.testing.assert_close(got, logits[:, 1] - logits[:, 0], atol=1e-4, rtol=0)
    assert config["seqcls"]["token_ids"] == [4607, 10407]


def test_dry_run_writes_nothing(tiny_qwen3, tmp_path):
    out = tmp_path / "out"
    proc = _cli("convert", str(tiny_qwen3), "--output", str(out), "--recipe", "qwen3", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["dry_run"] and plan["target_architecture"] == "Qwen3ForSequenceClassification"
    assert plan["tied"] is True and plan["num_labels"] == 1 and len(plan["token_ids"]) == 2
    assert plan["shards"][0]["file"] == "model.safetensors"
    assert not out.exists() and list(tmp_path.iterdir()) == []
    text = _cli("convert", str(tiny_qwen3), "--output", str(out), "--recipe", "qwen3", "--dry-run")
    assert "Qwen3ForSequenceClassification" in text.stdout and "nothing was written" in text.stdout
    assert not out.exists()


def test_cli_convert_json_and_sharding(tiny_qwen3, tmp_path):
    out = tmp_path / "out"
    proc = _cli("convert", str(tiny_qwen3), "--output", str(out), "--recipe", "qwen3", "--no-verify", "--json", "--max-shard-size", "120KB")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(summary["shards"]) == len(set(index["weight_map"].values())) > 1
    assert set(summary["files"]) >= {"config.json", "chat_template.jinja", "seqcls_recipe.yaml", "tokenizer.json"}


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqcls.cli", *args], capture_output=True, text=True, timeout=300, **kwargs)


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle.lower() in " ".join(proc.stderr.split()).lower(), proc.stderr


def _write_recipe(path: Path, tokens: list) -> Path:
    data = TWO_WAY.to_dict() if len(tokens) == 2 else ROWS.to_dict()
    data["tokens"] = tokens
    data["method"] = "from_2_way_softmax" if len(tokens) == 2 else "no_post_processing"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def test_bad_inputs_exit_2_and_write_nothing(tiny_qwen3, tmp_path):
    out = tmp_path / "out"
    _one_line_error(_cli("convert", str(tmp_path / "missing"), "--output", str(out), "--recipe", "qwen3"), "not found")

    # corrupt and truncated safetensors
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bad / name).write_bytes((tiny_qwen3 / name).read_bytes())
    raw = (tiny_qwen3 / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    _one_line_error(_cli("convert", str(bad), "--output", str(out), "--recipe", "qwen3"), "truncated")
    (bad / "model.safetensors").write_bytes(struct.pack("<Q", 20) + b"{not json at all!!}" + b"\0" * 100)
    _one_line_error(_cli("convert", str(bad), "--output", str(out), "--recipe", "qwen3"), "not a valid safetensors")

    # unsupported architecture, with the hint to register it
    odd = tmp_path / "odd"
    odd.mkdir()
    for item in tiny_qwen3.iterdir():
        (odd / item.name).write_bytes(item.read_bytes())
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["MyOwnForCausalLM"]
    (odd / "config.json").write_text(json.dumps(config))
    _one_line_error(_cli("convert", str(odd), "--output", str(out), "--recipe", "qwen3"), "register_architecture")

    # a label that is not one token names its single-token neighbours
    proc = _cli("convert", str(tiny_qwen3), "--output", str(out), "--recipe", str(_write_recipe(tmp_path / "r1.yaml", ["no", "yes!"])))
    _one_line_error(proc, "'yes!' is 2 tokens")
    assert "'yes' (id" in proc.stderr and "'Yes' (id" in proc.stderr and "' yes' (id" in proc.stderr
    # a raw id outside the vocabulary
    _one_line_error(_cli("convert", str(tiny_qwen3), "--output", str(out), "--recipe", str(_write_recipe(tmp_path / "r2.yaml", [3, 100000]))), "outside the vocabulary")
    assert not out.exists()

    # an existing output is refused without --overwrite and replaced with it
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _one_line_error(_cli("convert", str(tiny_qwen3), "--output", str(out), "--recipe", "qwen3", "--no-verify"), "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    proc = _cli("convert", str(tiny_qwen3), "--output", str(out), "--recipe", "qwen3", "--no-verify", "--overwrite", "-q")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if ".seqcls-tmp-" in p.name) == []


def test_failure_mid_write_leaves_nothing(tiny_qwen3, tmp_path, monkeypatch):
    import seqcls.pipeline as pipeline

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "write_shards", boom)
    with pytest.raises(OSError):
        seqcls.convert(str(tiny_qwen3), output=tmp_path / "out", recipe="qwen3", verify=False)
    assert list(tmp_path.iterdir()) == []


def test_killed_process_leaves_no_complete_looking_output(tmp_path):
    """SIGKILL while the weights are being written: the output name never appears half-written."""
    import numpy as np
    from safetensors.numpy import save_file

    src = build_model(tmp_path / "src", "llama", tied=False)
    big = {f"model.extra.{i}.weight": np.random.default_rng(i).standard_normal((2048, 4096), dtype=np.float32) for i in range(12)}
    save_file(big | {k: v.numpy() for k, v in read_tensors(src).items()}, str(src / "model.safetensors"))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "seqcls.cli", "convert", str(src), "--output", str(out), "--recipe", "qwen3", "--no-verify", "-q"])
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        partial = [p for p in tmp_path.iterdir() if ".seqcls-tmp-" in p.name and any(p.glob("*.safetensors"))]
        if partial:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.001)
    proc.wait()
    assert killed, "the conversion finished before it could be interrupted; make the checkpoint larger"
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("src",)]
    assert leftovers and all(name.startswith(".out.seqcls-tmp-") for name in leftovers)
    # a rerun succeeds and is complete
    done = subprocess.run([sys.executable, "-m", "seqcls.cli", "convert", str(src), "--output", str(out), "--recipe", "qwen3", "--no-verify", "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "config.json").is_file()


def test_register_architecture_for_custom_class(tmp_path):
    src = build_model(tmp_path / "src", "llama", tied=False)
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["HouseLlamaForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(seqcls.UsageError, match="register_architecture"):
        seqcls.convert(str(src), output=tmp_path / "a", recipe=TWO_WAY, verify=False)
    seqcls.register_architecture("HouseLlamaForCausalLM", "LlamaForSequenceClassification")
    seqcls.convert(str(src), output=tmp_path / "b", recipe=TWO_WAY, verify=False)
    assert config_of(tmp_path / "b")["architectures"] == ["LlamaForSequenceClassification"]
    with pytest.raises(seqcls.UsageError, match="already registered"):
        seqcls.register_architecture("HouseLlamaForCausalLM", "OtherForSequenceClassification")


def test_gemma2_softcapping_is_reported(tmp_path):
    """Gemma2 soft-caps final logits; a score head cannot, so parity compares pre-cap logits and says so."""
    import transformers

    torch.manual_seed(0)
    from factory import tiny_config, build_tokenizer

    config = tiny_config("gemma2", tied=True)
    config.final_logit_softcapping = 30.0
    model = transformers.Gemma2ForCausalLM(config)
    src = tmp_path / "src"
    model.save_pretrained(str(src))
    build_tokenizer(src)
    result = seqcls.convert(str(src), output=tmp_path / "out", recipe=TWO_WAY)
    assert result.parity.passed
    assert any("soft-caps" in note for note in result.parity.notes)


def test_inspect_reports_tied_head_candidates_and_recipes(tmp_path, capsys):
    from factory import run_cli

    src = build_model(tmp_path / "Qwen3-Reranker-tiny", "qwen3", tied=True)
    proc = run_cli(capsys, "inspect", str(src), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["architectures"] == ["Qwen3ForCausalLM"] and info["target_architecture"] == "Qwen3ForSequenceClassification"
    assert info["tied"] is True and info["lm_head_in_checkpoint"] is False
    assert info["vocab_size"] == 512 and info["hidden_size"] == 64
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    assert info["single_token_answers"]["yes"] == tok.convert_tokens_to_ids("yes")
    assert "yes!" not in info["single_token_answers"]
    assert info["matching_recipes"] == ["qwen3"]
    table = run_cli(capsys, "inspect", str(src))
    assert table.returncode == 0 and "Qwen3ForSequenceClassification" in table.stdout
