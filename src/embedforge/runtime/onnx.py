"""``onnx`` and ``onnx-int8``: the backbone as our own ONNX graph, run by ONNX Runtime on CPU.

The graph holds only what the runtime seam (:mod:`.base`) asks of the model, computed exactly as
:class:`~embedforge.runtime.TorchRuntime` computes it; prompts, tokenization, end tokens,
batching, padding, normalisation and Matryoshka truncation stay in the shared core above.

Inputs: ``input_ids`` and ``attention_mask``, int64 ``(batch, sequence)``, both axes dynamic; no
key/value cache. A decoder's position ids are computed from the mask inside the graph
(:func:`embedforge.batching.position_ids_from_mask`), so left or right padding never shifts a
text's positions; an encoder gets its absolute positions, as in torch.

Output, one per graph (``GraphInfo.output``):

- ``sentence_embedding``: an embedder's pooled states ``(batch, hidden)``, pooled with the checkpoint's
  pooling (:func:`embedforge.pooling.pool`) before normalisation. Last-token pooling runs the
  last decoder layer at the last position only (:class:`~embedforge.runtime.lastpos.
  LastPositionDecoder`), so that graph's output is also the final state at the last position.
- ``last_position_state``: a reranker's final (normed) hidden state at the last real position
  ``(batch, hidden)``, also through the last-position decoder. The LM head is not in the graph:
  the export keeps the rows the reranker reads (``no`` and ``yes``) beside it
  (``lm_head_rows.safetensors``), so ``last_position_states`` returns real states and
  ``head_logits`` is the same ``states @ rows.T`` as in torch. The protocol stays honest at the
  cost of one ``(batch, hidden) x (hidden, 2)`` product outside the graph.

Token states (``embed(..., pooling=None)``), another pooling than the exported one and the
prefix cache are not in the graph; asking for them raises and names what to do instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from ..batching import position_ids_from_mask
from ..pooling import Pooling, last_token_index, pool
from .lastpos import LastPositionDecoder, last_position_support

GRAPH_FILE = "model.onnx"
HEAD_ROWS_FILE = "lm_head_rows.safetensors"
INPUT_NAMES = ("input_ids", "attention_mask")
EMBEDDING_OUTPUT = "sentence_embedding"  # the name sentence-transformers' ONNX exports use
STATE_OUTPUT = "last_position_state"
ONNX_BACKENDS: tuple[str, ...] = ("onnx", "onnx-int8")
# architectures whose export is tested against fp32 torch: BERT-style encoders and the decoders
# of the last-position decoder (see lastpos.SUPPORTED_MODEL_TYPES)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("bert", "llama", "mistral", "qwen2", "qwen3")
INSTALL_HINT = "pip install 'embedforge[onnx]'"


def require_onnx(*names: str) -> tuple[ModuleType, ...]:
    """Import ``names`` (default onnx and onnxruntime), or raise naming the extra to install."""
    modules = []
    for name in names or ("onnx", "onnxruntime"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise ImportError(
                f"the onnx backends need {name!r}, which is not installed ({exc}); run: {INSTALL_HINT}"
            ) from None
    return tuple(modules)


@dataclass(frozen=True)
class GraphInfo:
    """What an exported graph computes (the manifest's ``onnx`` entry)."""

    kind: str  # "embedder" or "reranker"
    output: str  # EMBEDDING_OUTPUT or STATE_OUTPUT
    pooling: str | None  # the embedder's pooling; None for a reranker
    model_type: str
    hidden_size: int
    vocab_size: int
    last_position: bool  # the last layer runs at the last position only
    opset: int = 0
    inputs: tuple[str, ...] = INPUT_NAMES
    outputs: tuple[str, ...] = ()
    files: tuple[str, ...] = (GRAPH_FILE,)
    exporter: str = "torch.onnx.export(dynamo=True)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphInfo:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


# ---------------------------------------------------------------------------- graphs (export side)
def export_support(module: Any) -> str | None:
    """``None`` when ``module``'s architecture can be exported, else the reason it cannot."""
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (
            f"model type {model_type!r} is not supported; ONNX export supports {list(SUPPORTED_MODEL_TYPES)}"
        )
    if model_type != "bert":
        return last_position_support(module)
    return None


class EmbeddingGraph(nn.Module):
    """``(input_ids, attention_mask) -> (batch, hidden)`` pooled states, as ``TorchRuntime.embed``.

    ``module`` is registered whole (the parameters become the graph's initializers); last-token
    pooling on a decoder goes through :class:`LastPositionDecoder`, which shares its parameters.
    """

    def __init__(self, module: nn.Module, pooling: str, *, causal: bool) -> None:
        super().__init__()
        self.module: Any = module
        self.pooling = Pooling(pooling).value
        self.causal = causal
        use_tail = causal and self.pooling == Pooling.LASTTOKEN.value
        self.tail = LastPositionDecoder(module) if use_tail else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.tail is not None:
            return self.tail(input_ids, attention_mask)  # (B, H)
        extra: dict[str, Any] = {}
        if self.causal:  # positions count real tokens only, as TorchRuntime
            extra = {"position_ids": position_ids_from_mask(attention_mask), "use_cache": False}
        hidden = self.module(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if self.pooling == Pooling.LASTTOKEN.value:  # no data-dependent shortcut in a traced graph
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return hidden[rows, last_token_index(attention_mask)]  # (B, H)
        return pool(hidden, attention_mask, self.pooling)  # (B, H)


class LastStateGraph(nn.Module):
    """``(input_ids, attention_mask) -> (batch, hidden)``: the final state at the last real
    position of a causal LM, as ``TorchRuntime.last_position_states``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module: Any = module
        self.tail = LastPositionDecoder(module)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tail(input_ids, attention_mask)  # (B, H)


def _example_inputs(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of different lengths, one left-padded: no axis may specialise to 0 or 1."""
    ids = torch.arange(6, dtype=torch.long).reshape(2, 3) % vocab  # (2, 3)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]], dtype=torch.long)  # (2, 3)
    return ids, mask


@contextlib.contextmanager
def _eager_attention(module: nn.Module) -> Iterator[None]:
    """Export with the model's eager attention (restored after); used for encoders.

    SDPA exports as a "safe softmax": per layer, ``Where`` on the mask and ``Where(IsNaN(p), 0, p)``
    over the whole (batch, heads, L, L) score tensor, which cost all-MiniLM-L6-v2 a third of its
    ONNX Runtime time (benchmarks/ort_attention_profile.py: 8.9 s against 7.2 s of kernel time).
    Eager attention adds one additive mask. Decoders keep SDPA: their eager export with left
    padding differed from torch by 2e-3 (not investigated yet).
    """
    setter = getattr(module, "set_attn_implementation", None)
    previous = getattr(getattr(module, "config", None), "_attn_implementation", None)
    if setter is None or previous in (None, "eager"):
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(previous)


def export_graph(
    module: nn.Module,
    out: Path,
    *,
    kind: str,
    pooling: str | None = None,
    causal: bool = True,
    opset: int | None = None,
    external_data: bool | None = None,
) -> GraphInfo:
    """Write ``out/model.onnx`` for ``module`` (fp32, CPU) and return what it computes.

    ``external_data``: weights in ``model.onnx.data`` beside the graph; ``None`` decides by size
    (from 1 GiB of weights: one protobuf file cannot pass 2 GB, and Qwen3-0.6B is 2.4 GB in fp32).
    """
    (onnx,) = require_onnx("onnx")
    require_onnx("onnxscript")
    reason = export_support(module)
    if reason is not None:
        raise ValueError(f"cannot export this model to ONNX: {reason}")
    config: Any = module.config
    if kind == "embedder":
        if pooling is None:
            raise ValueError("an embedder graph needs its pooling")
        graph: nn.Module = EmbeddingGraph(module, pooling, causal=causal)
        output = EMBEDDING_OUTPUT
        last_position = getattr(graph, "tail", None) is not None
    elif kind == "reranker":
        graph, output, last_position = LastStateGraph(module), STATE_OUTPUT, True
    else:
        raise ValueError(f"kind must be 'embedder' or 'reranker', got {kind!r}")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    ids, mask = _example_inputs(int(config.vocab_size))
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    graph.eval()
    with (
        torch.inference_mode(False),
        torch.no_grad(),
        warnings.catch_warnings(),
        _eager_attention(module) if not causal else contextlib.nullcontext(),
    ):
        # torch's exporter trips over its own deprecation (pytree LeafSpec) while it copies specs
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        program = torch.onnx.export(
            graph,
            (),
            kwargs={"input_ids": ids, "attention_mask": mask},
            input_names=list(INPUT_NAMES),
            output_names=[output],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dims,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    out.mkdir(parents=True, exist_ok=True)
    external = weights >= 1 << 30 if external_data is None else external_data
    program.save(str(out / GRAPH_FILE), external_data=external)
    proto = onnx.load(str(out / GRAPH_FILE), load_external_data=False)
    opsets = {o.domain: o.version for o in proto.opset_import}
    files = sorted(p.name for p in out.iterdir() if p.name.startswith(GRAPH_FILE))
    return GraphInfo(
        kind=kind,
        output=output,
        pooling=Pooling(pooling).value if kind == "embedder" and pooling else None,
        model_type=str(config.model_type),
        hidden_size=int(config.hidden_size),
        vocab_size=int(module.get_input_embeddings().num_embeddings),  # type: ignore[operator]
        last_position=last_position,
        opset=int(opsets.get("", opsets.get("ai.onnx", 0))),
        inputs=tuple(i.name for i in proto.graph.input),
        outputs=tuple(o.name for o in proto.graph.output),
        files=tuple(files),
    )


# ---------------------------------------------------------------------------- export files
def save_head_rows(directory: Path, rows: dict[int, torch.Tensor]) -> None:
    """Keep LM-head rows by token id beside the graph (``lm_head_rows.safetensors``)."""
    from safetensors.torch import save_file

    save_file(
        {str(t): r.detach().float().contiguous() for t, r in rows.items()}, str(directory / HEAD_ROWS_FILE)
    )


def load_head_rows(directory: Path) -> dict[int, torch.Tensor]:
    """The rows :func:`save_head_rows` wrote; none when the file is absent (an embedder)."""
    from safetensors.torch import load_file

    path = directory / HEAD_ROWS_FILE
    return {int(t): r for t, r in load_file(str(path)).items()} if path.is_file() else {}


def graph_sha256(directory: Path, files: Sequence[str]) -> str:
    """sha256 over the graph's files (the graph and any external weights), in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        with open(directory / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- runtime
def session_options(threads: int | None = None) -> Any:
    """CPU session options: ``threads`` intra-op threads (default torch's count, which
    ``ModelSpec.threads`` sets), one inter-op thread, every graph optimisation on."""
    (ort,) = require_onnx("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxRuntime:
    """An exported graph (see the module docstring) on ONNX Runtime's CPU execution provider.

    ``head`` holds LM-head rows by token id (a reranker's ``no``/``yes``) for ``head_logits``.
    Outputs are float32 CPU torch tensors. ``run`` is thread-safe (ONNX Runtime sessions are), so
    one runtime serves many threads. No reusable prefix cache: the reranker runs inputs in full.
    """

    supports_prefix_cache = False

    def __init__(
        self,
        graph: str | Path,
        info: GraphInfo,
        *,
        head: dict[int, torch.Tensor] | None = None,
        threads: int | None = None,
        backend: str = "onnx",
    ) -> None:
        (ort,) = require_onnx("onnxruntime")
        if backend not in ONNX_BACKENDS:
            raise ValueError(f"OnnxRuntime backend must be one of {list(ONNX_BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.info = info
        self.graph = Path(graph)
        self.head = dict(head or {})
        self.session = ort.InferenceSession(
            str(self.graph), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES or len(self.session.get_outputs()) != 1:
            raise ValueError(
                f"{self.graph}: expected inputs {list(INPUT_NAMES)} and one output, got inputs {list(names)} "
                f"and outputs {[o.name for o in self.session.get_outputs()]}"
            )

    # ------------------------------------------------------------------ facts
    @property
    def hidden_size(self) -> int:
        return self.info.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    # ------------------------------------------------------------------ running
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The graph's one output for a padded batch: ``(batch, hidden)`` float32."""
        feeds = {
            "input_ids": input_ids.detach().cpu().numpy().astype(np.int64, copy=False),
            "attention_mask": attention_mask.detach().cpu().numpy().astype(np.int64, copy=False),
        }
        (out,) = self.session.run(None, feeds)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))  # (B, H)

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str | None
    ) -> torch.Tensor:
        info = self.info
        if info.output != EMBEDDING_OUTPUT:
            raise ValueError(
                f"this ONNX graph is a {info.kind}'s: it gives last-position states, not embeddings"
            )
        if pooling is None:
            raise ValueError(
                f"the ONNX graph returns pooled embeddings (pooling {info.pooling!r}), not token states; "
                "token states (pooling=None) need backend='torch'"
            )
        if Pooling(pooling).value != info.pooling:
            raise ValueError(
                f"this ONNX graph pools with {info.pooling!r}, not {pooling!r}; export again from a model "
                f"loaded with pooling={pooling!r}, or use backend='torch'"
            )
        return self.run(input_ids, attention_mask)  # (B, H)

    def last_position_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.info.output == STATE_OUTPUT or (self.info.last_position and self.info.pooling == "lasttoken"):
            return self.run(input_ids, attention_mask)  # (B, H)
        raise ValueError(
            f"this ONNX graph gives {self.info.pooling!r}-pooled embeddings, not last-position states; "
            "export the model as a reranker (--kind reranker) or use backend='torch'"
        )

    def head_logits(self, states: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
        missing = [t for t in token_ids if t not in self.head]
        if missing:
            raise ValueError(
                f"the ONNX export keeps LM-head rows for tokens {sorted(self.head)} only, not {missing}; "
                "the reranker's no/yes rows are kept by `embedforge export --kind reranker`"
            )
        rows = torch.stack([self.head[t] for t in token_ids])  # (k, H)
        return (states @ rows.T).float()  # (B, k)

    def build_prefix_cache(self, prefix_ids: Sequence[int]) -> Any:
        raise NotImplementedError("the onnx runtime has no prefix cache (supports_prefix_cache is False)")

    def states_after_prefix(
        self, cache: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError("the onnx runtime has no prefix cache (supports_prefix_cache is False)")

    def __repr__(self) -> str:
        return f"OnnxRuntime({str(self.graph)!r}, backend={self.backend!r}, output={self.info.output!r})"


__all__ = [
    "EMBEDDING_OUTPUT",
    "GRAPH_FILE",
    "HEAD_ROWS_FILE",
    "INPUT_NAMES",
    "ONNX_BACKENDS",
    "STATE_OUTPUT",
    "SUPPORTED_MODEL_TYPES",
    "EmbeddingGraph",
    "GraphInfo",
    "LastStateGraph",
    "OnnxRuntime",
    "export_graph",
    "export_support",
    "require_onnx",
    "session_options",
]
