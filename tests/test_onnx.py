"""Pruned encoders and decoders, reloaded from their checkpoints, export to ONNX and run in ONNX Runtime (issue 22).

`torch.onnx.export(model, (input_ids,), path, dynamo=True)` (torch's own exporter; optimum-onnx pins transformers 4.57
and cannot run beside transformers 5). The pruned export must match its PyTorch model as closely as the dense
export matches its own.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_bert, tiny_llama
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.filterwarnings("ignore")

INPUT_IDS = torch.arange(1, 13).reshape(1, 12)
SENTENCES = [s for s in TEXT.split(".") if s][:20]


def _onnx_difference(model: torch.nn.Module, path) -> float:
    """Largest |ONNX Runtime logits - PyTorch logits| of `model` exported to `path`."""
    model.eval()
    model.config.use_cache = False
    torch.onnx.export(model, (INPUT_IDS,), str(path), input_names=["input_ids"], output_names=["logits"], dynamo=True)
    session = ort.InferenceSession(str(path))
    exported = torch.from_numpy(session.run(None, {"input_ids": INPUT_IDS.numpy()})[0])
    with torch.no_grad():
        return (exported - model(INPUT_IDS).logits).abs().max().item()


def _tolerance(dense_difference: float) -> float:
    return max(10 * dense_difference, 1e-6)


def test_pruned_bert_classifier_exports(tmp_path):
    """Per-layer head counts (the plugin's own checkpoint format) export like the dense model."""
    dense = _onnx_difference(tiny_bert(), tmp_path / "dense.onnx")
    pruner = PrunerForSequenceClassification(tiny_bert(), make_tokenizer())
    pruner.prune(
        PruningConfig(
            target="structured", sparsity=0.4, allocation="global", reconstruction="liar", num_samples=8, seqlen=32
        ),
        dataset=SENTENCES,
        show_progress=False,
    )
    assert len({layer["num_attention_heads"] for layer in pruner.summary["layers"]}) > 1
    pruner.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned")
    assert _onnx_difference(reloaded, tmp_path / "pruned.onnx") <= _tolerance(dense)


def test_heterogeneous_llama_exports(tmp_path):
    dense = _onnx_difference(tiny_llama(), tmp_path / "dense.onnx")
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    pruner.prune(
        PruningConfig(
            target="structured", sparsity=0.3, allocation="global", reconstruction="liar", num_samples=4, seqlen=32
        ),
        dataset=[TEXT],
        show_progress=False,
    )
    pruner.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert type(reloaded).__name__ == "PrunedLlamaForCausalLM"
    assert _onnx_difference(reloaded, tmp_path / "pruned.onnx") <= _tolerance(dense)
