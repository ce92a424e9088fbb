"""The model card (README.md) of a converted folder, through huggingface_hub's ModelCard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .multimodal import is_multimodal
from .recipe import load_recipe


def _source_license(source_folder: Path | None) -> str | None:
    if source_folder is None:
        return None
    readme = source_folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def render_card(folder: Path, report: Any = None, source_folder: Path | None = None, repo_id: str | None = None) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    config = json.loads((folder / "config.json").read_text())
    prov = config.get("seqcls", {})
    recipe = load_recipe(str(folder / "seqcls_recipe.yaml"))
    source = prov.get("source", "")
    base_model = recipe.card.base_model or (source.split("@")[0] if prov.get("source_kind") == "hub" else None)
    license_ = recipe.card.license or _source_license(source_folder)
    data = ModelCardData(
        base_model=base_model,
        license=license_,
        language=recipe.card.language or None,
        library_name="transformers",
        pipeline_tag="text-ranking",
        tags=list(dict.fromkeys(["seqcls", "sequence-classification", "reranker", *recipe.card.tags])),
    )
    name = repo_id or folder.name
    q, d = "What is the capital of France?", "The capital of France is Paris."
    prompt = recipe.template.render(q, d)
    lines = [
        f"# {name}",
        "",
        f"A `{config['architectures'][0]}` conversion of `{source}` made with [seqcls](https://pypi.org/project/seqcls/) "
        f"(recipe `{recipe.name}`, method `{recipe.method}`, answer tokens {recipe.tokens} = ids {prov.get('token_ids')}).",
        "The score head is the answer-token rows of the original LM head, computed in float32, so the model gives the "
        "original reranker's relevance score in one forward pass without the vocabulary projection.",
        "",
        "## Usage",
        "",
        "Each input is the recipe's prompt for one (query, document) pair; `chat_template.jinja` builds it from messages "
        "with roles `query` and `document`.",
        "",
        *(_multimodal_usage(name, q) if is_multimodal(config["architectures"][0]) else _text_usage(name, q, d, config)),
        "### vLLM",
        "```bash",
        f"vllm serve {name} --runner pooling",
        "```",
        "",
        "### seqcls",
        "```bash",
        f'seqcls score {name} --query "{q}" --document "{d}"',
        f"seqcls serve {name} --port 8000",
        "```",
        "",
        "## Prompt",
        "```text",
        prompt,
        "```",
        "",
        "## Recipe",
        "```yaml",
        recipe.to_yaml().rstrip(),
        "```",
    ]
    if report is not None:
        lines += ["", "## Parity", "", f"Checked by `seqcls verify` against the source causal LM: **{'passed' if report.passed else 'FAILED'}**, "
                  f"max |converted − original| = {report.max_abs_diff:.3g} (atol {report.atol:g}) over {len(report.pairs)} pairs.", "",
                  "| case | max abs diff | result |", "|---|---|---|"]
        for case in report.cases:
            result = "ok" if case.passed else ("reported" if case.kind == "ranking" else "FAIL")
            lines.append(f"| {case.name} | {case.max_abs_diff:.3g} | {result} |")
        for consumer, result in report.consumers.items():
            lines.append(f"| consumer/{consumer} | {result.get('max_abs_diff', '')} | {'ok' if result.get('passed') else 'FAIL'} |")
        if report.notes:
            lines += ["", *[f"- {note}" for note in report.notes]]
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines) + "\n")
    return str(card)


def _text_usage(name: str, q: str, d: str, config: dict[str, Any]) -> list[str]:
    return [
        "### sentence-transformers",
        "```python",
        "from sentence_transformers import CrossEncoder",
        f'model = CrossEncoder("{name}")',
        f'scores = model.predict([("{q}", "{d}")])',
        "```",
        "",
        "### transformers",
        "```python",
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("{name}")',
        f'model = AutoModelForSequenceClassification.from_pretrained("{name}")',
        f'messages = [{{"role": "query", "content": "{q}"}}, {{"role": "document", "content": "{d}"}}]',
        "prompt = tok.apply_chat_template(messages, tokenize=False)",
        "inputs = tok(prompt, add_special_tokens=False, return_tensors='pt')",
        "score = torch.sigmoid(model(**inputs).logits)" if config.get("num_labels", 1) == 1 else "logits = model(**inputs).logits",
        "```",
        "",
    ]


def _multimodal_usage(name: str, q: str) -> list[str]:
    return [
        "Documents (and queries) may be images. transformers has no sequence-classification class for this "
        "vision-language architecture, so use vLLM or seqcls (which runs the transformers backbone with this head).",
        "",
        "### seqcls (Python)",
        "```python",
        "import seqcls",
        f'scorer = seqcls.Scorer("{name}")',
        'image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}',
        f'scorer.rerank("{q}", ["Paris is the capital of France.", image, {{"type": "image", "image": "photo.jpg"}}])',
        "```",
        "",
    ]


def write_card(folder: Path, report: Any = None, source_folder: Path | None = None) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(render_card(Path(folder), report, source_folder), encoding="utf-8")
    return path
