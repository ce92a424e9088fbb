"""Parity: passes for correct conversions, fails loudly (exit 1, worst pair named) for broken ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import seqcls
from seqcls.parity import ParityReport, file_checksums, vllm_config_problems


from factory import run_cli


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _edit_head(folder: Path, change) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    tensors["score.weight"] = change(tensors["score.weight"].clone())
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_verify_passes_and_writes_report(tiny_qwen3_converted, tmp_path, capsys):
    folder = _copy(tiny_qwen3_converted, tmp_path / "ok")
    report_file = tmp_path / "report.json"
    proc = run_cli(capsys, "verify", str(folder), "--json", str(report_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Parity PASSED" in proc.stdout
    report = ParityReport.from_dict(json.loads(report_file.read_text()))
    assert report.passed and report.max_abs_diff <= 1e-5
    names = {c.name for c in report.cases}
    assert {"float32/none/batch=1", "float32/left/batch=8", "float32/right/batch=8", "float32/probability", "bfloat16/left/ranking"} <= names
    assert report.checksums == file_checksums(folder)
    assert report.consumers["sentence_transformers"]["passed"] and report.consumers["vllm_config"]["passed"]
    on_disk = ParityReport.load(folder)
    assert on_disk.to_dict() == ParityReport.from_dict(on_disk.to_dict()).to_dict()
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: text-ranking" in card and "vllm serve" in card and "| float32/left/batch=8 |" in card


@pytest.mark.parametrize(
    "breakage",
    ["perturbed", "wrong_tokens", "zero_head", "no_pad_token"],
)
def test_verify_fails_with_worst_pair(breakage, tiny_qwen3, tiny_qwen3_converted, tmp_path, capsys):
    folder = _copy(tiny_qwen3_converted, tmp_path / breakage)
    if breakage == "perturbed":
        _edit_head(folder, lambda w: w + 1e-2)
    elif breakage == "wrong_tokens":
        rows = load_file(str(tiny_qwen3 / "model.safetensors"))["model.embed_tokens.weight"]
        _edit_head(folder, lambda w: (rows[101] - rows[100])[None, :].clone())  # not no/yes
    elif breakage == "zero_head":  # trap 1: the absent lm_head of a tied model read as zeros
        _edit_head(folder, lambda w: torch.zeros_like(w))
    else:
        config = json.loads((folder / "config.json").read_text())
        config["pad_token_id"] = None
        (folder / "config.json").write_text(json.dumps(config))
    proc = run_cli(capsys, "verify", str(folder))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = " ".join(proc.stderr.split())
    assert err.startswith("Error: Parity failed") and "Traceback" not in proc.stderr
    if breakage == "no_pad_token":
        assert "pad_token_id is null" in err
    else:
        assert "worst pair #" in err and "max |converted - original|" in err
    assert "FAIL" in proc.stdout
    assert json.loads((folder / "parity_report.json").read_text())["passed"] is False


def test_failed_parity_during_convert_leaves_no_output(tiny_qwen3, tmp_path):
    wrong = seqcls.Recipe(name="wrong", method="from_2_way_softmax", tokens=["no", "yes"], template=seqcls.load_recipe("qwen3").template)

    def sabotage(plan, folder):
        _edit_head(folder, lambda w: w * 1.01)
        return seqcls.parity.verify_folder(folder, source=plan.source, raise_on_failure=True, consumers=False, bf16=False)

    with pytest.raises(seqcls.CheckFailed, match="Parity failed"):
        seqcls.convert(str(tiny_qwen3), output=tmp_path / "out", recipe=wrong, verify_hook=sabotage)
    assert list(tmp_path.iterdir()) == []


def test_low_precision_head_passes_with_rounding_bound(tmp_path):
    from factory import build_model

    src = build_model(tmp_path / "src", "llama", tied=False, dtype=torch.bfloat16)
    result = seqcls.convert(str(src), output=tmp_path / "out", recipe="qwen3")
    assert result.parity.passed
    assert any("stored in bfloat16" in note for note in result.parity.notes)
    # ...but the same folder with a head off by a few bf16 ulps fails
    _edit_head(tmp_path / "out", lambda w: (w.float() * 1.05).to(torch.bfloat16))
    assert not seqcls.verify(tmp_path / "out", write_report=False, consumers=False, bf16=False).passed


def test_vllm_config_conformance():
    good = {"architectures": ["Qwen3ForSequenceClassification"], "pad_token_id": 0, "use_sep_token": False, "num_labels": 1, "id2label": {"0": "yes"}}
    assert vllm_config_problems(good) == []
    assert "top-level 'method'" in " ".join(vllm_config_problems({**good, "method": "from_2_way_softmax"}))
    assert "classifier_from_token" in " ".join(vllm_config_problems({**good, "classifier_from_token": ["no", "yes"]}))
    assert "pad_token_id is null" in vllm_config_problems({**good, "pad_token_id": None})


def test_smollm2_crossencoder_ranks_paris_first(smollm2_converted):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    query = "What is the capital of France?"
    docs = ["The capital of France is Paris", "Reranking is fun!", "vLLM is an open-source framework for fast AI serving"]
    model = CrossEncoder(str(smollm2_converted), device="cpu")
    ranked = model.rank(query, docs)
    assert ranked[0]["corpus_id"] == 0
    scores = torch.tensor(model.predict([(query, d) for d in docs]))
    tok = AutoTokenizer.from_pretrained(str(smollm2_converted))
    seq = AutoModelForSequenceClassification.from_pretrained(str(smollm2_converted), dtype=torch.float32).eval()
    recipe = seqcls.load_recipe(str(smollm2_converted / "seqcls_recipe.yaml"))
    with torch.no_grad():
        reference = torch.cat([seq(**tok(recipe.template.render(query, d), add_special_tokens=False, return_tensors="pt")).logits[:, 0] for d in docs])
    torch.testing.assert_close(scores, torch.sigmoid(reference), atol=1e-5, rtol=0)
    report = ParityReport.load(smollm2_converted)
    assert report.passed and report.consumers["sentence_transformers"]["passed"]
