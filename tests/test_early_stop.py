"""Statistics passes that end at the last consumer of a kind (`layerwise.stopping_after`) give exactly the results of
passes run to the end of the block, for every allocation and reconstruction, with less block-forward work."""

from __future__ import annotations

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_bert, tiny_llama, tiny_mamba
from test_decoder_adapters import tiny_decoder
from transformers import AutoModelForCausalLM

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.architectures import get_adapter
from optimum_prune.pipeline.layerwise import BlockInput, BlockStreamer, run_block, stopping_after
from optimum_prune.pipeline.offload import is_offloaded
from optimum_prune.structured import prune_structured

pytestmark = [
    pytest.mark.filterwarnings("ignore:LIAR fits each pruned channel"),
    pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules"),
]

INPUT_IDS = torch.tensor([[5, 17, 33, 48, 9, 60, 71, 12, 90, 33, 41, 7]])
NUM_SAMPLES = 4
MODELS = {"llama": tiny_llama, "bert": tiny_bert, "mamba": tiny_mamba}
#: allocation -> PruningConfig fields (flap standardises the channel scores of the fluctuation criterion).
ALLOCATIONS = {
    "uniform": dict(),
    "global": dict(allocation="global"),
    "flap": dict(allocation="flap", criterion="fluctuation"),
    "obs": dict(allocation="obs"),
}


def _samples() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(4, 100, (1, 24), generator=generator)} for _ in range(NUM_SAMPLES)]


def _prune(model, config, monkeypatch, stop_early: bool, **placement):
    """Prune `model` in place; return (kept units, calls of every leaf module of the blocks, by module)."""
    monkeypatch.setattr(BlockStreamer, "stop_early", stop_early)
    adapter = get_adapter(model)
    calls: dict[torch.nn.Module, int] = {}

    def count(module, _args, _output):
        calls[module] = calls.get(module, 0) + 1

    leaves = [m for layer in adapter.layers() for m in layer.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        result = prune_structured(model, adapter, config, _samples(), show_progress=False, **placement)
    finally:
        for handle in handles:
            handle.remove()
    return result.kept_units, calls


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(INPUT_IDS).logits


def _assert_identical(stopped: torch.nn.Module, full: torch.nn.Module) -> None:
    stopped_state, full_state = stopped.state_dict(), full.state_dict()
    assert stopped_state.keys() == full_state.keys()
    for key, value in full_state.items():
        assert torch.equal(stopped_state[key], value), key
    assert torch.equal(_logits(stopped), _logits(full))


@pytest.mark.parametrize("reconstruction", ["liar", "liar_dense"])
@pytest.mark.parametrize("allocation", list(ALLOCATIONS))
@pytest.mark.parametrize("name", list(MODELS))
def test_early_stop_gives_identical_results_with_less_work(name, allocation, reconstruction, monkeypatch):
    config = PruningConfig(sparsity=0.5, reconstruction=reconstruction, **ALLOCATIONS[allocation])
    stopped, full = MODELS[name](), MODELS[name]()
    size = sum(p.numel() for p in full.parameters())
    kept_stopped, calls_stopped = _prune(stopped, config, monkeypatch, stop_early=True)
    kept_full, calls_full = _prune(full, config, monkeypatch, stop_early=False)
    assert sum(p.numel() for p in full.parameters()) < size  # something was pruned
    assert kept_stopped == kept_full
    _assert_identical(stopped, full)
    assert sum(calls_stopped.values()) < sum(calls_full.values())


def test_llama_passes_end_at_their_consumer(monkeypatch):
    """Exact module counts on LLaMA (uniform, both kinds pruned in every layer): the attention-head pass stops
    before o_proj and skips the MLP, the FFN pass stops before down_proj; the first sample of each pass runs the whole
    block (the probe that arms the stop), every q_proj still runs."""
    config = PruningConfig(sparsity=0.5)
    stopped, full = tiny_llama(), tiny_llama()
    kept, calls_stopped = _prune(stopped, config, monkeypatch, stop_early=True)
    _, calls_full = _prune(full, config, monkeypatch, stop_early=False)
    heads = full.config.num_key_value_heads
    assert all(len(layer["attention_heads"]) < heads for layer in kept)  # both kinds have a pass in every layer
    saved = NUM_SAMPLES - 1
    for layer_stopped, layer_full in zip(stopped.model.layers, full.model.layers):

        def saved_calls(path: str, full_layer=layer_full, stopped_layer=layer_stopped) -> int:
            return calls_full[full_layer.get_submodule(path)] - calls_stopped[stopped_layer.get_submodule(path)]

        assert saved_calls("self_attn.q_proj") == 0
        assert saved_calls("self_attn.o_proj") == saved  # the head pass
        assert saved_calls("mlp.up_proj") == saved  # the head pass
        assert saved_calls("mlp.down_proj") == 2 * saved  # the head pass and the FFN pass


def test_global_scoring_reads_each_block_once(monkeypatch):
    """The scoring pass of a global allocation gathers the statistics while it computes the next block's inputs:
    one block pass per layer (liar_dense gives every kind a pass in the main loop, whatever it keeps)."""
    counts = {}
    for allocation in ("uniform", "global"):
        model = tiny_llama()
        _, calls = _prune(
            model,
            PruningConfig(sparsity=0.5, reconstruction="liar_dense", allocation=allocation),
            monkeypatch,
            stop_early=True,
        )
        counts[allocation] = [calls[layer.self_attn.q_proj] for layer in model.model.layers]
    assert [g - u for g, u in zip(counts["global"], counts["uniform"])] == [NUM_SAMPLES] * len(counts["uniform"])


def test_mixture_of_experts_identical(monkeypatch):
    """Routed experts (stacked, seen through per-expert views) and the attention heads of Mixtral."""
    config = PruningConfig(sparsity=0.5, structures=["attention_heads", "expert_channels"], reconstruction="liar")
    stopped, full = tiny_decoder("mixtral"), tiny_decoder("mixtral")
    kept_stopped, calls_stopped = _prune(stopped, config, monkeypatch, stop_early=True)
    kept_full, calls_full = _prune(full, config, monkeypatch, stop_early=False)
    assert kept_stopped == kept_full
    _assert_identical(stopped, full)
    assert sum(calls_stopped.values()) < sum(calls_full.values())


def test_offloaded_blocks_with_activations_on_disk(monkeypatch, tmp_path):
    """Blocks materialised from an accelerate offload (CPU and disk) with activations in files."""
    folder = tmp_path / "model"
    model = tiny_llama(
        hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    )
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    logits, summaries = [], []
    for stop_early in (True, False):
        monkeypatch.setattr(BlockStreamer, "stop_early", stop_early)
        pruner = PrunerForCausalLM.from_pretrained(
            folder, device_map="auto", max_memory={"cpu": size // 2}, offload_folder=str(tmp_path / f"o{stop_early}")
        )
        assert is_offloaded(pruner.model)
        config = PruningConfig(dataset=[TEXT], num_samples=4, seqlen=32, sparsity=0.5, allocation="global")
        pruner.prune(config, show_progress=False, activations_dir=tmp_path / "activations")
        logits.append(_logits(pruner.model))
        summaries.append(pruner.model.config.pruning)
    assert summaries[0] == summaries[1]
    assert torch.equal(logits[0], logits[1])
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()  # the source checkpoint was only read
    assert torch.equal(_logits(reloaded), _logits(model))


def test_stop_waits_for_every_consumer_and_arms_only_after_one_call_each():
    """A consumer that runs twice per forward disarms the stop (every forward runs to its end); a stopped forward
    whose outputs are kept is an error."""
    model = tiny_llama()
    layer = model.model.layers[0]
    inputs = [BlockInput(torch.randn(1, 8, 48), kwargs=_layer_kwargs(model, 8)) for _ in range(3)]
    ran: list[str] = []
    handles = [
        layer.self_attn.o_proj.register_forward_hook(lambda *_: ran.append("o_proj")),
        layer.mlp.down_proj.register_forward_hook(lambda *_: ran.append("down_proj")),
    ]
    with stopping_after(layer, [layer.self_attn.q_proj, layer.self_attn.o_proj]):
        run_block(layer, inputs, keep_outputs=False)
        assert ran == ["o_proj", "down_proj"]  # only the first (probing) forward ran past o_proj's input
        with pytest.raises(RuntimeError, match="stopped early"):
            run_block(layer, inputs[:1])
    ran.clear()
    # q_proj entered twice per forward (its forward hook calls it once more): never armed.
    inside = []

    def call_again(module, args, _output):
        if not inside:
            inside.append(True)
            module(args[0])
            inside.clear()

    twice = layer.self_attn.q_proj.register_forward_hook(call_again)
    try:
        with stopping_after(layer, [layer.self_attn.q_proj]):
            run_block(layer, inputs, keep_outputs=False)
    finally:
        twice.remove()
        for handle in handles:
            handle.remove()
    assert ran.count("down_proj") == len(inputs)


def _layer_kwargs(model: torch.nn.Module, length: int) -> dict:
    positions = torch.arange(length)[None]
    cos_sin = model.model.rotary_emb(torch.zeros(1, length, 48), positions)
    return {"position_embeddings": cos_sin, "position_ids": positions}


def _sparsify(model, config, monkeypatch, stop_early: bool) -> dict[torch.nn.Module, int]:
    """Sparsify `model` in place through the pruner's unstructured path; return the calls of every leaf module."""
    monkeypatch.setattr(BlockStreamer, "stop_early", stop_early)
    calls: dict[torch.nn.Module, int] = {}

    def count(module, _args, _output):
        calls[module] = calls.get(module, 0) + 1

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        pruner = PrunerForCausalLM(model, make_tokenizer())
        pruner.prune(config, show_progress=False)
    finally:
        for handle in handles:
            handle.remove()
    return calls


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "admm"])
@pytest.mark.parametrize("name", ["llama", "mamba", "mixtral"])
def test_unstructured_statistics_pass_stops_at_the_last_matrix(name, method, monkeypatch):
    """The sparsity path's statistics pass ends where the block's last weight matrix is entered, with identical
    weights. On LLaMA down_proj runs once per sample fewer per block; on Mamba (dt_proj applied through its weight by
    the reference scan, so never entered) and Mixtral (stacked experts) every pass runs to its end."""
    build = {"llama": tiny_llama, "mamba": tiny_mamba, "mixtral": lambda: tiny_decoder("mixtral")}[name]
    config = PruningConfig(
        target="unstructured", method=method, sparsity=0.5, dataset=[TEXT], num_samples=NUM_SAMPLES, seqlen=16
    )
    stopped, full = build(), build()
    calls_stopped = _sparsify(stopped, config, monkeypatch, stop_early=True)
    calls_full = _sparsify(full, config, monkeypatch, stop_early=False)
    _assert_identical(stopped, full)
    assert stopped.config.pruning["sparsity_achieved"] > 0.4
    saved = sum(calls_full.values()) - sum(calls_stopped.values())
    assert (saved > 0) == (name == "llama")
    if name == "llama":
        for layer_stopped, layer_full in zip(stopped.model.layers, full.model.layers):
            assert calls_full[layer_full.mlp.down_proj] - calls_stopped[layer_stopped.mlp.down_proj] == NUM_SAMPLES - 1
            assert calls_full[layer_full.mlp.up_proj] == calls_stopped[layer_stopped.mlp.up_proj]
