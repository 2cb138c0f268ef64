"""What `raytts export-onnx` exports: each block of the model (`actors.onnx.blocks`' modules) with its inputs,
outputs, dynamic axes and random inputs at two shapes for verification."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..model.chattts import ChatTTSModel
from . import blocks as B


@dataclass
class Block:
    name: str  # file stem, and the manifest key
    kind: str  # the graph it is: layers share "layer"
    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    dynamic: list[dict[int, str]]  # per input: axis -> symbolic name
    samples: Callable[[int], tuple[torch.Tensor, ...]]  # random inputs at shape variant 0 or 1


def export_blocks(model: ChatTTSModel, dtype: torch.dtype) -> list[Block]:
    """Every block of `model`, with random inputs at two shapes for verification."""
    config = model.config
    g = config.gpt
    hidden, heads_kv, dim, q = g.hidden_size, g.num_key_value_heads, g.head_dim, g.num_vq
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dt)

    def randint(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=gen)

    def embed_samples(v: int):
        n = (7, 3)[v]
        return randint(g.num_text_tokens, n), randint(g.num_audio_tokens, n, q), randint(3, n), randn(n, hidden)

    pool = 6

    def layer_samples(v: int):
        batch, seq, nb, block_size = ((2, 5, 2, 16), (3, 1, 3, 8))[v]
        positions = torch.arange(seq).view(1, -1) + randint(30, batch, 1)
        index = (torch.arange(heads_kv).view(-1, 1) * pool + randint(pool, 1, batch * nb)).reshape(-1)
        return randn(batch, seq, hidden), positions, randn(heads_kv, pool, block_size, dim), \
            randn(heads_kv, pool, block_size, dim), index  # fmt: skip

    def sampling_samples(v: int):
        batch, width, codes = ((3, q, g.num_audio_tokens), (2, 1, 40))[v]
        return (
            randn(batch, width, codes, dt=torch.float32) * 3,
            randint(3, batch, width, codes).float(),
            randint(6, batch),
            torch.rand(batch, width, generator=gen) + 0.1,
            torch.rand(batch, generator=gen) * 0.5 + 0.4,
            randint(codes - 3, batch) + 3,
            torch.rand(batch, generator=gen) * 0.3 + 1.0,
            randint(6, batch),
            torch.tensor(codes - 1),
        )

    blocks = [
        Block("embed", "embed", B.EmbedBlock(model), ["ids", "codes", "kind", "speaker"], ["embeds"],
              [{0: "n"}, {0: "n"}, {0: "n"}, {0: "n"}], embed_samples),
    ]  # fmt: skip
    layer_io = (["x", "positions", "k_pool", "v_pool", "read_index"], ["out", "k_new", "v_new"])
    layer_axes = [
        {0: "batch", 1: "seq"},
        {0: "batch", 1: "seq"},
        {1: "pool_blocks", 2: "block_size"},
        {1: "pool_blocks", 2: "block_size"},
        {0: "reads"},
    ]
    for i, layer in enumerate(model.gpt.layers):
        blocks.append(Block(f"layers/layer_{i:02d}", "layer", B.LayerBlock(layer, g), *layer_io, layer_axes,
                            layer_samples))  # fmt: skip
    blocks += [
        Block("norm", "norm", B.NormBlock(model.gpt.norm), ["x"], ["hidden"], [{0: "batch", 1: "seq"}],
              lambda v: (randn((2, 4)[v], (3, 1)[v], hidden),)),
        Block("code_head", "code_head", B.CodeHeadBlock(model), ["hidden"], ["logits"], [{0: "n"}],
              lambda v: (randn((3, 1)[v], hidden),)),
        Block("text_head", "text_head", B.TextHeadBlock(model), ["hidden"], ["logits"], [{0: "n"}],
              lambda v: (randn((3, 1)[v], hidden),)),
        Block("sampling", "sampling", B.SamplingHeadBlock(),
              ["logits", "counts", "steps", "temperature", "top_p", "top_k", "penalty", "min_new_tokens", "eos"],
              ["scores"],
              [{0: "batch", 1: "width", 2: "codes"}, {0: "batch", 1: "width", 2: "codes"}, {0: "batch"},
               {0: "batch", 1: "width"}, {0: "batch"}, {0: "batch"}, {0: "batch"}, {0: "batch"}, {}],
              sampling_samples),
    ]  # fmt: skip
    blocks += _audio_blocks(model, randn, randint, gen)
    return blocks


def _audio_blocks(model: ChatTTSModel, randn: Callable, randint: Callable, gen: torch.Generator) -> list[Block]:
    """The Decoder, the DVAE's decoder and encoder, and Vocos."""
    hidden, q, codes = model.config.gpt.hidden_size, model.config.gpt.num_vq, model.config.gpt.num_audio_tokens
    n_mels = model.config.vocos.input_channels

    def frames(steps: list[int]) -> torch.Tensor:
        return torch.tensor([2 * s for s in steps])

    return [
        Block("decoder", "decoder", B.DecoderBlock(model.decoder), ["hidden", "frames"], ["mel"],
              [{0: "batch", 2: "steps"}, {0: "batch"}],
              lambda v: (randn(2, hidden, (9, 14)[v]), frames([(9, 5), (14, 14)][v]))),
        Block("dvae_decode", "dvae_decode", B.DVAEDecodeBlock(model.dvae), ["codes", "frames"], ["mel"],
              [{0: "batch", 2: "steps"}, {0: "batch"}],
              lambda v: (randint(codes - 1, 2, q, (9, 14)[v]), frames([(9, 5), (14, 14)][v]))),
        Block("dvae_encode", "dvae_encode", B.DVAEEncodeBlock(model.dvae), ["audio"], ["codes"],
              [{0: "samples"}], lambda v: (torch.randn((24_000, 37_123)[v], generator=gen) * 0.1,)),
        Block("vocos", "vocos", B.VocosBlock(model.vocos), ["mel", "frames"], ["real", "imag"],
              [{0: "batch", 2: "mel_frames"}, {0: "batch"}],
              lambda v: (randn(2, n_mels, (18, 28)[v]), torch.tensor([(18, 10), (28, 28)][v]))),
    ]  # fmt: skip
