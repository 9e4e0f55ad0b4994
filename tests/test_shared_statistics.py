"""One Gram matrix per distinct input, only the statistics a solver reads, and block arguments stored once."""

from __future__ import annotations

import torch
from conftest import make_tokenizer, tiny_llama

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.architectures.weights import find_weight_matrices
from optimum_prune.pipeline import weight_inputs
from optimum_prune.pipeline.layerwise import ActivationStore, BlockInput, BlockStreamer
from optimum_prune.pipeline.statistics import attach_statistics
from optimum_prune.unstructured import prunable_linears


def _layer_inputs(model, texts):
    tokenizer = make_tokenizer()
    samples = [{"input_ids": tokenizer(t, return_tensors="pt").input_ids[:, :32]} for t in texts[:3]]
    streamer = BlockStreamer(model)
    return streamer, streamer.capture(model.model.layers[0], samples)


@torch.no_grad()
def test_modules_reading_one_input_share_one_gram(texts) -> None:
    """`observe_inputs` (the sparsity run's observer) keeps one Gram matrix per distinct input, equal to the one of
    each module observed alone."""
    model = tiny_llama()
    layer = model.model.layers[0]
    streamer, inputs = _layer_inputs(model, texts)
    linears = prunable_linears(layer, [])
    matrices, _ = find_weight_matrices(layer, [])
    assert sorted(m.name for m in matrices) == sorted(linears)
    with weight_inputs.observe_inputs(layer, matrices, with_gram=True) as observed:
        streamer.run(layer, inputs, keep_outputs=False)
    shared = {name: observed.get(name)[0] for name in linears}
    alone, handles = attach_statistics(linears, with_gram=True)
    streamer.run(layer, inputs, keep_outputs=False)
    for handle in handles:
        handle.remove()

    q, k, v = (shared[f"self_attn.{p}_proj"] for p in "qkv")
    assert q is k is v
    assert shared["mlp.gate_proj"] is shared["mlp.up_proj"]
    distinct = {id(s) for s in shared.values()}
    assert len(distinct) == 4  # qkv, o, gate/up, down
    for name in linears:
        assert shared[name].count == alone[name].count
        assert torch.equal(shared[name].gram, alone[name].gram), name


def test_solvers_get_only_the_statistics_they_read(monkeypatch, texts) -> None:
    """Wanda's run accumulates no Gram matrix; SparseGPT's one per distinct input (4 per LLaMA layer, not 7)."""
    created: list[bool] = []
    original = weight_inputs.InputStatistics

    class Recording(original):
        def __init__(self, num_features, with_gram=False, device="cpu"):
            created.append(with_gram)
            super().__init__(num_features, with_gram, device)

    monkeypatch.setattr(weight_inputs, "InputStatistics", Recording)
    for method, expected in (("wanda", False), ("sparsegpt", True)):
        created.clear()
        model = tiny_llama()
        pruner = PrunerForCausalLM(model, make_tokenizer())
        config = PruningConfig(method=method, target="unstructured", sparsity=0.5, dataset=texts, seqlen=32)
        config.num_samples = 3
        pruner.prune(config, show_progress=False)
        layers = model.config.num_hidden_layers
        assert created == [expected] * (4 * layers), (method, created)


def test_activation_store_keeps_identical_arguments_once() -> None:
    store = ActivationStore()
    positions = torch.arange(8)[None]
    for i in range(5):
        mask = torch.full((1, 1, 8, 8), -1.0).triu(1)  # a fresh but equal tensor per sample
        store.append(BlockInput(torch.randn(1, 8, 4), (), {"attention_mask": mask, "position_ids": positions + i}))
    masks = {id(item.kwargs["attention_mask"]) for item in store}
    assert len(masks) == 1
    # Arguments that differ stay per sample, with their own values.
    assert [int(item.kwargs["position_ids"][0, 0]) for item in store] == [0, 1, 2, 3, 4]
