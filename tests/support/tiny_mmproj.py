"""A tiny vision projector (mmproj) for the SmolLM2 model, so the gate's image checks meet a real
llama-server with vision on, not only fakes.

No small vision model or projector for SmolLM2 comes from a package index; the one tool on PyPI
that builds an mmproj for any model, `globalmm` 0.2.2, needs torch and transformers and downloads
SigLIP SO400M and COCO (docs/security.md, "What the gate checks": "The projector is a toy, and why").
So this writes the same file layout globalmm writes (`clip.projector_type = gemma3`: a SigLIP
vision tower, average pooling, an RMS norm and one matrix into the LLM's embedding space) at a
toy size, with seeded random weights. llama-server loads it as a real projector: `/props` says
`modalities.vision: true`, and each image is decoded by its own stb_image, resized, run through
the tower and spliced into the prompt. The model cannot say what is in a picture; the tests ask
only what the gate lets through and what llama-server then does with it.

The GGUF is written by hand (version 3: header, key/values, tensor infos, 32-byte aligned data),
in about 0.1 s, so the tests need no `gguf` or numpy dependency and no cache.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from pathlib import Path

SMOLLM2_EMBEDDING = 576
"""SmolLM2-135M's hidden size: the projector's output must match it or llama-server refuses the pair."""
IMAGE_SIZE = 56
PATCH_SIZE = 14
MERGE = 2
"""56/14 = 4x4 patches, pooled 2x2: each image becomes 4 tokens in the prompt."""
EMBEDDING = 32
FEED_FORWARD = 64
HEADS = 2
BLOCKS = 1
ALIGNMENT = 32

_UINT32, _FLOAT32, _BOOL, _STRING, _ARRAY = 4, 6, 7, 8, 9
_F32 = 0


def write_tiny_mmproj(path: Path, *, llm_embedding: int = SMOLLM2_EMBEDDING, seed: int = 25) -> Path:
    """Write the projector to `path` (a few hundred KB) and return it."""
    rng = random.Random(seed)

    def weights(*shape: int, scale: float = 0.02) -> tuple[tuple[int, ...], list[float]]:
        count = 1
        for dim in shape:
            count *= dim
        return shape, [rng.gauss(0.0, scale) for _ in range(count)]

    def filled(value: float, *shape: int) -> tuple[tuple[int, ...], list[float]]:
        count = 1
        for dim in shape:
            count *= dim
        return shape, [value] * count

    positions = (IMAGE_SIZE // PATCH_SIZE) ** 2
    # Shapes as PyTorch/numpy would hold them (outermost first), as globalmm passes them to gguf.
    tensors: dict[str, tuple[tuple[int, ...], list[float]]] = {
        "v.patch_embd.weight": weights(EMBEDDING, 3, PATCH_SIZE, PATCH_SIZE),
        "v.patch_embd.bias": filled(0.0, EMBEDDING),
        "v.position_embd.weight": weights(positions, EMBEDDING),
    }
    for block in range(BLOCKS):
        prefix = f"v.blk.{block}."
        tensors |= {
            prefix + "ln1.weight": filled(1.0, EMBEDDING),
            prefix + "ln1.bias": filled(0.0, EMBEDDING),
            prefix + "ln2.weight": filled(1.0, EMBEDDING),
            prefix + "ln2.bias": filled(0.0, EMBEDDING),
            prefix + "ffn_up.weight": weights(FEED_FORWARD, EMBEDDING),
            prefix + "ffn_up.bias": filled(0.0, FEED_FORWARD),
            prefix + "ffn_down.weight": weights(EMBEDDING, FEED_FORWARD),
            prefix + "ffn_down.bias": filled(0.0, EMBEDDING),
        }
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[prefix + name + ".weight"] = weights(EMBEDDING, EMBEDDING)
            tensors[prefix + name + ".bias"] = filled(0.0, EMBEDDING)
    tensors |= {
        "v.post_ln.weight": filled(1.0, EMBEDDING),
        "v.post_ln.bias": filled(0.0, EMBEDDING),
        "mm.input_projection.weight": weights(EMBEDDING, llm_embedding),
        "mm.soft_emb_norm.weight": filled(1.0, EMBEDDING),
    }
    values: list[tuple[str, int, object]] = [
        ("general.architecture", _STRING, "clip"),
        ("general.name", _STRING, "llama-direct test projector (random)"),
        ("clip.projector_type", _STRING, "gemma3"),
        ("clip.has_text_encoder", _BOOL, False),
        ("clip.has_vision_encoder", _BOOL, True),
        ("clip.has_llava_projector", _BOOL, False),
        ("clip.use_gelu", _BOOL, True),
        ("clip.vision.image_size", _UINT32, IMAGE_SIZE),
        ("clip.vision.patch_size", _UINT32, PATCH_SIZE),
        ("clip.vision.embedding_length", _UINT32, EMBEDDING),
        ("clip.vision.feed_forward_length", _UINT32, FEED_FORWARD),
        ("clip.vision.projection_dim", _UINT32, llm_embedding),
        ("clip.vision.block_count", _UINT32, BLOCKS),
        ("clip.vision.attention.head_count", _UINT32, HEADS),
        ("clip.vision.attention.layer_norm_epsilon", _FLOAT32, 1e-6),
        ("clip.vision.image_mean", _ARRAY, [0.5, 0.5, 0.5]),
        ("clip.vision.image_std", _ARRAY, [0.5, 0.5, 0.5]),
        ("clip.vision.projector.scale_factor", _UINT32, MERGE),
    ]
    path.write_bytes(_gguf(values, tensors))
    return path


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(kind: int, value: object) -> bytes:
    if kind == _STRING:
        assert isinstance(value, str)
        return _string(value)
    if kind == _BOOL:
        return struct.pack("<?", value)
    if kind == _UINT32:
        return struct.pack("<I", value)
    if kind == _FLOAT32:
        return struct.pack("<f", value)
    assert kind == _ARRAY and isinstance(value, list)
    return struct.pack("<IQ", _FLOAT32, len(value)) + struct.pack(f"<{len(value)}f", *value)


def _pad(size: int) -> int:
    return -size % ALIGNMENT


def _gguf(values: Sequence[tuple[str, int, object]], tensors: dict[str, tuple[tuple[int, ...], list[float]]]) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(values))
    for key, kind, value in values:
        head += _string(key) + struct.pack("<I", kind) + _value(kind, value)
    data = b""
    for name, (shape, numbers) in tensors.items():
        dims = tuple(reversed(shape))  # ggml counts dimensions innermost first
        head += _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, _F32, len(data))
        data += struct.pack(f"<{len(numbers)}f", *numbers)
        data += b"\0" * _pad(len(data))
    return head + b"\0" * _pad(len(head)) + data
