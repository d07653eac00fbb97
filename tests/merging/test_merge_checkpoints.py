"""Streaming merge of real checkpoints on disk: the file format, the checks, merged models run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from embedforge.merging import merge_checkpoints, slerp
from embedforge.merging.safetensors_io import StreamingWriter
from embedforge.testing import make_random_qwen3


def test_streaming_writer_round_trips(tmp_path):
    tensors = {
        "a": torch.randn(3, 4),
        "b": torch.randn(5, dtype=torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).view(2, 3),
        "d": torch.tensor(2.5, dtype=torch.float16),
    }
    layout = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    with StreamingWriter(tmp_path / "x.safetensors", layout, {"format": "pt"}) as w:
        for k, v in tensors.items():
            w.write(k, v)
    back = load_file(tmp_path / "x.safetensors")
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype
        torch.testing.assert_close(back[k], v)
    with pytest.raises(ValueError, match="expected tensor 'a'"):
        with StreamingWriter(tmp_path / "y.safetensors", layout) as w:
            w.write("b", tensors["b"])


def test_slerp_merge_on_disk_matches_tensor_math_and_loads(two_parents, tmp_path):
    a, b = two_parents
    result = merge_checkpoints([a, b], tmp_path / "m", method="slerp", t=[0.3])
    assert result.n_tensors > 0 and result.t == [0.3]
    sa, sb, sm = (load_file(p / "model.safetensors") for p in (a, b, tmp_path / "m"))
    assert set(sm) == set(sa)
    for k in sa:
        torch.testing.assert_close(sm[k], slerp(sa[k], sb[k], 0.3))
    assert (tmp_path / "m" / "tokenizer.json").exists() and (tmp_path / "m" / "modules.json").exists()
    assert not (tmp_path / "m" / "model.safetensors.tmp").exists()

    from embedforge import Embedder

    texts = ["a merged model", "still embeds text"]
    merged = Embedder.from_pretrained(tmp_path / "m").encode(texts)
    parent = Embedder.from_pretrained(a).encode(texts)
    assert merged.shape == parent.shape and np.isfinite(merged).all()
    assert np.allclose(np.linalg.norm(merged, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(merged, parent)


def test_linear_merge_of_a_model_with_itself_is_identity(two_parents, tmp_path):
    a, _ = two_parents
    merge_checkpoints([a, a, a], tmp_path / "m", method="linear")
    sa, sm = load_file(a / "model.safetensors"), load_file(tmp_path / "m" / "model.safetensors")
    for k in sa:
        torch.testing.assert_close(sm[k], sa[k])


def test_reranker_merge_runs(two_parents, tmp_path, qwen3_tokenizer_dir):
    a = make_random_qwen3(tmp_path / "ra", qwen3_tokenizer_dir, seed=21)
    b = make_random_qwen3(tmp_path / "rb", qwen3_tokenizer_dir, seed=22)
    merge_checkpoints([a, b], tmp_path / "m")
    from embedforge import Reranker

    scores = Reranker.from_pretrained(tmp_path / "m").score("what is merging?", ["slerp of weights", "a cat"])
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))


def test_mismatched_checkpoints_are_refused(two_parents, tmp_path):
    a, _ = two_parents
    bad = tmp_path / "bad"
    shutil.copytree(a, bad)
    state = load_file(bad / "model.safetensors")
    key = sorted(state)[0]
    state[key] = state[key].to(torch.float16)
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        merge_checkpoints([a, bad], tmp_path / "m")
    with pytest.raises(ValueError, match="at least two"):
        merge_checkpoints([a], tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        merge_checkpoints([a, tmp_path / "nowhere"], tmp_path / "m")


def test_lora_adapter_is_merged_first(two_parents, tmp_path):
    peft = pytest.importorskip("peft", reason="peft (the [train] extra) is needed for LoRA adapters")
    from transformers import Qwen3ForCausalLM

    a, b = two_parents
    base = Qwen3ForCausalLM.from_pretrained(a)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, cfg)
    model.save_pretrained(tmp_path / "adapter")
    cfg_json = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg_json["base_model_name_or_path"] == str(a)
    merged_ref = model.merge_and_unload().state_dict()
    merge_checkpoints([tmp_path / "adapter", b], tmp_path / "m", t=[0.0])  # t=0 keeps the merged adapter
    sm = load_file(tmp_path / "m" / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(sm[key], merged_ref[key])
    assert not torch.equal(sm[key], load_file(a / "model.safetensors")[key])


def test_hub_layout_merges_with_a_saved_embedder(two_parents, tmp_path):
    """A Hub Qwen3ForCausalLM checkpoint (``model.`` names) merges with an embedder saved by
    ``Embedder.save_pretrained`` (bare Qwen3Model names); the output keeps the first's layout."""
    from embedforge import Embedder

    a, b = two_parents
    Embedder.from_pretrained(b).save_pretrained(tmp_path / "b_saved")
    merge_checkpoints([a, tmp_path / "b_saved"], tmp_path / "m", t=[0.5])
    sa, sb, sm = (
        load_file(a / "model.safetensors"),
        load_file(b / "model.safetensors"),
        load_file(tmp_path / "m" / "model.safetensors"),
    )
    assert set(sm) == set(sa)
    for k in sa:
        torch.testing.assert_close(sm[k], slerp(sa[k], sb[k], 0.5))
