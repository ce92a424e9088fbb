"""Tiny random checkpoints per architecture, built offline with transformers, plus a real BPE tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>", "<eos>", "<pad>"]
VOCAB = 512
CORPUS = [
    "yes no Yes No 0 1 yes no yes no Yes No true false",
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query",
    "<Query>: what is the capital of France? <Document>: The capital of France is Paris.",
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    'Note that the answer can only be "yes" or "no". system user assistant <think> </think>',
    "A: B: Given a query A and a passage B, determine whether the passage contains an answer",
    "query: document: Relevance: instruction: You are a search relevance expert",
]


def build_tokenizer(folder: Path, extra_specials: tuple[str, ...] = ()) -> None:
    """A byte-level BPE tokenizer in which yes/no/Yes/ yes are single tokens and yes! is not
    (``extra_specials`` are appended to the special tokens, e.g. Qwen3-VL's vision markers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 64, special_tokens=SPECIALS + list(extra_specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    lines = CORPUS * 50 + ["yes", "no", "Yes", "No"] * 200 + [" yes", " no"] * 200
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    fast.save_pretrained(str(folder))


ARCHS = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"final_logit_softcapping": None}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"final_logit_softcapping": None}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
}


def tiny_config(arch: str, tied: bool):
    import transformers

    config_name, _, extra = ARCHS[arch]
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=tied,
        bos_token_id=3, eos_token_id=2, pad_token_id=0,
    )
    kwargs.update(extra)
    return getattr(transformers, config_name)(**kwargs)


def build_model(folder: Path, arch: str, tied: bool = False, dtype: torch.dtype = torch.float32, shard: str | None = None, seed: int = 0) -> Path:
    """Save a random tiny CausalLM (and tokenizer) to ``folder``; returns it."""
    import transformers

    torch.manual_seed(seed)
    config = tiny_config(arch, tied)
    model = getattr(transformers, ARCHS[arch][1])(config).to(dtype).eval()
    with torch.no_grad():  # random init is small; widen it so logits differ clearly between tokens
        for param in model.parameters():
            param.normal_(0, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), max_shard_size=shard or "50GB")
    build_tokenizer(folder)
    return folder


VL_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def build_qwen3_vl(folder: Path, tied: bool = False, seed: int = 0) -> Path:
    """Save a random tiny Qwen3VLForConditionalGeneration with a tokenizer and a PIL image processor.

    The vision tower has 2 blocks of width 32 (patch 16, merge 2, one deepstack merger); the language
    model is the tiny text config above with 3-D (interleaved) rotary sections. Works offline.
    """
    import transformers
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(folder, VL_SPECIALS)
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = {name: tok.convert_tokens_to_ids(name) for name in VL_SPECIALS}
    text = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
        bos_token_id=3, eos_token_id=2, pad_token_id=0,
    )
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=[0])
    config = transformers.Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=tied, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = transformers.Qwen3VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    model.save_pretrained(str(folder))
    processor = {  # what Qwen3-VL ships, scaled down: 32x32 pixels per merged token, at most 16 tokens an image
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen3VLProcessor",
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "rescale_factor": 1 / 255, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
        "size": {"shortest_edge": 32 * 32, "longest_edge": 32 * 32 * 16},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    video = dict(processor, video_processor_type="Qwen3VLVideoProcessor")
    video.pop("image_processor_type")
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")
    return folder


def image_data_url(color: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> str:
    """A small two-tone test image as a base64 data URL."""
    import base64
    import io

    from PIL import Image

    image = Image.new("RGB", size, color)
    image.paste((255 - color[0], 255 - color[1], 255 - color[2]), (0, 0, size[0] // 2, size[1] // 3))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def config_of(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_cli(capsys, *args: str) -> CliResult:
    """Run the seqcls CLI in-process (no interpreter start-up), capturing its output."""
    from seqcls.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)
