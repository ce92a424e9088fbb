"""Qwen3-VL rerankers: conversion (vision tower copied, head rows), parity with image documents against
the original Qwen3VLForConditionalGeneration, the Scorer, the CLI and a real server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")

from factory import build_qwen3_vl, config_of, image_data_url, read_tensors, run_cli  # noqa: E402

QUERY = "Which picture shows a red square?"
RED = image_data_url((220, 20, 20))
BLUE = image_data_url((20, 40, 220), (300, 200))


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(scope="module")
def vl_source(tmp_path_factory) -> Path:
    return build_qwen3_vl(tmp_path_factory.mktemp("vl") / "qwen3-vl", tied=False)


@pytest.fixture(scope="module")
def vl_converted(vl_source, tmp_path_factory) -> Path:
    import seqcls

    out = tmp_path_factory.mktemp("vl-out") / "qwen3-vl-seqcls"
    seqcls.convert(str(vl_source), output=out, recipe="qwen3-vl")  # verifies (text and image pairs) before the rename
    return out


@pytest.fixture(scope="module")
def vl_scorer(vl_converted):
    from seqcls.runtime import Scorer

    return Scorer(vl_converted, device="cpu")


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_conversion_copies_backbone_and_vision_tower_and_builds_head_rows(tmp_path, tied):
    import seqcls
    from transformers import AutoTokenizer

    source = build_qwen3_vl(tmp_path / "src", tied=tied, seed=3)
    out = tmp_path / "out"
    seqcls.convert(str(source), output=out, recipe="qwen3-vl", verify=False)
    before, after = read_tensors(source), read_tensors(out)
    assert ("lm_head.weight" in before) is (not tied)
    backbone = [k for k in before if k != "lm_head.weight"]
    assert any(k.startswith("model.visual.") for k in backbone) and any(k.startswith("model.language_model.") for k in backbone)
    assert set(after) == set(backbone) | {"score.weight"}
    for key in backbone:  # byte-identical, vision tower and projector included
        assert after[key].dtype == before[key].dtype and torch.equal(after[key], before[key]), key
    tok = AutoTokenizer.from_pretrained(str(source))
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    rows = before["model.language_model.embed_tokens.weight" if tied else "lm_head.weight"].float()
    assert torch.equal(after["score.weight"], (rows[yes] - rows[no])[None])
    assert after["score.weight"].abs().sum() > 0

    config = config_of(out)
    assert config["architectures"] == ["Qwen3VLForSequenceClassification"]
    assert config["num_labels"] == 1 and config["text_config"]["id2label"] == {"0": "yes"}
    assert config["pad_token_id"] is not None and config["text_config"]["pad_token_id"] == config["pad_token_id"]
    assert config["vision_config"] == config_of(source)["vision_config"]
    for key in ("method", "classifier_from_token"):
        assert key not in config and key not in config["text_config"]
    assert config["seqcls"]["tied_head"] is tied
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name
    assert "<Document>:" in (out / "chat_template.jinja").read_text()


# ---------------------------------------------------------------- parity


def reference_logit(source: Path, query: str, document: str | None, image=None) -> float:
    """logit(yes) - logit(no) of the original model at the last token, built here from transformers'
    tokenizer and image processor (pads expanded in the text, not by seqcls)."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(source))
    system = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. '
              'Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
    doc_text = document if image is None else "<|vision_start|><|image_pad|><|vision_end|>"
    text = (f"{system}<Instruct>: Given a search query, retrieve relevant candidates that answer the query.<Query>:{query}\n"
            f"<Document>:{doc_text}<|im_end|>\n<|im_start|>assistant\n")
    kwargs = {}
    if image is not None:
        pixels = AutoImageProcessor.from_pretrained(str(source))(images=[image], return_tensors="pt")
        n = int(pixels["image_grid_thw"][0].prod()) // 4
        text = text.replace("<|image_pad|>", "<|image_pad|>" * n)
        kwargs = {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    if image is not None:
        kwargs["mm_token_type_ids"] = (ids == tok.convert_tokens_to_ids("<|image_pad|>")).int()
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(source), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits[0, -1]
    return float(logits[tok.convert_tokens_to_ids("yes")] - logits[tok.convert_tokens_to_ids("no")])


def decode(url: str):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def test_parity_report_covers_text_and_image_pairs(vl_converted):
    report = json.loads((vl_converted / "parity_report.json").read_text())
    assert report["passed"] and report["max_abs_diff"] <= 1e-4
    cases = {c["name"]: c for c in report["cases"]}
    assert cases["float32/images/batch=1"]["passed"] and cases["float32/text/batch=1"]["passed"]
    assert any("<image" in p["document"] for p in report["pairs"])
    assert report["consumers"]["vllm_config"]["passed"]


def test_scores_equal_the_original_answer_logits_for_text_and_image_documents(vl_source, vl_scorer):
    got = vl_scorer.score(QUERY, ["A red square on white paper.", image_part(RED), image_part(BLUE)], raw=True).scores
    expected = [
        reference_logit(vl_source, QUERY, "A red square on white paper."),
        reference_logit(vl_source, QUERY, None, decode(RED)),
        reference_logit(vl_source, QUERY, None, decode(BLUE)),
    ]
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-4, (got, expected)
    assert abs(got[1] - got[2]) > 1e-3  # the pixels reach the score


def test_image_forms_agree_and_text_only_content_equals_plain_text(vl_scorer, tmp_path):
    from PIL import Image

    path = tmp_path / "red.png"
    decode(RED).save(path)
    forms = [image_part(RED), image_part(str(path)), Image.open(path), {"content": [image_part(f"file://{path}")]}, [{"type": "image", "image": str(path)}]]
    scores = vl_scorer.score(QUERY, forms, raw=True).scores
    assert max(scores) - min(scores) == 0.0  # a bare string is always text: paths go in image parts
    text = vl_scorer.score(QUERY, ["A red square.", {"content": [{"type": "text", "text": "A red square."}]}], raw=True).scores
    assert text[0] == text[1]
    ranked = vl_scorer.rerank(QUERY, ["A red square.", image_part(RED), image_part(BLUE)])
    assert sorted(r.index for r in ranked) == [0, 1, 2] and ranked[0].score >= ranked[-1].score
    assert ranked.results[[r.index for r in ranked].index(1)].document == image_part(RED)


@pytest.mark.parametrize("document, fragment", [
    (image_part("https://example.com/cat.png"), "never fetches images over the network"),
    (image_part("data:image/png;base64," + base64.b64encode(b"not an image").decode()), "could not be decoded as an image"),
    ({"type": "video_url", "video_url": {"url": "x"}}, "unsupported content type 'video_url'"),
    (image_part("/no/such/image.png"), "not found"),
], ids=["remote-url", "undecodable", "video", "missing-file"])
def test_bad_image_input_is_a_usage_error(vl_scorer, document, fragment):
    import seqcls

    with pytest.raises(seqcls.UsageError, match=fragment.replace("(", r"\(")):
        vl_scorer.score(QUERY, ["text", document])


def test_image_sent_to_a_text_model_is_a_usage_error(tiny_qwen3_converted):
    import seqcls
    from seqcls.runtime import Scorer

    scorer = Scorer(tiny_qwen3_converted, device="cpu")
    with pytest.raises(seqcls.UsageError, match="this model scores text only"):
        scorer.score("q", ["text", image_part(RED)])


def test_cli_scores_images_and_exits_2_on_bad_ones(vl_converted, vl_scorer, capsys, tiny_qwen3_converted):
    result = run_cli(capsys, "score", vl_converted, "--query", QUERY, "--document", "A red square.", "--image", RED, "--json", "--raw", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = {r["index"]: r["score"] for r in json.loads(result.stdout)["results"]}
    expected = vl_scorer.score(QUERY, ["A red square.", image_part(RED)], raw=True).scores
    assert [rows[0], rows[1]] == expected
    bad = run_cli(capsys, "score", vl_converted, "--query", QUERY, "--image", "https://example.com/a.png", "--device", "cpu")
    assert bad.returncode == 2 and "never fetches" in bad.stderr
    text_model = run_cli(capsys, "score", tiny_qwen3_converted, "--query", QUERY, "--image", RED, "--device", "cpu")
    assert text_model.returncode == 2 and "scores text only" in text_model.stderr


# ---------------------------------------------------------------- server


@pytest.fixture(scope="module")
def vl_url(vl_converted, tmp_path_factory):
    from seqcls.runtime import Scorer
    from seqcls.runtime.server import create_app
    from test_server import running

    media = tmp_path_factory.mktemp("media")
    decode(BLUE).save(media / "blue.png")
    app = create_app(Scorer(vl_converted, device="cpu"), allowed_local_media_path=media)
    with running(app) as (url, _):
        yield url, media


def test_rerank_mixing_text_and_image_documents_equals_the_python_api(vl_url, vl_scorer):
    import requests

    url, media = vl_url
    documents = ["A red square on white paper.", {"content": [image_part(RED)]}, {"text": "Bananas are yellow."},
                 {"content": [{"type": "text", "text": "A photo:"}, image_part(BLUE)]}, {"content": [image_part(str(media / "blue.png"))]}]
    response = requests.post(f"{url}/rerank", json={"query": QUERY, "documents": documents}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    served = {r["index"]: r["relevance_score"] for r in body["results"]}
    python = vl_scorer.score(QUERY, ["A red square on white paper.", image_part(RED), "Bananas are yellow.",
                                     ["A photo:", image_part(BLUE)], image_part(BLUE)]).scores
    assert [served[i] for i in range(5)] == python
    assert served[4] != served[1]
    assert [r["index"] for r in body["results"]] == sorted(range(5), key=lambda i: (-python[i], i))
    shown = {r["index"]: r["document"]["text"] for r in body["results"]}
    assert shown[0] == documents[0] and shown[3] == "A photo:"
    python_usage = vl_scorer.score(QUERY, ["A red square on white paper.", image_part(RED), "Bananas are yellow.",
                                           ["A photo:", image_part(BLUE)], image_part(BLUE)]).usage.prompt_tokens
    assert body["usage"]["prompt_tokens"] == python_usage

    text_only = requests.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": ["A red square.", "Bananas."]}, timeout=60)
    assert text_only.status_code == 200, text_only.text  # text through the batcher and score_tokens
    assert {r["index"]: r["relevance_score"] for r in text_only.json()["results"]} == dict(enumerate(vl_scorer.score(QUERY, ["A red square.", "Bananas."]).scores))

    score = requests.post(f"{url}/score", json={"data_1": QUERY, "data_2": [{"content": [image_part(RED)]}, "A red square on white paper."],
                                                "use_activation": False}, timeout=60)
    assert score.status_code == 200, score.text
    raw = vl_scorer.score(QUERY, [image_part(RED), "A red square on white paper."], raw=True).scores
    assert [d["score"] for d in score.json()["data"]] == raw


@pytest.mark.parametrize("part, fragment", [
    (image_part("https://example.com/cat.png"), "never fetches images over the network"),
    (image_part("data:image/png;base64," + base64.b64encode(b"GIF89a-broken").decode()), "could not be decoded as an image"),
    ({"type": "input_audio", "input_audio": {"data": "x"}}, "unsupported content type 'input_audio'"),
    (image_part("/etc/hostname"), "outside the allowed media folder"),
], ids=["remote-url", "undecodable", "audio", "outside-media-folder"])
def test_server_answers_400_for_bad_images(vl_url, part, fragment):
    import requests

    url, _ = vl_url
    response = requests.post(f"{url}/rerank", json={"query": QUERY, "documents": ["text", {"content": [part]}]}, timeout=60)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]
    assert requests.post(f"{url}/rerank", json={"query": QUERY, "documents": ["still serving"]}, timeout=60).status_code == 200


def test_chat_template_renders_image_parts_as_vision_markers(vl_converted):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment().from_string((vl_converted / "chat_template.jinja").read_text())
    messages = [{"role": "query", "content": QUERY}, {"role": "document", "content": [{"type": "text", "text": "Look:"}, image_part(RED)]}]
    rendered = template.render(messages=messages)
    from seqcls.recipe import load_recipe

    expected = load_recipe(str(vl_converted / "seqcls_recipe.yaml")).template.render(QUERY, "Look:<|vision_start|><|image_pad|><|vision_end|>")
    assert rendered == expected


def test_bf16_conversion_verifies_and_a_wrong_head_fails_verification(vl_source, vl_converted, tmp_path, capsys):
    import shutil

    import seqcls
    from safetensors.torch import load_file, save_file

    bf16 = seqcls.convert(str(vl_source), output=tmp_path / "bf16", recipe="qwen3-vl", dtype="bfloat16")
    assert bf16.parity.passed and config_of(tmp_path / "bf16")["text_config"]["dtype"] == "bfloat16"

    broken = tmp_path / "broken"
    shutil.copytree(vl_converted, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["score.weight"] = -tensors["score.weight"]  # the "no" - "yes" head: every score flips sign
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    result = run_cli(capsys, "verify", broken, "--source", vl_source)
    assert result.returncode == 1 and "Parity failed" in result.stderr
    report = json.loads((broken / "parity_report.json").read_text())
    assert not report["passed"] and {c["name"] for c in report["cases"] if not c["passed"]} >= {"float32/images/batch=1", "float32/text/batch=1"}


@pytest.mark.gpu
def test_gpu_scores_text_and_image_documents_like_the_cpu(vl_converted, vl_scorer):
    """The vision engine on CUDA: fp32 equals the CPU scores, bf16 stays within its noise."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from seqcls.runtime import Scorer

    docs = ["A red square.", image_part(RED), image_part(BLUE), {"content": [{"type": "text", "text": "Photo:"}, image_part(RED)]}]
    cpu = torch.tensor(vl_scorer.score(QUERY, docs, raw=True).scores)
    fp32 = Scorer(vl_converted, device="cuda:0", dtype="float32")
    assert torch.allclose(torch.tensor(fp32.score(QUERY, docs, raw=True).scores), cpu, atol=1e-4, rtol=0)
    bf16 = Scorer(vl_converted, device="cuda:0")
    assert bf16.dtype == "bfloat16"
    assert torch.allclose(torch.tensor(bf16.score(QUERY, docs, raw=True).scores), cpu, atol=0.15, rtol=0.05)
