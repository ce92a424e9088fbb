"""Recipes: exact templates from MODELS.md, the shipped chat template, precise validation errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import seqcls
from seqcls.recipe import Recipe, RecipeError, builtin_names, chat_template, load_recipe

Q, D = "What is the capital of France?", "The capital of France is Paris."
QWEN3_SYSTEM = 'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".'

# Written by hand from ../shared/docs/MODELS.md, independently of the YAML files.
EXPECTED = {
    "qwen3": (
        f"<|im_start|>system\n{QWEN3_SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: {Q}\n<Document>: {D}"
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ),
    "smollm2-demo": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nDoes this document answer the query? Answer yes or no.\n"
        f"Query: {Q}\nDocument: {D}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "qwen3-vl": (
        f"<|im_start|>system\n{QWEN3_SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"<Instruct>: Given a search query, retrieve relevant candidates that answer the query.<Query>:{Q}\n<Document>:{D}"
        "<|im_end|>\n<|im_start|>assistant\n"
    ),
    "bge-reranker-v2-gemma": (
        f"<bos>A: {Q}\nB: {D}\nGiven a query A and a passage B, determine whether the passage contains an answer to the query "
        "by providing a prediction of either 'Yes' or 'No'."
    ),
    "mxbai-rerank-v2": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"query: {Q}\ndocument: {D}\n"
        "You are a search relevance expert who evaluates how well documents match search queries. For each query-document pair, "
        "carefully analyze the semantic relationship between them, then provide your binary relevance judgment (0 for not relevant, "
        "1 for relevant).\nRelevance:<|im_end|>\n<|im_start|>assistant\n"
    ),
    "ctxl-rerank-v2": f"Check whether a given document contains information helpful to answer the query.\n<Document> {D}\n<Query> {Q}",
    "zerank-2": f"<|im_start|>system\n{Q}<|im_end|>\n<|im_start|>user\n{D}<|im_end|>\n<|im_start|>assistant\n",
}
TOKENS = {
    "qwen3": ("from_2_way_softmax", ["no", "yes"]),
    "smollm2-demo": ("from_2_way_softmax", ["no", "yes"]),
    "qwen3-vl": ("from_2_way_softmax", ["no", "yes"]),
    "bge-reranker-v2-gemma": ("no_post_processing", ["Yes"]),
    "mxbai-rerank-v2": ("from_2_way_softmax", ["0", "1"]),
    "ctxl-rerank-v2": ("no_post_processing", [0]),
    "zerank-2": ("no_post_processing", [9454]),
}


def test_catalogue_is_complete():
    assert set(builtin_names()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_prompt_is_exact(name):
    recipe = load_recipe(name)
    assert recipe.template.render(Q, D) == EXPECTED[name]
    assert (recipe.method, recipe.tokens) == TOKENS[name]
    # load -> dump -> load round trip
    again = Recipe.model_validate(__import__("yaml").safe_load(recipe.to_yaml()))
    assert again == recipe


def test_instructions():
    assert load_recipe("mxbai-rerank-v2").template.render("q", "d", "find it").startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\ninstruction: find it\nquery: q\n"
    )
    assert load_recipe("ctxl-rerank-v2").template.render("q", "d", "be strict").endswith("<Query> q be strict")
    assert "<Instruct>: Custom\n<Query>: q\n" in load_recipe("qwen3").template.render("q", "d", "Custom")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_chat_template_renders_the_recipe_prompt(name, tiny_qwen3):
    """apply_chat_template with roles query/document == the recipe's prompt, and the same token ids."""
    from transformers import AutoTokenizer

    recipe = load_recipe(name)
    tok = AutoTokenizer.from_pretrained(str(tiny_qwen3))
    tok.chat_template = chat_template(recipe.template)
    for query, document in [(Q, D), ("ünïcode ✓ 中文 😀 {braces} \\n", "trailing newline\n"), ("q", "")]:
        messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
        text = tok.apply_chat_template(messages, tokenize=False)
        assert text == recipe.template.render(query, document)
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert list(ids) == tok(recipe.template.render(query, document), add_special_tokens=False)["input_ids"]
        with_instruction = tok.apply_chat_template(messages, tokenize=False, instruction="Be brief")
        assert with_instruction == recipe.template.render(query, document, "Be brief")


def test_converted_folder_carries_recipe_and_template(tiny_qwen3_converted):
    from transformers import AutoTokenizer

    recipe = load_recipe(str(tiny_qwen3_converted / "seqcls_recipe.yaml"))
    assert recipe == load_recipe("qwen3")
    tok = AutoTokenizer.from_pretrained(str(tiny_qwen3_converted))
    text = tok.apply_chat_template([{"role": "query", "content": Q}, {"role": "document", "content": D}], tokenize=False)
    assert text == EXPECTED["qwen3"]
    assert text.endswith("</think>\n\n")  # trap 5: the trailing newlines survive Jinja


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqcls.cli", *args], capture_output=True, text=True, timeout=120)


BAD = {
    "yaml-boolean.yaml": ("name: x\nmethod: from_2_way_softmax\ntokens: [no, yes]\ntemplate:\n  query: '{query}'\n  document: '{document}'\n", 3, "quote the token"),
    "unknown-field.yaml": ("name: x\nmethod: from_2_way_softmax\ntokens: ['no', 'yes']\ncolour: blue\ntemplate:\n  query: '{query}'\n  document: '{document}'\n", 4, "colour: unknown field 'colour'"),
    "wrong-type.yaml": ("name: x\nmethod: from_2_way_softmax\ntokens: ['no', 'yes']\npadding_side: left\nuse_sep_token: [1]\ntemplate:\n  query: '{query}'\n  document: '{document}'\n", 5, "use_sep_token:"),
    "three-tokens.yaml": ("name: x\nmethod: from_2_way_softmax\ntokens: ['a', 'b', 'c']\ntemplate:\n  query: '{query}'\n  document: '{document}'\n", 1, "exactly 2 tokens"),
    "unknown-method.yaml": ("name: x\nmethod: softmax_4_way\ntokens: ['a', 'b']\ntemplate:\n  query: '{query}'\n  document: '{document}'\n", 2, "method: Input should be 'from_2_way_softmax' or 'no_post_processing'"),
    "missing-part.yaml": ("name: x\nmethod: from_2_way_softmax\ntokens: ['a', 'b']\ntemplate:\n  query: '{query}'\n  prefix: 'P'\n", 4, "template.document: Field required"),
    "bad-placeholder.yaml": ("name: x\nmethod: from_2_way_softmax\ntokens: ['a', 'b']\ntemplate:\n  query: '{query}'\n  document: '{doc}'\n", 4, "unknown placeholder {doc}"),
    "syntax.yaml": ("name: x\nmethod: [from_2_way_softmax\ntokens: ['a', 'b']\n", 3, "(yaml)"),
}


@pytest.mark.parametrize("file_name", sorted(BAD))
def test_bad_recipes_have_precise_errors(file_name, tmp_path, tiny_qwen3):
    text, line, needle = BAD[file_name]
    path = tmp_path / file_name
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    assert any(p.startswith(f"{path}:{line}: ") and needle in p for p in info.value.problems), info.value.problems
    proc = _cli("recipes", "validate", str(path))
    assert proc.returncode == 1 and f"{path}:{line}: " in proc.stdout and needle in proc.stdout, (proc.stdout, proc.stderr)
    proc = _cli("convert", str(tiny_qwen3), "--recipe", str(path), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and f"{path}:{line}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_file_and_extends_errors(tmp_path):
    proc = _cli("recipes", "validate", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 1 and "recipe file not found" in proc.stdout
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("name: c\nextends: no-such-recipe\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(str(tmp_path / "c.yaml"))
    assert info.value.problems[0].startswith(f"{tmp_path / 'c.yaml'}:2: extends: Unknown recipe 'no-such-recipe'")
    good = tmp_path / "good.yaml"
    good.write_text("extends: qwen3\nname: my-qwen3\ntemplate:\n  instruction: Find code that answers the question\nverify:\n  atol: 0.001\n")
    proc = _cli("recipes", "validate", str(good))
    assert proc.returncode == 0, proc.stdout
    recipe = load_recipe(str(good))
    assert recipe.tokens == ["no", "yes"] and recipe.template.suffix == load_recipe("qwen3").template.suffix
    assert "Find code" in recipe.template.render("q", "d") and recipe.verify.atol == 0.001
    shown = _cli("recipes", "show", str(good))
    assert shown.returncode == 0 and load_recipe("qwen3").template.prefix.splitlines()[0] in shown.stdout


def test_recipes_list_and_show():
    proc = _cli("recipes", "list", "--json")
    assert proc.returncode == 0
    listed = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(listed) == set(EXPECTED) and listed["zerank-2"]["tokens"] == [9454]
    shown = _cli("recipes", "show", "bge-reranker-v2-gemma")
    assert shown.returncode == 0 and load_recipe("bge-reranker-v2-gemma") == Recipe.model_validate(__import__("yaml").safe_load(shown.stdout))
    assert _cli("recipes", "show", "nope").returncode == 2


def test_auto_detection(tmp_path):
    from factory import build_model

    src = build_model(tmp_path / "Qwen3-Reranker-tiny", "qwen3", tied=True)
    out = seqcls.convert(str(src), output=tmp_path / "out", verify=False)
    assert out.plan.recipe.name == "qwen3"
    plain = tmp_path / "some-model"
    src.rename(plain)
    with pytest.raises(seqcls.UsageError, match="No built-in recipe matches"):
        seqcls.convert(str(plain), output=tmp_path / "out2", verify=False)
    proc = _cli("convert", str(plain), "--output", str(tmp_path / "out3"))
    assert proc.returncode == 2 and "--recipe" in proc.stderr
    # several candidates: a name matching both ctxl and zerank patterns
    both = tmp_path / "zerank-ctxl-rerank"
    plain.rename(both)
    with pytest.raises(seqcls.UsageError, match="Several recipes match .*ctxl-rerank-v2, zerank-2"):
        seqcls.convert(str(both), output=tmp_path / "out4", verify=False)


def test_recipe_declares_custom_architecture(tmp_path):
    from factory import build_model

    src = build_model(tmp_path / "src", "llama", tied=True)
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["ShopLlamaForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    recipe = tmp_path / "shop.yaml"
    recipe.write_text(
        "extends: qwen3\nname: shop\narchitecture:\n  causal_lm: ShopLlamaForCausalLM\n  seq_cls: LlamaForSequenceClassification\n"
    )
    result = seqcls.convert(str(src), output=tmp_path / "out", recipe=str(recipe), verify=False)
    assert result.plan.mapping.seq_cls == "LlamaForSequenceClassification"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]


def test_python_recipe_object():
    recipe = seqcls.Recipe(name="mine", method="no_post_processing", tokens=[5], template=seqcls.Template(query="{query}|", document="{document}"))
    assert recipe.template.render("a", "b") == "a|b"
    with pytest.raises(Exception, match="frozen"):
        recipe.name = "other"
