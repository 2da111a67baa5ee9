"""The QLoRA merge made to equal the trained model (experiments.train.qlora_merge and the merge
config of experiments.train.merge): which weights go back to their base values, the 4-bit settings
replayed, and the restore on real safetensors files. End to end (a real tiny QLoRA run whose merged
model equals the peft model on the 4-bit base): tests/test_agree.py."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from experiments.train import merge
from experiments.train.qlora_merge import QUANTIZED_WEIGHTS, main, restore, to_restore

QUANTIZED = {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"}
ADAPTER = ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
           "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
           "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"]


def test_only_weights_training_kept_in_full_precision_go_back():
    keys = sorted(QUANTIZED | {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                               "model.layers.1.mlp.up_proj.weight"})
    assert to_restore(keys, QUANTIZED, ADAPTER) == ["lm_head.weight", "model.embed_tokens.weight",
                                                    "model.layers.1.mlp.up_proj.weight", "model.norm.weight"]
    # an adapter that trains lm_head itself (modules_to_save) keeps the merged lm_head
    saved = ADAPTER + ["base_model.model.lm_head.modules_to_save.default.weight"]
    assert "lm_head.weight" not in to_restore(keys, QUANTIZED, saved)
    # layer 1 is not layer 11's prefix
    assert "model.layers.1.mlp.up_proj.weight" in to_restore(
        keys, QUANTIZED, ["base_model.model.model.layers.11.mlp.up_proj.lora_A.weight"])


def _folder(path, tensors):
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def test_restore_puts_back_the_rounded_embeddings_and_leaves_merged_weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(8, 4, generator=g) for k in ("model.embed_tokens.weight", "lm_head.weight",
                                                         "model.layers.0.self_attn.q_proj.weight")}
    base["model.norm.weight"] = torch.ones(4)
    merged = {k: v.clone() for k, v in base.items()}
    merged["model.embed_tokens.weight"] += 0.01                 # Axolotl's NF4 rounding
    merged["lm_head.weight"] -= 0.25
    merged["model.layers.0.self_attn.q_proj.weight"] += 1.0    # the LoRA delta on the NF4 weight
    _folder(tmp_path / "base", base)
    _folder(tmp_path / "merged", merged)
    _folder(tmp_path / "adapter", {k: torch.zeros(2, 2) for k in ADAPTER[:2]})
    record = tmp_path / QUANTIZED_WEIGHTS
    record.write_text(json.dumps({"weights": ["model.layers.0.self_attn.q_proj.weight"]}))

    out = restore(tmp_path / "merged", str(tmp_path / "base"), record, tmp_path / "adapter")
    assert sorted(out["restored"]) == ["lm_head.weight", "model.embed_tokens.weight"]  # norm was untouched
    assert out["max_abs_change_undone"] == pytest.approx(0.25)
    now = load_file(tmp_path / "merged" / "model.safetensors")
    for k in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(now[k], base[k]), k
    assert torch.equal(now["model.layers.0.self_attn.q_proj.weight"], merged["model.layers.0.self_attn.q_proj.weight"])
    # a second pass finds nothing left to undo
    assert restore(tmp_path / "merged", str(tmp_path / "base"), record, tmp_path / "adapter")["restored"] == []


def test_restore_refuses_a_base_of_another_shape(tmp_path, capsys):
    _folder(tmp_path / "base", {"lm_head.weight": torch.zeros(8, 4)})
    _folder(tmp_path / "merged", {"lm_head.weight": torch.ones(4, 8)})
    _folder(tmp_path / "adapter", {ADAPTER[0]: torch.zeros(2, 2)})
    (tmp_path / "q.json").write_text(json.dumps({"weights": []}))
    with pytest.raises(SystemExit, match="lm_head.weight has shape"):
        restore(tmp_path / "merged", str(tmp_path / "base"), tmp_path / "q.json", tmp_path / "adapter")
    assert main(["too", "few"]) == 2 and "python -m experiments.train.qlora_merge" in capsys.readouterr().err


def test_merge_config_replays_the_recorded_4bit_settings(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "axolotl.yaml").write_text(yaml.safe_dump({"adapter": "qlora", "load_in_4bit": True,
                                                      "bnb_config_kwargs": {"bnb_4bit_quant_storage": "bfloat16"}}))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # no record (a LoRA run, or a QLoRA run trained before the record existed): the run's own file
    assert merge.quantized_record(run) is None
    assert merge.merge_config(run, None, scratch) == run / "axolotl.yaml"
    (run / "adapter" / QUANTIZED_WEIGHTS).write_text(json.dumps(
        {"quant_type": "nf4", "double_quant": True, "blocksize": 64, "weights": ["x.weight"]}))
    record = merge.quantized_record(run)  # the run's record, also when a checkpoint is merged
    assert record == run / "adapter" / QUANTIZED_WEIGHTS
    path = merge.merge_config(run, record, scratch)
    assert path.parent == scratch
    assert yaml.safe_load(path.read_text())["bnb_config_kwargs"] == {
        "bnb_4bit_quant_storage": "bfloat16", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
        "blocksize": 64}
    assert "double_quant" not in yaml.safe_load((run / "axolotl.yaml").read_text())["bnb_config_kwargs"]
