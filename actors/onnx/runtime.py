"""The onnxruntime backend: an exported folder (`actors.onnx.export`) behind the model interface the engine drives.

`OnnxChatTTS` has what `actors.engine` and `actors.replica` use of `ChatTTSModel` (`config`, `device`, `dtype`,
`embed.*`, `gpt(...)`, `decoder`, `dvae`, `vocos`, and `process_logits`), so the continuous batcher, the memory plan,
the per-row random streams, streaming decode, the Ray Data stage and Serve run unchanged over it. The KV pool stays
the engine's preallocated `PagedKVCache`: each layer's session gets that layer's pool by pointer (IOBinding, no
copy), gathers the blocks the step reads itself, and returns only this call's keys and values, which are written
into the pool in place. Every output is bound to a preallocated torch tensor, so nothing is copied out either.

The random draw stays in torch (`actors.engine.sampling.sample`): the sampling head's graph filters the logits, the
counter-based draw over its scores is the torch backend's, so the same row gets the same codes on either backend.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..engine.sampling import SamplingBatch
from ..model.attention import ReadGroup, attention_metadata
from ..model.config import ModelConfig
from ..model.gpt import PagedKVCache
from ..model.vocos import istft
from .blocks import CODES, TEXT
from .export import DTYPES
from .manifest import WINDOW_FILE, OnnxError, read_manifest

log = logging.getLogger(__name__)

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.bool: np.bool_}

__all__ = ["OnnxChatTTS", "OnnxError", "read_manifest"]


class _Session:
    """One block's onnxruntime session, run through IOBinding over torch tensors (inputs and outputs by pointer)."""

    def __init__(self, path: Path, device: torch.device, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # One session per block, each with its own pool of `threads` threads; idle pools sleep instead of spinning
        # (25 spinning pools on a few cores starve the one that runs: 5x slower). Measured on 2 cores, this beats
        # one process-wide pool (set_global_thread_pool_sizes) by 1.5-2x at 16 rows.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device.type == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise OnnxError(
                    f"the onnx backend on {device} needs onnxruntime's CUDAExecutionProvider; this onnxruntime has "
                    f"{available}: install onnxruntime-gpu, or run the onnx backend on the CPU (engine.device: cpu)"
                )
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.device = device

    def run(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        binding = self.session.io_binding()
        kind, index = self.device.type, self.device.index or 0
        inputs = [tensor.contiguous() for tensor in inputs]  # held until the run ends: ORT has only pointers
        for name, tensor in zip(self.inputs, inputs, strict=True):
            binding.bind_input(name, kind, index, _NUMPY[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())
        for name, tensor in zip(self.outputs, outputs, strict=True):
            if not tensor.is_contiguous():
                raise ValueError(f"output {name!r} must be a contiguous tensor to be written in place")
            binding.bind_output(name, kind, index, _NUMPY[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())
        self.session.run_with_iobinding(binding)
        return outputs


class _Embed:
    def __init__(self, owner: OnnxChatTTS) -> None:
        self._owner = owner
        gpt = owner.config.gpt
        self._hidden, self._num_vq = gpt.hidden_size, gpt.num_vq

    def _run(self, ids: torch.Tensor, codes: torch.Tensor, kind: int) -> torch.Tensor:
        n = ids.shape[0]
        device, dtype = self._owner.device, self._owner.dtype
        out = torch.empty(n, self._hidden, device=device, dtype=dtype)
        if n == 0:
            return out
        kinds = torch.full((n,), kind, dtype=torch.int64, device=device)
        speaker = torch.zeros(n, self._hidden, device=device, dtype=dtype)
        return self._owner.session("embed").run([ids, codes, kinds, speaker], [out])[0]

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).to(torch.int64)
        codes = torch.zeros(flat.shape[0], self._num_vq, dtype=torch.int64, device=flat.device)
        return self._run(flat, codes, TEXT).view(*ids.shape, self._hidden)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        flat = codes.reshape(-1, self._num_vq).to(torch.int64)
        ids = torch.zeros(flat.shape[0], dtype=torch.int64, device=flat.device)
        return self._run(ids, flat, CODES).view(*codes.shape[:-1], self._hidden)

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        gpt = self._owner.config.gpt
        flat = hidden.reshape(-1, gpt.hidden_size).to(self._owner.dtype)
        out = torch.empty(flat.shape[0], gpt.num_vq, gpt.num_audio_tokens, device=flat.device)
        self._owner.session("code_head").run([flat], [out])
        return out.view(*hidden.shape[:-1], gpt.num_vq, gpt.num_audio_tokens)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        gpt = self._owner.config.gpt
        flat = hidden.reshape(-1, gpt.hidden_size).to(self._owner.dtype)
        out = torch.empty(flat.shape[0], gpt.num_text_tokens, device=flat.device)
        self._owner.session("text_head").run([flat], [out])
        return out.view(*hidden.shape[:-1], gpt.num_text_tokens)


class _Backbone:
    """`LlamaBackbone.forward`'s contract over the layer sessions: normed hidden states of `embeds` at `positions`."""

    def __init__(self, owner: OnnxChatTTS) -> None:
        self._owner = owner
        self._layers = [owner.session(f"layers/layer_{i:02d}") for i in range(owner.config.gpt.num_hidden_layers)]

    def __call__(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: PagedKVCache,
        tables: torch.Tensor,
        groups: list[ReadGroup],
    ) -> torch.Tensor:
        gpt = self._owner.config.gpt
        batch, seq, hidden = embeds.shape
        heads_kv = gpt.num_key_value_heads
        # One read for all rows, up to the furthest any group reads (the graph masks each row's own past).
        metadata = attention_metadata(positions, tables, groups, tuple(cache.keys[0].shape), one_read=True)
        read_index = metadata.reads[0].index
        blocks, offsets = metadata.write_blocks, metadata.write_offsets
        x = embeds.contiguous()
        positions = positions.contiguous()
        # Buffers made once a call, not once a layer: hidden states alternate between two (a layer never writes
        # its own input), and this call's keys and values go into the pool before the next layer reuses them.
        spare = [torch.empty_like(x), torch.empty_like(x)]
        k_new = torch.empty(heads_kv, batch, seq, gpt.head_dim, device=x.device, dtype=cache.keys[0].dtype)
        v_new = torch.empty_like(k_new)
        for i, (session, pool_k, pool_v) in enumerate(zip(self._layers, cache.keys, cache.values, strict=True)):
            out = spare[i % 2]
            session.run([x, positions, pool_k, pool_v, read_index], [out, k_new, v_new])
            pool_k[:, blocks, offsets] = k_new
            pool_v[:, blocks, offsets] = v_new
            x = out
        normed = torch.empty_like(x)
        return self._owner.session("norm").run([x], [normed])[0]


class _Decoder:
    def __init__(self, owner: OnnxChatTTS, block: str) -> None:
        self._owner, self._block = owner, block

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: hidden [B, H, T] (decoder) or codes [B, num_vq, T] (dvae); mask [B, 1, 2T] -> mel [B, n_mels, 2T]."""
        frames = mask[:, 0].sum(-1).round().to(torch.int64)
        n_mels = self._owner.config.vocos.input_channels
        out = torch.empty(x.shape[0], n_mels, 2 * x.shape[-1], device=x.device, dtype=self._owner.dtype)
        return self._owner.session(self._block).run([x, frames], [out])[0]


class _DVAE(_Decoder):
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """24 kHz mono audio [samples] -> codes [num_vq, (1 + samples // 256) // 2]."""
        steps = (1 + audio.shape[0] // self._owner.config.vocos.hop_length) // 2
        out = torch.empty(self._owner.config.gpt.num_vq, steps, dtype=torch.int64, device=audio.device)
        return self._owner.session("dvae_encode").run([audio.float()], [out])[0]


class _Vocos:
    def __init__(self, owner: OnnxChatTTS, window: torch.Tensor) -> None:
        self._owner = owner
        self._window = window
        self._bins = owner.config.vocos.n_fft // 2 + 1

    def __call__(self, mel: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        batch, _, total = mel.shape
        if frames is None:
            frames = torch.full((batch,), total, device=mel.device)
        real = torch.empty(batch, self._bins, total, device=mel.device)
        imag = torch.empty_like(real)
        self._owner.session("vocos").run([mel.to(self._owner.dtype), frames.to(torch.int64)], [real, imag])
        return istft(torch.complex(real, imag), self._window, self._owner.config.vocos.hop_length, frames)


class OnnxChatTTS:
    """An exported model run by onnxruntime, with the interface the engine uses (see the module docstring)."""

    backend = "onnx"
    grouped_reads = False  # one read of every row up to the longest per step: the layer graph takes one index

    def __init__(self, folder: Path, config: ModelConfig, device: torch.device | str = "cpu",
                 threads: int | None = None) -> None:  # fmt: skip
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if self.manifest["config"] != json.loads(json.dumps(config.to_dict())):
            raise OnnxError(
                f"{self.folder} was exported from a {self.manifest['config'].get('name')!r} model whose config "
                f"differs from the checkpoint's ({config.name!r}); export this checkpoint: raytts export-onnx --model ..."
            )
        self.config = config
        self.device = torch.device(device)
        self.dtype = DTYPES[self.manifest["dtype"]]
        self.quantize = self.manifest["quantize"]
        self._threads = threads or torch.get_num_threads()
        self._sessions: dict[str, _Session] = {}
        self._eos: dict[int, torch.Tensor] = {}  # the sampling head's end-token inputs, by token
        self.embed = _Embed(self)
        self.gpt = _Backbone(self)
        self.decoder = _Decoder(self, "decoder")
        self.dvae = _DVAE(self, "dvae_decode")
        window = torch.from_numpy(np.load(self.folder / WINDOW_FILE, allow_pickle=False)).float().to(self.device)
        self.vocos = _Vocos(self, window)
        for name in self.manifest["blocks"]:
            self.session(name)  # load every block now: a broken file fails the replica at start, not mid-job

    def session(self, name: str) -> _Session:
        session = self._sessions.get(name)
        if session is None:
            entry = self.manifest["blocks"].get(name)
            if entry is None:
                raise OnnxError(
                    f"{self.folder}: the manifest has no block {name!r}; re-export with `raytts export-onnx`"
                )
            path = self.folder / entry["file"]
            if not path.is_file():
                raise OnnxError(f"{self.folder}: {entry['file']} is missing; re-export with `raytts export-onnx`")
            session = self._sessions[name] = _Session(path, self.device, self._threads)
        return session

    def process_logits(
        self, logits: torch.Tensor, counts: torch.Tensor, steps: torch.Tensor, params: SamplingBatch, eos: int
    ) -> torch.Tensor:
        """`actors.engine.sampling.process_logits` through the sampling head's graph."""
        out = torch.empty_like(logits)
        eos_t = self._eos.get(eos)
        if eos_t is None:  # made once per end token: no host-to-device copy in the decode loop
            eos_t = self._eos[eos] = torch.tensor(eos, dtype=torch.int64, device=self.device)
        inputs = [logits, counts, steps, params.temperature, params.top_p, params.top_k, params.penalty,
                  params.min_new_tokens, eos_t]  # fmt: skip
        return self.session("sampling").run(inputs, [out])[0]
