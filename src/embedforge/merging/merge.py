"""Merging checkpoints (stage 3 of the Qwen3 recipe), streaming tensor by tensor from safetensors.

Order of the N-way slerp: checkpoints are folded left to right,
``m_1 = c_1``, ``m_k = slerp(m_{k-1}, c_k, t_k)``. Without explicit ``t`` the fold uses
``t_k = 1/k`` (each checkpoint gets an equal share along the way; for two checkpoints this is the
midpoint ``t = 0.5``). ``t`` may give one value (two checkpoints) or N-1 values (one per fold step).
``linear`` is the weighted mean ``sum_k w_k c_k / sum_k w_k`` (equal weights by default).

Only the tensors of the fold being computed are held in memory: one tensor per checkpoint and
its running merge. Keys, shapes and dtypes must agree across checkpoints. A LoRA adapter
directory (peft ``adapter_config.json``) is merged into its base model first.

A merge never touches its inputs and writes all or nothing (:mod:`embedforge.merging.output`):
an output that is, lies inside or contains an input is refused; every input's safetensors
headers are checked against their files before anything is written; the output is built next to
its final path and renamed into place once complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from tqdm.auto import tqdm

from embedforge.merging.output import (
    MERGE_METADATA_KEY,
    MergeError,
    check_output,
    checkpoint_inputs,
    staged_output,
)
from embedforge.merging.safetensors_io import (
    CheckpointReader,
    StreamingWriter,
    read_header,
    tensor_index,
    torch_dtype,
    weight_files,
)
from embedforge.merging.slerp import slerp


class MergeMethod(str, Enum):
    SLERP = "slerp"
    LINEAR = "linear"


@dataclass
class MergeResult:
    """What :func:`merge_checkpoints` wrote."""

    output_dir: Path
    method: MergeMethod
    n_tensors: int
    parents: list[str]
    t: list[float] | None
    weights: list[float] | None


def merge_tensors(
    tensors: Sequence[torch.Tensor],
    method: MergeMethod | str,
    *,
    t: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Merge one tensor of each checkpoint (pure function; the rule of the module docstring)."""
    method = MergeMethod(method)
    if len(tensors) < 2:
        raise ValueError(f"merging needs at least two tensors, got {len(tensors)}")
    if method is MergeMethod.SLERP:
        ts = fold_ts(len(tensors), t)
        out = tensors[0]
        for t_k, nxt in zip(ts, tensors[1:], strict=True):
            out = slerp(out, nxt, t_k)
        return out
    ws = [1.0] * len(tensors) if weights is None else [float(w) for w in weights]
    if not tensors[0].is_floating_point():
        return slerp(tensors[0], tensors[1], 0.5)  # equality check + copy for integer buffers
    acc = torch.zeros(tensors[0].shape, dtype=torch.float64)
    for w, x in zip(ws, tensors, strict=True):
        acc += w * x.double()
    return (acc / sum(ws)).to(tensors[0].dtype)


def fold_ts(n: int, t: Sequence[float] | None) -> list[float]:
    """The interpolation factor of each of the n-1 fold steps."""
    if t is None:
        return [1.0 / k for k in range(2, n + 1)]
    ts = [float(x) for x in t]
    if len(ts) != n - 1:
        raise ValueError(
            f"slerp of {n} checkpoints needs {n - 1} t values (one per fold step), got {len(ts)}: {ts}"
        )
    bad = [x for x in ts if not 0.0 <= x <= 1.0]
    if bad:
        raise ValueError(f"t values must be in [0, 1], got {bad}")
    return ts


def merge_state_dicts(
    states: Sequence[dict[str, torch.Tensor]],
    method: MergeMethod | str,
    *,
    t: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
) -> dict[str, torch.Tensor]:
    """In-memory variant of :func:`merge_checkpoints` for state dicts (same checks, same rule)."""
    check_layouts(
        [{k: (tuple(v.shape), str(v.dtype)) for k, v in s.items()} for s in states],
        [str(i) for i in range(len(states))],
    )
    return {k: merge_tensors([s[k] for s in states], method, t=t, weights=weights) for k in sorted(states[0])}


WRAPPER_PREFIX = "model."  # *ForCausalLM checkpoints nest the base model (as the Hub ships Qwen3)


def align_names(reference: list[str], other: list[str]) -> dict[str, str]:
    """Map each tensor name of the first checkpoint to the same tensor's name in another one.

    Identical names map to themselves; otherwise a ``model.`` prefix may be present on one side
    only (a Hub ``Qwen3ForCausalLM`` checkpoint against a saved ``Qwen3Model`` embedder). Names
    that cannot be matched are left out, so :func:`check_layouts` reports them.
    """
    have = set(other)
    if set(reference) == have:
        return {n: n for n in reference}
    out = {}
    for n in reference:
        for cand in (n, n.removeprefix(WRAPPER_PREFIX), WRAPPER_PREFIX + n):
            if cand in have:
                out[n] = cand
                break
        else:
            out[n] = n  # missing: reported by check_layouts
    return out


def check_layouts(layouts: Sequence[dict[str, tuple[tuple[int, ...], str]]], names: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the first key, shape or dtype that differs between checkpoints."""
    ref = layouts[0]
    for layout, name in zip(layouts[1:], names[1:], strict=True):
        missing, extra = sorted(set(ref) - set(layout)), sorted(set(layout) - set(ref))
        if missing or extra:
            raise ValueError(
                f"{name} and {names[0]} hold different tensors: missing {missing[:5]}, extra {extra[:5]}"
            )
        for key, (shape, dtype) in ref.items():
            if layout[key] != (shape, dtype):
                raise ValueError(
                    f"tensor {key!r}: {names[0]} has {shape} {dtype}, {name} has {layout[key][0]} {layout[key][1]}"
                )


def merge_lora_adapter(adapter_dir: Path, out_dir: Path) -> Path:
    """Merge a peft LoRA adapter into its base model and save the result (safetensors) in ``out_dir``."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    cfg = PeftConfig.from_pretrained(str(adapter_dir))
    base_path = Path(cfg.base_model_name_or_path)
    if not base_path.is_dir():
        raise FileNotFoundError(
            f"the base model {cfg.base_model_name_or_path!r} of adapter {adapter_dir} is not a local directory"
        )
    arch = (AutoConfig.from_pretrained(base_path).architectures or [""])[0]
    cls = AutoModelForCausalLM if arch.endswith("ForCausalLM") else AutoModel
    base = cls.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in base_path.iterdir():  # tokenizer, sentence-transformers files ...
        if f.is_file() and not f.name.startswith(("model", "pytorch_model")):
            shutil.copy(f, out_dir / f.name)
        elif f.is_dir():
            shutil.copytree(f, out_dir / f.name, dirs_exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def check_weight_files(checkpoint: Path) -> None:
    """Check the safetensors headers of everything a merge will read for ``checkpoint`` (for a LoRA
    adapter: its weights and its local base model's), so a damaged file fails before any writing."""
    adapter = checkpoint / "adapter_config.json"
    if not adapter.exists():
        tensor_index(checkpoint)
        return
    if (checkpoint / "adapter_model.safetensors").exists():
        read_header(checkpoint / "adapter_model.safetensors")
    for base in checkpoint_inputs(checkpoint)[1:]:
        tensor_index(base)


def copy_side_files(first: Path, out: Path) -> None:
    """Copy the first checkpoint's files other than its weights (config, tokenizer,
    sentence-transformers layout) into ``out``; training ``checkpoints/`` are left out."""
    weight_names = {f.name for f in weight_files(first)} | {"model.safetensors.index.json"}
    for f in first.iterdir():
        if f.is_file() and f.name not in weight_names and not f.name.startswith("adapter_"):
            shutil.copy(f, out / f.name)
        elif f.is_dir() and not (out / f.name).exists() and f.name not in ("checkpoints",):
            shutil.copytree(f, out / f.name)


def merge_checkpoints(
    checkpoints: Sequence[str | Path],
    out_dir: str | Path,
    *,
    method: MergeMethod | str = MergeMethod.SLERP,
    t: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
    show_progress: bool = False,
) -> MergeResult:
    """Merge N >= 2 checkpoint directories into ``out_dir`` (a single ``model.safetensors`` plus
    the first checkpoint's other files: config, tokenizer, sentence-transformers layout).

    ``out_dir`` must not be, lie inside or contain an input, and may hold only nothing or an
    earlier merge output (replaced as a whole); otherwise :class:`MergeError` is raised before
    anything is read. A damaged input file raises ``CorruptCheckpointError`` naming it. Either
    way, and on any failure midway, nothing is left at ``out_dir`` or next to it.
    """
    method = MergeMethod(method)
    if len(checkpoints) < 2:
        raise ValueError(f"merging needs at least two checkpoints, got {len(checkpoints)}")
    if weights is not None and (len(weights) != len(checkpoints) or sum(weights) <= 0 or min(weights) < 0):
        raise ValueError(
            f"weights must be {len(checkpoints)} non-negative numbers with a positive sum, got {list(weights)}"
        )
    if method is MergeMethod.SLERP:
        ts = fold_ts(len(checkpoints), t)
    elif t is not None:
        raise ValueError("t applies to slerp only; linear takes weights")
    out = Path(out_dir)
    sources = [Path(c) for c in checkpoints]
    for p, c in zip(sources, checkpoints, strict=True):
        if not p.is_dir():
            raise FileNotFoundError(f"checkpoint {str(c)!r} is not a directory")
    check_output(out, [d for p in sources for d in checkpoint_inputs(p)])
    for p in sources:
        check_weight_files(p)
    with staged_output(out) as build:
        paths = []
        for i, p in enumerate(sources):
            if (p / "adapter_config.json").exists():
                p = merge_lora_adapter(p, build.parent / f"lora-{i}")
            paths.append(p)
        indices = [tensor_index(p) for p in paths]
        names = [sorted(indices[0])]  # names[i][j]: checkpoint i's name of the first one's j-th tensor
        for ix, c in zip(indices[1:], checkpoints[1:], strict=True):
            mapping = align_names(names[0], list(ix))
            extra = sorted(set(ix) - set(mapping.values()))
            if extra:
                raise ValueError(f"{c} holds tensors that {checkpoints[0]} lacks: {extra[:5]}")
            names.append([mapping[n] for n in names[0]])
        check_layouts(
            [
                {
                    ref: (ix[own].shape, ix[own].dtype)
                    for ref, own in zip(names[0], ns, strict=True)
                    if own in ix
                }
                for ix, ns in zip(indices, names, strict=True)
            ],
            [str(c) for c in checkpoints],
        )
        layout = {name: (info.shape, torch_dtype(info.dtype)) for name, info in sorted(indices[0].items())}
        meta = {
            "format": "pt",
            MERGE_METADATA_KEY: json.dumps(
                {"method": method.value, "parents": [str(c) for c in checkpoints]}
            ),
        }
        readers: list[CheckpointReader] = []
        try:
            for p in paths:
                readers.append(CheckpointReader(p))
            with StreamingWriter(build / "model.safetensors", layout, meta) as writer:
                for j, name in enumerate(
                    tqdm(names[0], desc=f"{method.value} merge", disable=not show_progress)
                ):
                    parts = [r.get(ns[j]) for r, ns in zip(readers, names, strict=True)]
                    merged = merge_tensors(
                        parts, method, t=ts if method is MergeMethod.SLERP else None, weights=weights
                    )
                    writer.write(name, merged)
            copy_side_files(paths[0], build)
        except OSError as exc:  # disk full, permissions ...: nothing is left behind (staged_output)
            raise MergeError(f"writing the merge into {out} failed, nothing was written: {exc}") from exc
        finally:
            for r in readers:
                r.close()
    return MergeResult(
        out,
        method,
        len(layout),
        [str(c) for c in checkpoints],
        ts if method is MergeMethod.SLERP else None,
        None if weights is None else list(weights),
    )
