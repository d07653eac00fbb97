"""LoRA (peft) on the model a wrapper holds, in place, so the wrapper's forward stays unchanged.

``inject_adapter_in_model`` adds the adapters without wrapping the model in a ``PeftModel``
(the core ``Embedder``/``Reranker`` call ``model(...)`` / ``model.base_model(...)`` directly).
Saved models are always merged (``W + scale * B @ A``), so they load as plain checkpoints;
the adapter weights are saved beside them for resuming.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from embedforge.training.config import LoraSettings

ADAPTER_FILE = "lora_adapter.safetensors"
ADAPTER_NAME = "default"


def apply_lora(model: torch.nn.Module, settings: LoraSettings) -> list[torch.nn.Parameter]:
    """Inject LoRA adapters, freeze every other weight, return the trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft annotates int but scales by any number
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
    )
    inject_adapter_in_model(cfg, model, adapter_name=ADAPTER_NAME)
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
        if p.requires_grad:
            trainable.append(p)
    if not trainable:
        raise ValueError(
            f"LoRA target_modules {settings.target_modules!r} matched no module of {type(model).__name__}"
        )
    return trainable


def has_lora(model: torch.nn.Module) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if "lora_" in n}


def save_adapter(model: torch.nn.Module, directory: Path) -> None:
    save_file(lora_state_dict(model), str(directory / ADAPTER_FILE))


def load_adapter(model: torch.nn.Module, directory: Path) -> None:
    """Load saved adapter weights into a model that already has the same adapters injected."""
    state = load_file(str(directory / ADAPTER_FILE))
    params = dict(model.named_parameters())
    missing = sorted(set(k for k in params if "lora_" in k) - set(state))
    if missing or any(k not in params for k in state):
        raise ValueError(
            f"adapter in {directory} does not match the model's LoRA layers (missing {missing[:3]})"
        )
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every LoRA layer folded into its base weight and removed."""
    from peft.tuners.lora import LoraLayer

    clone = copy.deepcopy(model)
    for name, module in list(clone.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(adapter_names=[ADAPTER_NAME])
            parent_name, _, child = name.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            setattr(parent, child, module.get_base_layer())
    return clone


def save_merged(wrapper: Any, directory: Path) -> None:
    """``wrapper.save_pretrained`` with LoRA merged in (plus the adapter for resuming)."""
    if not has_lora(wrapper.model):
        wrapper.save_pretrained(directory)
        return
    view = copy.copy(wrapper)  # shallow: shares the tokenizer, swaps the model
    view.model = merged_copy(wrapper.model)
    view.save_pretrained(directory)
    save_adapter(wrapper.model, Path(directory))
