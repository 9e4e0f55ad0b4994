"""recipe="obs" gives bit-identical pruned weights before and after the greedy OBS speed-ups (issue 23, part 3).

tests/data/obs_digests.json holds the hashes that the code before the speed-ups (main at ff46109) produced: the
state_dict of tiny LLaMA, Qwen2 (two KV groups, and one KV group, where query heads are pruned) and BERT models
pruned with recipe="obs" at 20% and 50%, and the removal order, step costs and remaining ranking of `greedy_obs`
itself on random weights and inputs (single channels and 4-channel units, several units per greedy step).
The FFNs are wider than the greedy's 128 steps, so several channels go per step, as in real models.

As in test_pipeline_digests.py, bitwise equality only holds where the floating-point libraries compute as they did
then: one record per environment (`digests.py`), the test skipped where none matches. To record this environment,
run ``python tests/test_obs_digests.py`` from a checkout whose results are trusted. The AMD EPYC record was made at
d188ecd, whose package code is the code that matched the Intel record.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings

import pytest
import torch
import transformers

sys.path.insert(0, os.path.dirname(__file__))
from conftest import TEXT, VOCAB_SIZE, make_tokenizer  # noqa: E402
from digests import record, recorded_or_skip  # noqa: E402

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig  # noqa: E402
from optimum_prune.criteria.obs import greedy_obs  # noqa: E402
from optimum_prune.pipeline.statistics import InputStatistics  # noqa: E402

DIGESTS = os.path.join(os.path.dirname(__file__), "data", "obs_digests.json")
SENTENCES = [s.strip() + "." for s in TEXT.split(".") if s.strip()][:40]
_DECODER = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=320,
    num_hidden_layers=3,
    num_attention_heads=8,
    max_position_embeddings=256,
)
MODELS = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**_DECODER, num_key_value_heads=4)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_DECODER, num_key_value_heads=2)),
    "qwen2-1kv": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_DECODER, num_key_value_heads=1)),
    "bert": lambda: transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=64,
            intermediate_size=320,
            num_hidden_layers=2,
            num_attention_heads=8,
            max_position_embeddings=256,
        )
    ),
}
SPARSITIES = (0.2, 0.5)
CASES = [f"{model}/{sparsity}" for model in MODELS for sparsity in SPARSITIES] + ["greedy/c1", "greedy/c4"]


def _hash_tensors(items) -> str:
    digest = hashlib.sha256()
    for name, tensor in items:
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _model_digest(model_name: str, sparsity: float) -> str:
    torch.manual_seed(0)
    model = MODELS[model_name]().eval()
    bert = model_name == "bert"
    pruner = (PrunerForSequenceClassification if bert else PrunerForCausalLM)(model, make_tokenizer())
    # allocation_samples=8: the allocation on every sample, as recorded (the recipe now reads half of them).
    config = PruningConfig(
        recipe="obs",
        sparsity=sparsity,
        dataset=SENTENCES if bert else [TEXT],
        num_samples=8,
        seqlen=48,
        allocation_samples=8,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.prune(config, show_progress=False)
    return _hash_tensors(sorted(pruner.model.state_dict().items()))


def _greedy_digest(channels_per_unit: int) -> str:
    generator = torch.Generator().manual_seed(channels_per_unit)
    n, out = 400, 48
    inputs = torch.randn(600, n, generator=generator) * torch.rand(n, generator=generator) + 0.3
    stats = InputStatistics(n, with_gram=True)
    stats.update(inputs)
    weight = torch.randn(out, n, generator=generator)
    result = greedy_obs(weight, stats, channels_per_unit, damp=0.01)
    return _hash_tensors(
        [
            ("order", torch.tensor(result.order)),
            ("step_costs", torch.tensor(result.step_costs, dtype=torch.float64)),
            ("remaining", torch.tensor(result.remaining)),
        ]
    )


def _digest(case: str) -> str:
    kind, _, rest = case.partition("/")
    if kind == "greedy":
        return _greedy_digest(int(rest[1:]))
    return _model_digest(kind, float(rest))


@pytest.mark.parametrize("case", CASES)
def test_obs_recipe_is_bit_identical(case):
    recorded = recorded_or_skip(DIGESTS)
    torch.set_num_threads(1)
    assert _digest(case) == recorded[case]


if __name__ == "__main__":
    torch.set_num_threads(1)
    digests = {case: _digest(case) for case in CASES}
    record(DIGESTS, digests)
    print(f"{len(digests)} digests written to {DIGESTS}")
