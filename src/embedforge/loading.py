"""Finding, checking and loading checkpoints: local directories or Hub ids.

One place decides the device and dtype, refuses pickle weights unless the caller opts in, never
enables ``trust_remote_code`` by default, and reads a checkpoint's sentence-transformers files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded as asked (missing files, pickle-only weights, bad config)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Default fp32 on CPU (bf16 matmuls are very slow on CPUs without AMX), bf16 on accelerators.

    fp16 only when asked: the 8B model produces NaN in fp16.
    """
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype {dtype} is not supported; use one of float32, bfloat16, float16")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {sorted(set(_DTYPES))} or 'auto'")
    return _DTYPES[dtype]


def resolve_checkpoint(name_or_path: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local directory as it is, or a Hub id downloaded (or found in the local Hub cache)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise FileNotFoundError(f"{name!r} is a file; pass a model directory or a Hub id")
    if re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", name) is None or name.startswith("."):
        raise FileNotFoundError(
            f"model directory {name!r} does not exist; pass an existing local model directory or a Hub id "
            "like 'Qwen/Qwen3-Embedding-0.6B'"
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            name,
            revision=revision,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*", "2_Normalize/*"],
        )
    except Exception as exc:  # network, auth or missing repo: report the id and the cause
        raise FileNotFoundError(
            f"could not fetch {name!r} from the Hub ({type(exc).__name__}: {exc}); offline, pass the path "
            "of a local copy of the checkpoint instead"
        ) from exc
    return Path(local)


def check_weights(path: Path, *, allow_pickle: bool) -> str:
    """Return which weight format will be loaded; refuse pickle unless ``allow_pickle``."""
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json: not a transformers checkpoint")
    if any((path / f).exists() for f in SAFETENSORS_FILES):
        return "safetensors"
    if any((path / f).exists() for f in PICKLE_FILES):
        if not allow_pickle:
            raise CheckpointError(
                f"{path} holds only pickle weights (pytorch_model.bin), which can run arbitrary code when "
                "loaded; convert them to safetensors or pass allow_pickle=True if you trust the file"
            )
        return "pickle"
    raise CheckpointError(
        f"{path} has no weights: expected one of {', '.join(SAFETENSORS_FILES)} "
        f"(or, with allow_pickle=True, {', '.join(PICKLE_FILES)})"
    )


@dataclass
class SentenceTransformersLayout:
    """What a checkpoint's sentence-transformers files say (all optional)."""

    pooling: str | None = None
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    max_seq_length: int | None = None
    present: bool = False


_POOL_NAMES = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max", "last_token": "lasttoken"}
_POOL_KEYS = {
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def read_sentence_transformers(path: Path) -> SentenceTransformersLayout:
    """Read ``modules.json``, the Pooling config, ``config_sentence_transformers.json`` prompts and
    ``sentence_bert_config.json``'s max length."""
    layout = SentenceTransformersLayout()
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return layout
    layout.present = True
    for module in json.loads(modules_file.read_text()):
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            cfg = json.loads((path / module["path"] / "config.json").read_text())
            if isinstance(cfg.get("pooling_mode"), str):  # sentence-transformers >= 6
                modes = [_POOL_NAMES.get(cfg["pooling_mode"], cfg["pooling_mode"])]
            else:  # older layout: one boolean flag per mode
                modes = [name for key, name in _POOL_KEYS.items() if cfg.get(key)]
            if len(modes) != 1 or modes[0] not in _POOL_KEYS.values():
                raise CheckpointError(
                    f"{path / module['path']}: pooling {modes} is not supported; embedforge supports exactly one "
                    f"of {sorted(_POOL_KEYS.values())}"
                )
            layout.pooling = modes[0]
        elif kind.endswith("Normalize"):
            layout.normalize = True
    st_cfg = path / "config_sentence_transformers.json"
    if st_cfg.exists():
        layout.prompts = dict(json.loads(st_cfg.read_text()).get("prompts") or {})
    sb_cfg = path / "sentence_bert_config.json"
    if sb_cfg.exists():
        layout.max_seq_length = json.loads(sb_cfg.read_text()).get("max_seq_length")
    tok_cfg = path / "tokenizer_config.json"
    if layout.max_seq_length is None and tok_cfg.exists():  # sentence-transformers >= 6 keeps it here
        limit = json.loads(tok_cfg.read_text()).get("model_max_length")
        if isinstance(limit, int) and limit < 1_000_000:  # transformers writes ~1e30 for "no limit"
            layout.max_seq_length = limit
    return layout


def write_sentence_transformers(
    path: Path,
    *,
    pooling: str,
    normalize: bool,
    prompts: dict[str, str],
    max_seq_length: int,
    hidden: int,
) -> None:
    """Write the sentence-transformers files of a checkpoint (Transformer -> Pooling [-> Normalize]),
    the layout of the Hub's Qwen3-Embedding checkpoints."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (path / "2_Normalize").mkdir(exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "1_Pooling").mkdir(exist_ok=True)
    pool_cfg: dict[str, object] = {"word_embedding_dimension": hidden}
    pool_cfg.update({key: name == pooling for key, name in _POOL_KEYS.items()})
    pool_cfg.update({"pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False})
    pool_cfg["include_prompt"] = True
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg, indent=2))
    st_cfg = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (path / "config_sentence_transformers.json").write_text(json.dumps(st_cfg, indent=2))
    sb_cfg = {"max_seq_length": max_seq_length, "do_lower_case": False}
    (path / "sentence_bert_config.json").write_text(json.dumps(sb_cfg, indent=2))


_DECODER_TYPES = {"qwen3", "qwen2", "qwen3_moe", "llama", "mistral", "gemma", "gemma2", "gemma3_text", "phi3"}


def is_decoder_config(config) -> bool:
    """A causal LM (Qwen3 and friends) rather than a bidirectional encoder."""
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "model_type", "") in _DECODER_TYPES:
        return True
    return bool(getattr(config, "is_decoder", False)) or any(a.endswith("ForCausalLM") for a in archs)


def fingerprint(path: Path, *extra: object) -> str:
    """A stable id of a checkpoint's config and weights plus ``extra`` settings, for caches.

    Weights are identified by file name, size, modification time and the bytes at both ends of
    each file (hashing many GB on every load would cost more than the cache saves).
    """
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        f = path / name
        if not f.is_file() or not name.endswith((".json", ".safetensors", ".bin")):
            continue
        st = f.stat()
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if st.st_size > 1 << 21:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    h.update(repr(extra).encode())
    return h.hexdigest()[:16]
