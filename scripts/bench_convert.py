"""PERFORMANCE.md §1: conversion speed and memory, measured side by side in one run.

Contenders, each timed as a whole process (start-up included), best of --repeats, with peak RSS from
the kernel's rusage of the child:
  seqcls   `seqcls convert SRC --output OUT --recipe qwen3 --no-verify`
  naive    load the CausalLM and a SequenceClassification model with transformers, copy the head rows,
           save_pretrained (what most conversion scripts do)
  cp -r    copying the folder: the I/O floor
Workloads: a Qwen3-0.6B-shaped checkpoint (vocab 151669, hidden 1024, 28 layers, bf16) with random
weights, tied (about 1.2 GB) and untied + sharded (about 1.5 GB in 500 MB shards). With --big, also an
8B-class (Qwen3-8B-shaped, about 16 GB, sparse zero weights) checkpoint converted by seqcls alone: the
naive approach needs two copies of the model in RAM and cannot run in 24 GB.

    python scripts/bench_convert.py [--repeats 3] [--big] [--json bench_convert.json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QWEN3_06B = dict(vocab=151669, hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072)
QWEN3_8B = dict(vocab=151669, hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=12288)


def layer_shapes(s: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, q, kv, inter = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"], s["intermediate"]
    shapes = [("model.embed_tokens.weight", (s["vocab"], h))]
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
            (p + "self_attn.q_norm.weight", (s["head_dim"],)), (p + "self_attn.k_norm.weight", (s["head_dim"],)),
            (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)), (p + "mlp.down_proj.weight", (h, inter)),
        ]
    shapes.append(("model.norm.weight", (h,)))
    return shapes


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], rng: np.random.Generator | None) -> None:
    """bf16 tensors: random N(0, 0.02) when rng is given, else sparse zeros (ftruncate, no disk traffic)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        if rng is None:
            fh.truncate(8 + len(raw) + offset)
            return
        for name, shape in tensors:
            values = rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.02
            fh.write((values.view(np.uint32) >> 16).astype("<u2").tobytes())


def write_tokenizer(folder: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"[UNK]": 0, "no": 2152, "yes": 9693, "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast"}))


def build(folder: Path, shape: dict, tied: bool, shard_bytes: int | None, random: bool) -> Path:
    if (folder / "config.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = layer_shapes(shape)
    if not tied:
        tensors.append(("lm_head.weight", (shape["vocab"], shape["hidden"])))
    rng = np.random.default_rng(0) if random else None
    if shard_bytes is None:
        write_safetensors(tmp / "model.safetensors", tensors, rng)
    else:
        shards, current, size = [], [], 0
        for item in tensors:
            n = int(np.prod(item[1])) * 2
            if current and size + n > shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append(item)
            size += n
        shards.append(current)
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(tmp / name, shard, rng)
            for tname, tshape in shard:
                weight_map[tname] = name
                total += int(np.prod(tshape)) * 2
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": shape["vocab"], "hidden_size": shape["hidden"],
        "intermediate_size": shape["intermediate"], "num_hidden_layers": shape["layers"], "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["kv_heads"], "head_dim": shape["head_dim"], "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000, "tie_word_embeddings": tied, "dtype": "bfloat16",
        "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(tmp, shape["vocab"])
    tmp.rename(folder)
    return folder


NAIVE = r"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
src, out = sys.argv[1], sys.argv[2]
causal = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
seq = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=torch.bfloat16)
w = causal.get_output_embeddings().weight.float()
seq.score.weight.data = (w[9693] - w[2152])[None].to(torch.bfloat16)
seq.config.pad_token_id = 151643
seq.save_pretrained(out)
AutoTokenizer.from_pretrained(src).save_pretrained(out)
"""


def run(cmd: list[str], out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".safetensors")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big", action="store_true", help="also convert a 16 GB 8B-class checkpoint (seqcls only)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=Path("bench_convert.json"))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "seqcls-bench-convert")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if not args.build_only:
        # Build in a child: a forked child's peak RSS starts at its parent's, so the parent stays small.
        build_cmd = [sys.executable, __file__, "--build-only", "--workdir", str(work)] + (["--big"] if args.big else [])
        subprocess.run(build_cmd, check=True)
    seqcls_bin = [sys.executable, "-m", "seqcls.cli"]
    workloads = [
        ("qwen3-0.6b tied", build(work / "src-tied", QWEN3_06B, True, None, True), None),
        ("qwen3-0.6b untied, 500MB shards", build(work / "src-untied", QWEN3_06B, False, 500 * 10**6, True), "500MB"),
    ]
    if args.big:
        workloads.append(("qwen3-8b-shape 16GB (sparse)", build(work / "src-8b", QWEN3_8B, False, 5 * 10**9, False), "5GB"))
    if args.build_only:
        return 0
    rows = []
    for label, src, shard in workloads:
        size = folder_bytes(src)
        out = work / "out"
        contenders = {
            "cp -r": ["cp", "-r", str(src), str(out)],
            "seqcls": seqcls_bin + ["convert", str(src), "--output", str(out), "--recipe", "qwen3", "--no-verify", "--quiet", "--overwrite"]
            + (["--max-shard-size", shard] if shard else []),
        }
        big = size > 8 * 10**9
        if not args.skip_naive and not big:
            contenders["naive"] = [sys.executable, "-c", NAIVE, str(src), str(out)]
        results = {}
        repeats = 1 if big else args.repeats
        for name, cmd in contenders.items():
            run(cmd, out) if not big else None  # warm the page cache and imports once
            times, rss = [], []
            for _ in range(repeats):
                t, r = run(cmd, out)
                times.append(t)
                rss.append(r)
            results[name] = {"seconds": min(times), "all_seconds": times, "peak_rss_mb": max(rss)}
        shutil.rmtree(work / "out", ignore_errors=True)
        row = {"workload": label, "checkpoint_gb": size / 1e9, **{k: v for k, v in results.items()}}
        floor = results["cp -r"]["seconds"]
        row["seqcls_vs_copy"] = results["seqcls"]["seconds"] / floor
        row["seqcls_rss_vs_checkpoint"] = results["seqcls"]["peak_rss_mb"] * 2**20 / size
        if "naive" in results:
            row["naive_vs_seqcls"] = results["naive"]["seconds"] / results["seqcls"]["seconds"]
        rows.append(row)

    from rich.console import Console
    from rich.table import Table

    table = Table(title="seqcls convert vs naive vs cp -r (best of runs, whole processes)", title_justify="left")
    for col in ("workload", "size", "cp -r s", "seqcls s", "naive s", "seqcls/copy", "naive/seqcls", "seqcls RSS", "naive RSS", "RSS/ckpt"):
        table.add_column(col, justify="right")
    for r in rows:
        naive = r.get("naive")
        table.add_row(
            r["workload"], f"{r['checkpoint_gb']:.2f} GB", f"{r['cp -r']['seconds']:.2f}", f"{r['seqcls']['seconds']:.2f}",
            f"{naive['seconds']:.2f}" if naive else "-", f"{r['seqcls_vs_copy']:.2f}x" if "sparse" not in r["workload"] else "n/a (cp keeps holes)", f"{r['naive_vs_seqcls']:.1f}x" if naive else "-",
            f"{r['seqcls']['peak_rss_mb']:.0f} MB", f"{naive['peak_rss_mb']:.0f} MB" if naive else "-", f"{r['seqcls_rss_vs_checkpoint']:.2f}",
        )
    Console(width=170).print(table)
    Console().print("Targets: seqcls/copy <= 2.5x, naive/seqcls >= 4x, RSS/checkpoint <= 0.5")
    args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
