"""Image documents for vision-language rerankers (Qwen3-VL): inputs, prompts with image pads, the model.

Shared by the runtime (``Scorer``, the server) and parity, so it sits below both and imports torch,
transformers and Pillow only inside functions.

A query or document is either plain text or *content*: a list of text and image parts. Images come as
PIL images, ``data:image/...;base64,...`` URLs or local file paths; remote (http/https) URLs are refused,
nothing is ever fetched. In the prompt each image becomes ``<|vision_start|><|image_pad|><|vision_end|>``
with the pad repeated once per merged patch (the image processor's grid / merge_size²); adjacent text
parts are joined with a newline, as the server always joined text content.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError

# converted (seq-cls) architecture -> (transformers backbone class, source causal-LM class)
MULTIMODAL_ARCHITECTURES = {
    "Qwen3VLForSequenceClassification": ("Qwen3VLModel", "Qwen3VLForConditionalGeneration"),
}
IMAGE_PART_TYPES = ("image_url", "image", "input_image", "image_pil")
_MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # a decoded image larger than this is refused (decompression bombs)


def is_multimodal(architecture: str | None) -> bool:
    """Whether a converted architecture runs images (through ``MultimodalModel``)."""
    return architecture in MULTIMODAL_ARCHITECTURES


# ---------------------------------------------------------------- content


@dataclass(frozen=True)
class ImagePart:
    """One decoded image (RGB PIL image) of a query or document."""

    image: Any

    def __repr__(self) -> str:
        return f"ImagePart({getattr(self.image, 'size', '?')})"


def load_image(value: Any, name: str = "image") -> Any:
    """An RGB PIL image from a PIL image, a base64 data URL, bytes or a local path.

    Raises:
        UsageError: for a remote URL (never fetched), a missing file, or bytes that are not an image.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise UsageError("Image documents need Pillow; install it with `pip install 'seqcls[vision]'`.") from exc
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        origin = "the image bytes"
    elif isinstance(value, (str, Path)):
        text = str(value).strip()
        lower = text[:16].lower()
        if lower.startswith(("http://", "https://", "ftp://")):
            raise UsageError(
                f"{name} is a remote URL ({text[:60]}); seqcls never fetches images over the network, "
                "so send it as a base64 data URL (data:image/png;base64,...) or a local file path."
            )
        if lower.startswith("data:"):
            header, sep, payload = text.partition(",")
            if not sep or ";base64" not in header.lower() or not header[5:].lower().startswith("image/"):
                raise UsageError(f"{name} is not a base64 image data URL; send data:image/png;base64,<data> (or jpeg, webp).")
            try:
                data = base64.b64decode(payload, validate=False)
            except (binascii.Error, ValueError) as exc:
                raise UsageError(f"{name} has invalid base64 data ({exc}); re-encode the image with standard base64.") from exc
            origin = "the data URL"
        else:
            path = Path(text[7:] if lower.startswith("file://") else text).expanduser()
            if not path.is_file():
                raise UsageError(f"{name}: image file {text[:80]} not found; pass an existing local path or a data URL.")
            data = path.read_bytes()
            origin = str(path)
    else:
        raise UsageError(f"{name} is {type(value).__name__}; pass a PIL image, a data URL or a local file path.")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > _MAX_IMAGE_PIXELS:
                raise UsageError(f"{name} is {opened.width}x{opened.height} pixels, over the limit of {_MAX_IMAGE_PIXELS}; send a smaller image.")
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"{name}: {origin} could not be decoded as an image ({type(exc).__name__}); send a PNG, JPEG or WebP image.") from exc


def _image_source(part: dict[str, Any], name: str) -> Any:
    kind = part.get("type")
    if kind in ("image_url", "input_image"):
        value = part.get("image_url", part.get("url"))
        if isinstance(value, dict):
            value = value.get("url")
    else:
        value = part.get(kind) if kind in part else part.get("image")
    if value is None:
        raise UsageError(f"{name} has no image; give {{\"type\": \"image_url\", \"image_url\": {{\"url\": \"data:image/png;base64,...\"}}}}.")
    return value


def content_parts(item: Any, name: str) -> str | list[Any]:
    """A query or document as plain text (``str``) or a content list of ``str`` and ``ImagePart``.

    Accepts a string; a PIL image; a content list of parts (``{"type": "text", "text": ...}``,
    ``{"type": "image_url", "image_url": {"url": ...}}``, ``{"type": "image", "image": ...}``, strings,
    PIL images); or an object ``{"content": [...]}`` / ``{"text": ...}``.

    Raises:
        UsageError: for an unsupported part type, or an image that cannot be read.
    """
    if isinstance(item, str):
        return item
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        return [ImagePart(load_image(item, name))]
    if isinstance(item, ImagePart):
        return [item]
    if isinstance(item, dict):
        if "content" in item and "type" not in item:
            return content_parts(item["content"], f"{name}.content")
        if "text" in item and "type" not in item:
            return content_parts(item["text"], f"{name}.text")
        return _parts([item], lambda k: name, Image)
    if isinstance(item, (list, tuple)) and not item:
        raise UsageError(f"{name} is an empty content list; give at least one text or image part.")
    if not isinstance(item, (list, tuple)):
        raise UsageError(f"{name} is {type(item).__name__}; pass text, an image, or a content list of text and image parts.")
    return _parts(item, lambda k: f"{name}[{k}]", Image)


def _parts(item: Sequence[Any], where_of: Any, Image: Any) -> list[Any]:
    parts: list[Any] = []
    for k, part in enumerate(item):
        where = where_of(k)
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, ImagePart):
            parts.append(part)
        elif Image is not None and isinstance(part, Image.Image):
            parts.append(ImagePart(load_image(part, where)))
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise UsageError(f"{where} is a text part without a string `text`; send {{\"type\": \"text\", \"text\": \"...\"}}.")
                parts.append(text)
            elif kind in IMAGE_PART_TYPES:
                parts.append(ImagePart(load_image(_image_source(part, where), where)))
            else:
                shown = kind if isinstance(kind, str) else type(kind).__name__
                raise UsageError(f"{where} has unsupported content type {shown!r}; send parts of type \"text\" or \"image_url\".")
        else:
            raise UsageError(f"{where} is {type(part).__name__}; content parts are text or image objects.")
    return parts


def has_images(item: Any) -> bool:
    """Whether a normalised item (see ``content_parts``) holds an image."""
    return isinstance(item, list) and any(isinstance(p, ImagePart) for p in item)


def plain_text(item: str | list[Any]) -> str:
    """The text of an item with images left out (what a rerank result shows as the document's text)."""
    if isinstance(item, str):
        return item
    return "\n".join(p for p in item if isinstance(p, str))


# ---------------------------------------------------------------- prompts


@dataclass
class MultimodalPrompt:
    """Token ids with every image pad expanded, and the pixels of the prompt's images in order."""

    ids: list[int]
    pixel_values: Any = None  # torch.Tensor [patches, dim] or None
    image_grid_thw: Any = None  # torch.LongTensor [images, 3] or None
    pad_id: int = -1  # the image pad token id
    images: int = 0

    def model_inputs(self, device: Any, dtype: Any) -> dict[str, Any]:
        """input_ids [1, L] and, with images, pixel_values, image_grid_thw and mm_token_type_ids (1 at image pads)."""
        import torch

        ids = torch.tensor([self.ids], dtype=torch.long)
        out: dict[str, Any] = {"input_ids": ids.to(device)}
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values.to(device, dtype)
            out["image_grid_thw"] = self.image_grid_thw.to(device)
            out["mm_token_type_ids"] = (ids == self.pad_id).int().to(device)
        return out


@dataclass
class VisionVocab:
    """The vision marker tokens of a Qwen-VL style model."""

    start: str
    end: str
    pad: str
    pad_id: int

    @property
    def image_text(self) -> str:
        return self.start + self.pad + self.end


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class MultimodalPrompter:
    """Renders (query, document) pairs whose sides may hold images into ``MultimodalPrompt`` objects.

    Args:
        folder: a converted (or source) Qwen3-VL folder: config.json, tokenizer, preprocessor_config.json.
        tokenizer: the folder's ``tokenizers.Tokenizer`` (transformers' backend tokenizer).
        template: a PromptTemplate or recipe Template (``render``, ``order``).
    """

    def __init__(self, folder: str | Path, tokenizer: Any, template: Any):
        folder = Path(folder)
        config = _read_json(folder / "config.json")
        self.tokenizer = tokenizer
        self.template = template
        ids = [config.get(k) for k in ("vision_start_token_id", "image_token_id", "vision_end_token_id")]
        if not all(isinstance(i, int) for i in ids):
            raise UsageError(f"{folder}/config.json lacks vision_start_token_id, image_token_id or vision_end_token_id; re-convert the model.")
        texts = [tokenizer.id_to_token(i) for i in ids]
        if any(t is None for t in texts):
            raise UsageError(f"The tokenizer in {folder} has no vision marker tokens {ids}; copy the source model's tokenizer files.")
        self.vocab = VisionVocab(texts[0], texts[2], texts[1], ids[1])
        if not (folder / "preprocessor_config.json").is_file():
            raise UsageError(f"{folder} has no preprocessor_config.json, so images cannot be prepared; copy it from the source model.")
        self.folder = folder
        self._processor = None

    @property
    def processor(self) -> Any:
        """transformers' image processor of the folder (PIL backend where torchvision is missing)."""
        if self._processor is None:
            from transformers import AutoImageProcessor
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                self._processor = AutoImageProcessor.from_pretrained(str(self.folder), trust_remote_code=False)
            except Exception as exc:  # transformers raises many types for odd processor files
                raise UsageError(f"Cannot load the image processor of {self.folder} ({type(exc).__name__}: {exc}); copy the source's preprocessor_config.json.") from exc
            finally:
                hf_logging.set_verbosity(verbosity)
        return self._processor

    def side_text(self, item: str | list[Any]) -> tuple[str, list[Any]]:
        """The text of one side with image markers, and its images in order."""
        if isinstance(item, str):
            return item, []
        out, images, previous_text = "", [], False
        for part in item:
            if isinstance(part, ImagePart):
                out += self.vocab.image_text
                images.append(part.image)
                previous_text = False
            else:
                out += ("\n" if previous_text else "") + part
                previous_text = True
        return out, images

    def encode(self, query: str | list[Any], document: str | list[Any], instruction: str | None = None,
               max_length: int | None = None, index: int = 0) -> MultimodalPrompt:
        """One pair as token ids (image pads expanded) plus pixel values."""
        q_text, q_images = self.side_text(query)
        d_text, d_images = self.side_text(document)
        images = q_images + d_images if getattr(self.template, "order", "query_first") == "query_first" else d_images + q_images
        text = self.template.render(q_text, d_text, instruction)
        ids = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        slots = [i for i, t in enumerate(ids) if t == self.vocab.pad_id]
        if len(slots) != len(images):
            raise UsageError(
                f"Pair {index} has {len(images)} image(s) but its text holds {len(slots)} {self.vocab.pad} token(s); "
                f"remove {self.vocab.pad} from the text (images go in image parts)."
            )
        prompt = MultimodalPrompt(ids)
        if images:
            batch = self.processor(images=images, return_tensors="pt")
            grid = batch["image_grid_thw"]
            merge = int(getattr(self.processor, "merge_size", 2) or 2)
            counts = [int(g.prod()) // (merge * merge) for g in grid]
            expanded: list[int] = []
            last = 0
            for slot, n in zip(slots, counts):
                expanded += ids[last:slot] + [self.vocab.pad_id] * n
                last = slot + 1
            expanded += ids[last:]
            prompt = MultimodalPrompt(expanded, batch["pixel_values"], grid, self.vocab.pad_id, len(images))
        if max_length is not None and len(prompt.ids) > max_length:
            raise UsageError(
                f"Pair {index} is {len(prompt.ids)} tokens with its {prompt.images} image(s), over the limit of {max_length}; "
                "send smaller images or shorter text (pairs with images are not truncated)."
            )
        return prompt


# ---------------------------------------------------------------- the model


@dataclass
class MultimodalModel:
    """A converted VL reranker: the transformers backbone (vision tower + language model) and the score head.

    ``logits(prompt)`` = last hidden state of the prompt's last token · ``score.weight``ᵀ (in float32),
    what vLLM's ``*ForSequenceClassification`` adapter computes.
    """

    backbone: Any
    score_weight: Any  # torch.Tensor [num_labels, hidden] float32
    device: Any
    dtype: Any
    lock: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, folder: str | Path, device: Any = "cpu", dtype: Any = None) -> "MultimodalModel":
        """Load the backbone with transformers and ``score.weight`` from the folder's safetensors."""
        import threading

        import torch
        import transformers
        from safetensors import safe_open
        from transformers.utils import logging as hf_logging

        folder = Path(folder)
        config = _read_json(folder / "config.json")
        arch = next((a for a in config.get("architectures") or [] if a in MULTIMODAL_ARCHITECTURES), None)
        if arch is None:
            raise UsageError(f"{folder} is not a converted vision-language reranker (architectures: {config.get('architectures')}).")
        backbone_cls = getattr(transformers, MULTIMODAL_ARCHITECTURES[arch][0], None)
        if backbone_cls is None:
            raise UsageError(f"transformers {transformers.__version__} has no {MULTIMODAL_ARCHITECTURES[arch][0]}; upgrade transformers.")
        dtype = dtype or torch.float32
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            backbone = backbone_cls.from_pretrained(str(folder), dtype=dtype, trust_remote_code=False)
        except Exception as exc:  # transformers raises many types for folders it cannot load
            raise UsageError(f"transformers cannot load {folder} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); re-convert the model.") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        weight = None
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), "pt") as fh:
                if "score.weight" in fh.keys():
                    weight = fh.get_tensor("score.weight")
        if weight is None:
            raise UsageError(f"{folder} has no score.weight; re-convert the model with `seqcls convert`.")
        return cls(backbone.to(device).eval(), weight.to(device=device, dtype=torch.float32), torch.device(device), dtype, threading.Lock())

    @property
    def num_labels(self) -> int:
        return int(self.score_weight.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.backbone.config.text_config.vocab_size)

    def logits(self, prompt: MultimodalPrompt) -> Any:
        """Logits [num_labels] (float32, on the CPU) of one prompt."""
        import torch

        inputs = prompt.model_inputs(self.device, self.dtype)
        with self.lock, torch.no_grad():
            hidden = self.backbone(**inputs, use_cache=False).last_hidden_state[0, -1]
        return (hidden.float() @ self.score_weight.T).cpu()

    def run(self, prompts: Sequence[MultimodalPrompt], progress: Any = None) -> Any:
        """Logits [len(prompts), num_labels] as a float32 numpy array, one forward pass per prompt."""
        import numpy as np

        out = np.zeros((len(prompts), self.num_labels), dtype=np.float32)
        for i, prompt in enumerate(prompts):
            if prompt.ids and (min(prompt.ids) < 0 or max(prompt.ids) >= self.vocab_size):
                raise UsageError(f"Token id {max(prompt.ids)} is outside this model's vocabulary; tokenise with the model's own tokenizer.")
            out[i] = self.logits(prompt).numpy()
            if progress:
                progress(1)
        return out
