"""Parity: the converted SeqCls model against the original causal LM, as a typed report.

The reference is the source CausalLM's answer-token logits at the last prompt token, computed by
transformers one pair at a time (no padding). The converted folder is then scored through
AutoModelForSequenceClassification at batch size 1 and N, left and right padded, in float32. For a
head stored in bf16/fp16 the per-pair tolerance adds the exact bound of that rounding,
sum_i |h_i| * |q(d)_i - d_i|, so a correct low-precision head passes and a wrong one does not.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import CheckFailed, UsageError

REPORT_NAME = "parity_report.json"

BUILTIN_PAIRS: list[tuple[str, str]] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of France?", "Reranking is fun!"),
    ("What is the capital of France?", "vLLM is an open-source framework for fast AI serving."),
    ("How do plants make food?", "Plants use photosynthesis: chlorophyll captures sunlight to turn water and carbon dioxide into glucose and oxygen."),
    ("How do plants make food?", "The stock market closed higher today after a week of losses."),
    ("Wie hoch ist die Zugspitze?", "Die Zugspitze ist mit 2962 Metern der höchste Berg Deutschlands."),
    ("Wie hoch ist die Zugspitze?", "Der Rhein ist einer der längsten Flüsse Europas."),
    ("¿Cuál es la moneda de Japón?", "La moneda oficial de Japón es el yen."),
    ("¿Cuál es la moneda de Japón?", "El fútbol es el deporte más popular de España."),
    ("中国的首都是哪里？", "北京是中华人民共和国的首都。"),
    ("中国的首都是哪里？", "熊猫主要生活在四川的山区。"),
    ("Quelle est la formule chimique de l'eau ?", "L'eau est composée de deux atomes d'hydrogène et d'un atome d'oxygène : H2O."),
    ("What does a reranker do?", " ".join(["A reranker reads a query together with each candidate document and scores how relevant the document is,"] * 6)),
    ("What does a reranker do?", " ".join(["The weather in the mountains changes quickly, so hikers carry warm layers and rain gear."] * 6)),
    ("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("Who wrote Hamlet?", "yes"),
]


@dataclass
class ParityCase:
    """One cell of the parity matrix."""

    name: str
    dtype: str
    padding_side: str
    batch_size: int
    kind: str  # "logits", "probability" or "ranking"
    max_abs_diff: float
    atol: float
    passed: bool
    worst_pair: int | None = None
    detail: str = ""


@dataclass
class ParityReport:
    """Typed parity result: ``passed``, the largest difference, the worst pair, per-case rows, checksums."""

    passed: bool
    max_abs_diff: float
    atol: float
    method: str
    num_labels: int
    source: str
    folder: str
    pairs: list[dict[str, str]]
    cases: list[ParityCase]
    worst_pair: dict[str, Any] | None
    checksums: dict[str, str]
    consumers: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ParityReport":
        data = dict(data)
        data["cases"] = [ParityCase(**c) for c in data.get("cases", [])]
        return cls(**data)

    @classmethod
    def load(cls, folder: str | Path) -> "ParityReport":
        path = Path(folder) / REPORT_NAME
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise UsageError(f"{path} is missing or unreadable; run `seqcls verify {folder}` first.") from exc

    def summary(self) -> dict[str, Any]:
        return {"passed": self.passed, "max_abs_diff": self.max_abs_diff, "atol": self.atol, "worst_pair": self.worst_pair, "cases": len(self.cases)}

    def failure_message(self) -> str:
        failing = [c for c in self.cases if not c.passed and c.kind != "ranking"]
        if not failing:
            bad = [name for name, result in self.consumers.items() if not result.get("passed", True)]
            return f"Parity passed but consumer check(s) failed: {', '.join(bad)}; see parity_report.json for the reasons."
        case = max(failing, key=lambda c: c.max_abs_diff)
        index = case.worst_pair if case.worst_pair is not None else (self.worst_pair or {}).get("index")
        pair = self.pairs[index] if index is not None and index < len(self.pairs) else None
        where = f", worst pair #{index} (query {pair['query'][:40]!r}, document {pair['document'][:40]!r})" if pair else ""
        detail = f": {case.detail}" if case.detail else ""
        return (
            f"Parity failed in {case.name}: max |converted - original| = {case.max_abs_diff:.3g} > atol {case.atol:g}{where}{detail}; "
            "the converted model does not reproduce the source, so check the recipe's tokens, the source and config.json."
        )


def file_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every weight file in a folder (what push re-checks before uploading)."""
    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(16 * 1024 * 1024), b""):
                digest.update(chunk)
        out[path.name] = digest.hexdigest()
    return out


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Read a JSONL file of {"query": ..., "document": ...} objects."""
    pairs = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"Cannot read pairs file {path} ({exc.strerror}); check the path.") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            query, document = item["query"], item["document"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}:{number}: each line must be a JSON object with string fields query and document.") from exc
        if not isinstance(query, str) or not isinstance(document, str):
            raise UsageError(f"{path}:{number}: query and document must be strings.")
        pairs.append((query, document))
    if not pairs:
        raise UsageError(f"{path} has no pairs; add JSON lines with query and document.")
    return pairs


def kendall_tau(a: list[float], b: list[float]) -> float:
    n = len(a)
    concordant = discordant = 0
    for i in range(n):
        for j in range(i + 1, n):
            s = (a[i] - a[j]) * (b[i] - b[j])
            concordant += s > 0
            discordant += s < 0
    total = n * (n - 1) / 2
    return 1.0 if total == 0 else (concordant - discordant) / total


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto.")
    return device


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _reference(source_folder: Path, prompts: list[list[int]], token_ids: list[int], method: str, load_dtype, device: str, notes: list[str]):
    """Original answer-token logits and final hidden states, one unpadded pair at a time."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(source_folder), trust_remote_code=False)
    overrides = {}
    cap = getattr(config, "final_logit_softcapping", None) or getattr(getattr(config, "text_config", None), "final_logit_softcapping", None)
    if cap:
        overrides["final_logit_softcapping"] = None
        notes.append(f"the source soft-caps final logits at {cap}; a score head cannot, so parity compares pre-cap logits")
    model = AutoModelForCausalLM.from_pretrained(str(source_folder), dtype=load_dtype, trust_remote_code=False, **overrides)
    model = model.to(device=device, dtype=torch.float32).eval()
    rows = model.get_output_embeddings().weight[token_ids].detach().float().cpu()
    answer, hidden = [], []
    with torch.no_grad():
        for ids in prompts:
            out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True, logits_to_keep=1)
            answer.append(out.logits[0, -1, token_ids].float().cpu())
            hidden.append(out.hidden_states[-1][0, -1].float().cpu())
    answer_logits = torch.stack(answer)
    expected = answer_logits[:, 1:2] - answer_logits[:, 0:1] if method == "from_2_way_softmax" else answer_logits
    del model
    gc.collect()
    return expected, torch.stack(hidden), rows, answer_logits


def _score(model, prompts: list[list[int]], pad_id: int, side: str, batch: int, device: str):
    import torch

    scores = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, p in enumerate(chunk):
            if side == "left":
                ids[row, width - len(p):] = torch.tensor(p)
                mask[row, width - len(p):] = 1
            else:
                ids[row, : len(p)] = torch.tensor(p)
                mask[row, : len(p)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        scores.append(logits)
    return torch.cat(scores)


def verify_folder(
    folder: str | Path,
    source: Any = None,
    pairs: str | Path | Iterable[tuple[str, str]] | None = None,
    *,
    atol: float | None = None,
    device: str = "auto",
    bf16: bool = True,
    consumers: bool = True,
    write_report: bool = True,
    raise_on_failure: bool = False,
) -> ParityReport:
    """Check a converted folder against its source causal LM.

    Args:
        folder: the converted folder.
        source: the source (spec string or Source); defaults to the one recorded in config.json.
        pairs: a JSONL path or (query, document) tuples, added to the recipe's and built-in pairs.
        atol: the fp32 tolerance (default: the recipe's, 1e-4).
        device: auto, cpu or cuda.
        bf16: also report ranking-level agreement in bfloat16.
        consumers: run the sentence-transformers CrossEncoder and vLLM config checks.
        write_report: write parity_report.json into the folder.
        raise_on_failure: raise CheckFailed (exit 1) naming the worst pair when parity fails.

    Returns:
        ParityReport.

    Example:
        >>> report = seqcls.verify("out")
        >>> report.passed, report.max_abs_diff
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .io.sources import Source, open_source
    from .recipe import load_recipe

    _quiet_transformers()
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{folder} is not a converted model folder (no config.json); run `seqcls convert` first.")
    config = json.loads(config_path.read_text())
    prov = config.get("seqcls")
    recipe_path = folder / "seqcls_recipe.yaml"
    if not isinstance(prov, dict) or not recipe_path.is_file():
        raise UsageError(f"{folder} was not written by seqcls (no seqcls provenance or seqcls_recipe.yaml); convert it with `seqcls convert`.")
    recipe = load_recipe(str(recipe_path))
    if source is None:
        source = prov.get("source")
        if not source:
            raise UsageError(f"{folder} does not record its source; pass --source.")
    src = source if isinstance(source, Source) else open_source(str(source), revision=prov.get("revision") if prov.get("source_kind") == "hub" else None)
    token_ids = [int(t) for t in prov["token_ids"]]
    method = prov["method"]
    tolerance = atol if atol is not None else recipe.verify.atol
    dev = _pick_device(device)
    notes: list[str] = []

    all_pairs = list(BUILTIN_PAIRS) + [(p.query, p.document) for p in recipe.verify.pairs]
    if pairs is not None:
        all_pairs += read_pairs(pairs) if isinstance(pairs, (str, Path)) else [tuple(p) for p in pairs]
    from .multimodal import is_multimodal

    if any(is_multimodal(a) for a in config.get("architectures") or []):
        report = _verify_multimodal(folder, src, recipe, config, prov, all_pairs, token_ids, method, tolerance, dev, notes, consumers)
        return _finish(folder, report, write_report, raise_on_failure)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    prompts = [tokenizer(recipe.template.render(q, d), add_special_tokens=False)["input_ids"] for q, d in all_pairs]

    pad_id = config.get("pad_token_id")
    out_dtype, load_dtype = _output_dtype(config)
    source_dtype = _source_dtype(src)
    if source_dtype and source_dtype != out_dtype:
        notes.append(f"the backbone was cast from {source_dtype} to {out_dtype}; the reference uses the same cast")

    expected, hidden, rows, two_logits = _reference(src.folder, prompts, token_ids, method, load_dtype, dev, notes)

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32, trust_remote_code=False).to(dev).eval()
    allowed = _allowed(rows, hidden, method, load_dtype, out_dtype, tolerance, notes)

    cases: list[ParityCase] = []
    worst_diff, worst_index = 0.0, 0
    n = len(prompts)
    batch_n = min(8, n)
    unpadded = expected
    if pad_id is None:
        cases.append(ParityCase("config/pad_token_id", "float32", "-", batch_n, "logits", math.inf, tolerance, False, None, "pad_token_id is null: batches > 1 fail"))
        pad_for_batches = 0
    else:
        pad_for_batches = int(pad_id)
    for side, batch in (("none", 1), ("left", batch_n), ("right", batch_n)):
        name = f"float32/{side}/batch={batch}"
        try:
            got = _score(model, prompts, pad_for_batches, "left" if side == "none" else side, batch, dev)
        except Exception as exc:  # transformers refuses e.g. batches without a pad token: a failed case
            cases.append(ParityCase(name, "float32", side, batch, "logits", math.inf, tolerance, False, None, f"{type(exc).__name__}: {exc}"))
            continue
        if side == "none":
            unpadded = got
        diff = (got - expected).abs()
        excess = (diff - allowed).max(dim=1).values
        index = int(excess.argmax())
        case_max = float(diff.max())
        passed = bool((diff <= allowed).all()) and bool(torch.isfinite(got).all())
        cases.append(ParityCase(name, "float32", side, batch, "logits", case_max, tolerance, passed, index))
        if case_max >= worst_diff:
            worst_diff, worst_index = case_max, index
        if side == "none" and method == "from_2_way_softmax":
            cases.append(_probability_case(got, two_logits, allowed, tolerance))
    del model
    gc.collect()

    if bf16:
        try:
            cases.append(_bf16_case(folder, all_pairs, prompts, expected, pad_for_batches, batch_n, dev))
        except Exception as exc:  # reported, like the case itself, never fatal
            cases.append(ParityCase("bfloat16/left/ranking", "bfloat16", "left", batch_n, "ranking", math.inf, 0.0, False, None, f"{type(exc).__name__}: {exc}"))

    strict = [c for c in cases if c.kind != "ranking"]
    passed = all(c.passed for c in strict)
    consumer_results = consumer_checks(folder, config, all_pairs[:4], unpadded[:4]) if consumers else {}
    if consumers:
        passed = passed and all(v.get("passed", True) for v in consumer_results.values())
    report = ParityReport(
        passed=passed,
        max_abs_diff=worst_diff,
        atol=tolerance,
        method=method,
        num_labels=int(expected.shape[1]),
        source=src.spec,
        folder=str(folder),
        pairs=[{"query": q, "document": d} for q, d in all_pairs],
        cases=cases,
        worst_pair={"index": worst_index, "query": all_pairs[worst_index][0], "document": all_pairs[worst_index][1][:200]},
        checksums=file_checksums(folder),
        consumers=consumer_results,
        notes=notes,
        versions=dict(prov.get("versions", {})),
    )
    return _finish(folder, report, write_report, raise_on_failure)


def _finish(folder: Path, report: ParityReport, write_report: bool, raise_on_failure: bool) -> ParityReport:
    if write_report:
        (folder / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        from .card import write_card

        write_card(folder, report)
    if raise_on_failure and not report.passed:
        raise CheckFailed(report.failure_message())
    return report


def _output_dtype(config: dict[str, Any]) -> tuple[str, Any]:
    """The folder's stored dtype name and the torch dtype the reference is loaded in (the same cast)."""
    import torch

    out_dtype = config.get("dtype", "float32")
    return out_dtype, getattr(torch, out_dtype) if out_dtype in ("float32", "bfloat16", "float16") else torch.float32


def _allowed(rows: Any, hidden: Any, method: str, load_dtype: Any, out_dtype: str, tolerance: float, notes: list[str]) -> Any:
    """Per-pair tolerance [pairs, labels]: ``tolerance`` plus the exact bound of rounding the float32 head
    (from the answer-token ``rows``) once to the output dtype, which is what a correct converter stores."""
    exact_head = (rows[1:2] - rows[0:1]) if method == "from_2_way_softmax" else rows
    rounding = hidden.abs() @ (exact_head.to(load_dtype).float() - exact_head).abs().T
    if float(rounding.max()) > 0:
        notes.append(f"the head is stored in {out_dtype}; its rounding moves logits by at most {float(rounding.max()):.3g}, added to atol per pair")
    return tolerance + rounding


def _probability_case(got: Any, two_logits: Any, allowed: Any, tolerance: float) -> ParityCase:
    """sigmoid(converted logit) against the original 2-way softmax's P(yes)."""
    import torch

    pdiff = (torch.sigmoid(got[:, 0]) - torch.softmax(two_logits, dim=-1)[:, 1]).abs()
    return ParityCase("float32/probability", "float32", "none", 1, "probability", float(pdiff.max()), tolerance,
                      bool((pdiff <= allowed[:, 0] / 4).all()), int(pdiff.argmax()), "sigmoid(converted) vs softmax([false, true])[1]")


def _verify_multimodal(folder: Path, src: Any, recipe: Any, config: dict[str, Any], prov: dict[str, Any], text_pairs: list,
                       token_ids: list[int], method: str, tolerance: float, device: str, notes: list[str], consumers: bool) -> ParityReport:
    """Parity of a vision-language folder: text pairs and built-in image pairs, float32, batch 1 (see parity_vl)."""
    import torch

    from . import parity_vl

    pairs = list(text_pairs) + parity_vl.image_pairs()
    out_dtype, load_dtype = _output_dtype(config)
    expected, got, two, hidden, rows = parity_vl.compare(folder, src.folder, recipe, token_ids, method, pairs, device, load_dtype)
    allowed = _allowed(rows, hidden, method, load_dtype, out_dtype, tolerance, notes)
    cases: list[ParityCase] = []
    worst_diff, worst_index = 0.0, 0
    n_text = len(text_pairs)
    for name, span in (("float32/text/batch=1", range(0, n_text)), ("float32/images/batch=1", range(n_text, len(pairs)))):
        index = torch.tensor(list(span), dtype=torch.long)
        diff = (got[index] - expected[index]).abs()
        case_max = float(diff.max())
        worst_local = int(index[int(diff.max(dim=1).values.argmax())])
        passed = bool((diff <= allowed[index]).all()) and bool(torch.isfinite(got[index]).all())
        cases.append(ParityCase(name, "float32", "none", 1, "logits", case_max, tolerance, passed, worst_local,
                                f"{len(index)} pairs" + (", documents and queries with images" if name.endswith("images/batch=1") else "")))
        if case_max >= worst_diff:
            worst_diff, worst_index = case_max, worst_local
    if method == "from_2_way_softmax":
        cases.append(_probability_case(got, two, allowed, tolerance))
    notes.append("vision-language model: scored one unpadded pair at a time (the runtime does the same); "
                 "transformers has no Qwen3VLForSequenceClassification, so the converted side is Qwen3VLModel · score.weight")
    consumer_results: dict[str, Any] = {}
    if consumers:
        problems = vllm_config_problems(config)
        inner = config.get("text_config") or {}
        if len(inner.get("id2label") or {}) != config.get("num_labels"):
            problems.append("text_config.id2label must give num_labels (vLLM reads the text config)")
        consumer_results["vllm_config"] = {"passed": not problems, "problems": problems}
    passed = all(c.passed for c in cases) and all(v.get("passed", True) for v in consumer_results.values())
    from .parity_vl import describe

    shown = [{"query": describe(q), "document": describe(d)} for q, d in pairs]
    return ParityReport(
        passed=passed, max_abs_diff=worst_diff, atol=tolerance, method=method, num_labels=int(expected.shape[1]),
        source=src.spec, folder=str(folder), pairs=shown, cases=cases,
        worst_pair={"index": worst_index, **{k: v[:200] for k, v in shown[worst_index].items()}},
        checksums=file_checksums(folder), consumers=consumer_results, notes=notes, versions=dict(prov.get("versions", {})),
    )


def _source_dtype(src: Any) -> str | None:
    value = src.config.get("dtype") or src.config.get("torch_dtype")
    if value is None and isinstance(src.config.get("text_config"), dict):
        value = src.config["text_config"].get("dtype") or src.config["text_config"].get("torch_dtype")
    return value


def _bf16_case(folder: Path, pairs, prompts, expected, pad_id: int, batch: int, device: str) -> ParityCase:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.bfloat16, trust_remote_code=False).to(device).eval()
    got = _score(model, prompts, pad_id, "left", batch, device)[:, 0]
    del model
    gc.collect()
    reference = expected[:, 0]
    groups: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(pairs):
        groups.setdefault(q, []).append(i)
    worst_tau, worst_query, top1_ok = 1.0, None, True
    for q, idx in groups.items():
        if len(idx) < 2:
            continue
        a = [float(reference[i]) for i in idx]
        b = [float(got[i]) for i in idx]
        tau = kendall_tau(a, b)
        same_top = max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
        if tau < worst_tau or not same_top:
            worst_tau, worst_query = min(tau, worst_tau), idx[0]
        top1_ok = top1_ok and same_top
    diff = float((got - reference).abs().max())
    passed = top1_ok and worst_tau >= 0.95
    return ParityCase("bfloat16/left/ranking", "bfloat16", "left", batch, "ranking", diff, 0.0, passed, worst_query,
                      f"same top-1 per query: {top1_ok}; min Kendall tau {worst_tau:.3f} (reported, not enforced)")


def consumer_checks(folder: Path, config: dict[str, Any], pairs, expected) -> dict[str, Any]:
    """Can the folder be used where users run it? CrossEncoder scores (against the converted model's
    own fp32 logits ``expected``, already checked against the source) and vLLM config conformance."""
    results: dict[str, Any] = {"vllm_config": vllm_config_problems(config)}
    results["vllm_config"] = {"passed": not results["vllm_config"], "problems": results["vllm_config"]}
    try:
        from sentence_transformers import CrossEncoder
    except ImportError:
        results["sentence_transformers"] = {"passed": True, "skipped": "sentence-transformers is not installed"}
        return results
    import torch

    try:
        model = CrossEncoder(str(folder), device="cpu", trust_remote_code=False, model_kwargs={"dtype": torch.float32})
        scores = torch.tensor(model.predict(list(pairs), convert_to_numpy=True, show_progress_bar=False), dtype=torch.float32)
        del model
    except Exception as exc:  # a consumer failing to load is a failed check, reported with its reason
        results["sentence_transformers"] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
        return results
    reference = torch.sigmoid(expected[:, 0]) if expected.shape[1] == 1 else expected
    if scores.dim() == 1 and reference.dim() == 2:
        scores = scores[:, None]
    diff = float((scores.reshape(reference.shape) - reference).abs().max())
    results["sentence_transformers"] = {"passed": diff <= 1e-4, "max_abs_diff": diff}
    return results


def vllm_config_problems(config: dict[str, Any]) -> list[str]:
    """What vLLM would trip over in config.json (it cannot run on every machine, its contract can be checked)."""
    problems = []
    architectures = config.get("architectures") or []
    if len(architectures) != 1 or not architectures[0].endswith("ForSequenceClassification"):
        problems.append("architectures must be one *ForSequenceClassification class")
    for key in ("method", "classifier_from_token"):
        if key in config:
            problems.append(f"top-level {key!r} makes vLLM convert the model again; remove it")
    if config.get("pad_token_id") is None:
        problems.append("pad_token_id is null")
    if config.get("use_sep_token") is not False:
        problems.append("use_sep_token must be false")
    labels = config.get("id2label") or {}
    if config.get("num_labels", len(labels)) != len(labels) or not labels:
        problems.append("num_labels must match id2label")
    return problems


def parity_table(report: ParityReport):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Parity {'PASSED' if report.passed else 'FAILED'} (atol {report.atol:g})", title_justify="left")
    for column in ("case", "max |diff|", "result", "detail"):
        table.add_column(column)
    for case in report.cases:
        table.add_row(case.name, f"{case.max_abs_diff:.3g}", "ok" if case.passed else ("info" if case.kind == "ranking" else "FAIL"), escape(case.detail))
    for name, result in report.consumers.items():
        detail = result.get("error") or ", ".join(result.get("problems", [])) or (f"max |diff| {result['max_abs_diff']:.3g}" if "max_abs_diff" in result else result.get("skipped", ""))
        table.add_row(f"consumer/{name}", "", "ok" if result.get("passed") else "FAIL", escape(str(detail)))
    return table


def verify(folder: str | Path, source: Any = None, pairs: Any = None, *, atol: float | None = None, device: str = "auto", **kwargs: Any) -> ParityReport:
    """Public alias of :func:`verify_folder` (``seqcls.verify``)."""
    return verify_folder(folder, source, pairs, atol=atol, device=device, **kwargs)
