"""The engine for vision-language rerankers: transformers' own backbone, one prompt per forward pass.

The packed text engine cannot run a vision tower (nor Qwen3-VL's 3-D rotary positions), so converted
VL folders run here instead, through the same ``plan``/``run`` interface the Scorer drives; text-only
prompts are the same model without pixels. Prompts go one at a time, unpadded: exact, and enough for
the CPU and modest traffic (batching padded image prompts is future work).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UsageError
from ..multimodal import MultimodalModel, MultimodalPrompt


class VisionEngine:
    """A converted VL folder on one device.

    Args:
        path: the converted folder.
        devices: torch devices; the first is used (one replica).
        dtype: compute dtype of the backbone (the head runs in float32).
        batch_tokens: the token budget the server's batcher groups text requests by.
    """

    backend = "transformers"
    supports_prefix = False
    dense = False

    def __init__(self, path: str, devices: list[Any], dtype: Any, batch_tokens: int | None = None):
        self.devices = list(devices[:1])
        self.dtype = dtype
        self.model = MultimodalModel.load(path, device=self.devices[0], dtype=dtype)
        self.num_labels = self.model.num_labels
        self.batch_tokens = int(batch_tokens or 4096)
        if self.batch_tokens < 1:
            raise UsageError(f"batch_tokens must be positive, not {batch_tokens}.")

    def plan(self, sequences: Sequence[Sequence[int] | MultimodalPrompt], groups: Any = None) -> list[MultimodalPrompt]:
        """One prompt per pass; token-id lists become pixel-free prompts."""
        return [s if isinstance(s, MultimodalPrompt) else MultimodalPrompt(list(s)) for s in sequences]

    def run(self, packs: Sequence[MultimodalPrompt], count: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Logits [count, num_labels] (float32) in the order of ``packs``."""
        out = self.model.run(packs, progress)
        if len(out) != count:
            raise AssertionError("one prompt per pair")
        return out
