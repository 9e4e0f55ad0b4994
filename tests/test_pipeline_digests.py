"""Pruned weights are bit-identical to those recorded before the block loops became one pipeline (issue 27).

Every configuration prunes a seeded tiny model and hashes its state_dict; tests/data/pipeline_digests.json holds the
hashes the code before `optimum_prune.pipeline` produced (commit 2bc4cad) for structured uniform / global / flap / obs
allocations x liar / liar_dense / none on LLaMA, BERT and Mamba (and what works of them on Mixtral, Gemma 3 with
per-block masks), depth pruning with bridges, every sparsity solver, the OWL and OBS allocations and 2:4.

Bitwise equality only holds where the floating-point libraries compute as they did then, so the file holds one
record per environment (torch, transformers, CPU capability and CPU make: `digests.py`); where none matches, the test
is skipped (say so rather than pass). To record this environment, run ``python tests/test_pipeline_digests.py`` from
a checkout whose results are trusted (not from the change under test). The Intel record was made at 2bc4cad; the AMD
EPYC one at d188ecd, whose package code is the code that matched the Intel record.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import TEXT, make_tokenizer, tiny_bert, tiny_llama, tiny_mamba  # noqa: E402
from digests import record, recorded_or_skip  # noqa: E402
from test_decoder_adapters import tiny_decoder  # noqa: E402

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig  # noqa: E402

DIGESTS = os.path.join(os.path.dirname(__file__), "data", "pipeline_digests.json")
SENTENCES = [s.strip() + "." for s in TEXT.split(".") if s.strip()][:40]

MODELS = {
    "llama": (tiny_llama, PrunerForCausalLM),
    "bert": (tiny_bert, PrunerForSequenceClassification),
    "mamba": (tiny_mamba, PrunerForCausalLM),
    "mixtral": (lambda: tiny_decoder("mixtral"), PrunerForCausalLM),
    "gemma3": (lambda: tiny_decoder("gemma3_text", num_hidden_layers=3), PrunerForCausalLM),
    "llama6": (lambda: tiny_llama(num_hidden_layers=6), PrunerForCausalLM),
}
ALLOCATIONS = {
    "uniform": dict(),
    "global": dict(allocation="global"),
    "flap": dict(allocation="flap", criterion="fluctuation"),
    "obs": dict(allocation="obs"),
}
SOLVERS = ("magnitude", "wanda", "sparsegpt", "admm", "obs_multi")


def _cases() -> dict[str, tuple[str, dict]]:
    cases: dict[str, tuple[str, dict]] = {}
    for model in ("llama", "bert", "mamba"):
        for allocation, fields in ALLOCATIONS.items():
            for reconstruction in ("liar", "liar_dense", "none"):
                cases[f"{model}/{allocation}/{reconstruction}"] = (model, {**fields, "reconstruction": reconstruction})
    # Stacked experts hold no bias, so Mixtral takes neither the bias-adding refits nor liar_dense.
    for allocation in ("uniform", "global", "obs"):
        cases[f"mixtral/{allocation}/liar"] = ("mixtral", {**ALLOCATIONS[allocation], "reconstruction": "liar"})
    for allocation in ("global", "obs"):
        for reconstruction in ("liar", "liar_dense"):
            fields = {**ALLOCATIONS[allocation], "reconstruction": reconstruction}
            cases[f"gemma3/{allocation}/{reconstruction}"] = ("gemma3", fields)
    # allocation_samples=4 (every sample, as recorded; the recipe now reads half of them).
    cases["llama/recipe-obs"] = ("llama", dict(recipe="obs", allocation_samples=4))
    cases["llama/magnitude-global-no-data"] = (
        "llama",
        dict(criterion="magnitude", reconstruction="none", allocation="global"),
    )
    cases["llama/prunenet"] = ("llama", dict(recipe="prunenet", prunenet_episodes=2))
    for model in ("llama6", "gemma3"):
        for reconstruction in ("none", "liar", "liar_dense"):
            fields = dict(structures=["layers"], reconstruction=reconstruction, sparsity=0.5, protect_layers=[1])
            cases[f"{model}/depth/{reconstruction}"] = (model, fields)
    for model in ("llama", "bert", "mamba", "gemma3"):
        for method in SOLVERS:
            cases[f"{model}/sparsity/{method}"] = (model, dict(target="unstructured", method=method))
    for model in ("llama", "mixtral"):
        cases[f"{model}/sparsity/sparsegpt-owl"] = (model, dict(target="unstructured", allocation="owl"))
        cases[f"{model}/sparsity/wanda-obs"] = (model, dict(target="unstructured", method="wanda", allocation="obs"))
        cases[f"{model}/sparsity/2:4"] = (model, dict(target="2:4"))
    cases["gemma3/sparsity/magnitude-owl"] = (
        "gemma3",
        dict(target="unstructured", method="magnitude", allocation="owl"),
    )
    return cases


CASES = _cases()


def _digest(model_name: str, fields: dict) -> str:
    build, pruner_class = MODELS[model_name]
    pruner = pruner_class(build(), make_tokenizer())
    data = SENTENCES if model_name == "bert" else [TEXT]
    config = PruningConfig(**{"dataset": data, "num_samples": 4, "seqlen": 32, "sparsity": 0.5, **fields})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.prune(config, show_progress=False)
    digest = hashlib.sha256()
    for name, tensor in sorted(pruner.model.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@pytest.mark.parametrize("case", list(CASES))
def test_pruned_weights_are_bit_identical(case):
    recorded = recorded_or_skip(DIGESTS)
    torch.set_num_threads(1)
    model_name, fields = CASES[case]
    assert _digest(model_name, fields) == recorded[case]


if __name__ == "__main__":
    torch.set_num_threads(1)
    digests = {case: _digest(model_name, fields) for case, (model_name, fields) in CASES.items()}
    record(DIGESTS, digests)
    print(f"{len(digests)} digests written to {DIGESTS}")
