"""Parity for vision-language rerankers (Qwen3-VL): text and image pairs, one unpadded pair at a time.

transformers has no ``Qwen3VLForSequenceClassification``, so the converted side is the folder's
backbone (``Qwen3VLModel``, loaded from the converted weights) times ``score.weight`` at the last token,
which is what vLLM's sequence-classification adapter computes. The reference is the source
``Qwen3VLForConditionalGeneration``'s answer-token logits at the last token, on the same token ids and
pixels (prepared once by the source's image processor).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from .multimodal import ImagePart, MultimodalModel, MultimodalPrompter


def builtin_images() -> list[tuple[str, Any]]:
    """Small synthetic images (drawn, not downloaded): (description, PIL image)."""
    from PIL import Image, ImageDraw

    out = []
    red = Image.new("RGB", (64, 64), (220, 30, 30))
    ImageDraw.Draw(red).ellipse((12, 12, 52, 52), fill=(250, 240, 20))
    out.append(("a yellow circle on red", red))
    stripes = Image.new("RGB", (96, 48), (20, 20, 160))
    draw = ImageDraw.Draw(stripes)
    for x in range(0, 96, 16):
        draw.rectangle((x, 0, x + 7, 47), fill=(240, 240, 240))
    out.append(("white and blue stripes", stripes))
    gradient = Image.linear_gradient("L").resize((40, 72)).convert("RGB")
    out.append(("a grey gradient", gradient))
    return out


def image_pairs() -> list[tuple[Any, Any]]:
    """Pairs with images: image documents, a mixed text+image document and an image query."""
    images = builtin_images()
    pairs: list[tuple[Any, Any]] = []
    for text, image in images:
        pairs.append(("Which picture shows a yellow circle?", [ImagePart(image)]))
        pairs.append((f"A picture of {text}", [f"Photo: {text}", ImagePart(image), "taken indoors"]))
    pairs.append(([ImagePart(images[0][1]), "Find similar pictures"], [ImagePart(images[1][1])]))
    return pairs


def describe(item: Any) -> str:
    if isinstance(item, str):
        return item
    return "".join(p if isinstance(p, str) else f"<image {p.image.size[0]}x{p.image.size[1]}>" for p in item)


def compare(folder: Path, source_folder: Path, recipe: Any, token_ids: list[int], method: str,
            pairs: list[tuple[Any, Any]], device: str, load_dtype: Any = None):
    """(expected [pairs, labels], converted [pairs, labels], answer-token logits, last hidden states, head rows), float32."""
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False).backend_tokenizer
    prompter = MultimodalPrompter(source_folder, tokenizer, recipe.template)
    prompts = [prompter.encode(q, d, index=i) for i, (q, d) in enumerate(pairs)]

    # loaded in the output dtype, then computed in float32: the same weights the converted folder holds
    reference = Qwen3VLForConditionalGeneration.from_pretrained(str(source_folder), dtype=load_dtype or torch.float32, trust_remote_code=False)
    reference = reference.to(device=device, dtype=torch.float32).eval()
    rows = reference.get_output_embeddings().weight[token_ids].detach().float().cpu()
    answer, hidden = [], []
    with torch.no_grad():
        for prompt in prompts:
            out = reference(**prompt.model_inputs(device, torch.float32), output_hidden_states=True, logits_to_keep=1)
            answer.append(out.logits[0, -1, token_ids].float().cpu())
            hidden.append(out.hidden_states[-1][0, -1].float().cpu())
    del reference
    gc.collect()
    two = torch.stack(answer)
    expected = two[:, 1:2] - two[:, 0:1] if method == "from_2_way_softmax" else two
    converted = MultimodalModel.load(folder, device=device, dtype=torch.float32)
    got = torch.from_numpy(converted.run(prompts))
    del converted
    gc.collect()
    return expected, got, two, torch.stack(hidden), rows
