"""Issue 23, section 2 (a Gemma-style checkpoint): windows that start with the BOS its tokenizer adds, calibration
that never computes the LM head, and attention pruned on models with one KV group per layer."""

from __future__ import annotations

import copy
import importlib
import logging
import os
import random
import sys

import pytest
import torch
import transformers
from conftest import TEXT, VOCAB_SIZE, make_tokenizer, tiny_llama
from tokenizers import processors

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.data.calibration import RANDOM_TOKENS, random_token_samples, sample_token_windows
from optimum_prune.evaluation import perplexity

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


pytestmark = pytest.mark.usefixtures("one_thread")


def bos_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """conftest's character tokenizer, adding a BOS before every text as Gemma's and Llama 3's tokenizers do."""
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    assert tokenizer("ab").input_ids == [bos, *tokenizer("ab", add_special_tokens=False).input_ids]
    return tokenizer


def _is_slice(part: torch.Tensor, stream: torch.Tensor) -> bool:
    n = part.numel()
    return any(torch.equal(stream[s : s + n], part) for s in range(stream.numel() - n + 1))


# ---- BOS: calibration and perplexity windows start as the tokenizer starts a text ----------------------------------
def test_calibration_windows_start_with_the_bos_the_tokenizer_adds():
    tokenizer, seqlen = bos_tokenizer(), 40
    bos = tokenizer.bos_token_id
    stream = tokenizer("\n\n".join([TEXT]), add_special_tokens=False, return_tensors="pt").input_ids[0]
    windows = sample_token_windows([TEXT], tokenizer, num_samples=5, seqlen=seqlen, seed=0)
    pruner = PrunerForCausalLM(tiny_llama(vocab_size=VOCAB_SIZE), tokenizer)
    drawn = pruner.calibration_samples(PruningConfig(dataset=[TEXT], num_samples=5, seqlen=seqlen))
    random_windows = random_token_samples(tokenizer, VOCAB_SIZE, num_samples=3, seqlen=seqlen)
    for sample in windows + drawn + random_windows:
        ids = sample["input_ids"][0]
        assert ids.numel() == seqlen and ids[0].item() == bos, ids[:4]
        assert bos not in ids[1:].tolist()
    for sample in windows + drawn:  # then seqlen - 1 consecutive tokens of the text
        assert _is_slice(sample["input_ids"][0, 1:], stream)
    pruner.prune(
        PruningConfig(dataset=RANDOM_TOKENS, num_samples=2, seqlen=seqlen, sparsity=0.3), show_progress=False
    )  # random-token calibration runs with the BOS in place

    # A tokenizer that adds nothing: the windows are exactly those of before (SmolLM2's tokenizer adds nothing).
    plain = make_tokenizer()
    stream = plain(TEXT, add_special_tokens=False, return_tensors="pt").input_ids[0]
    rng = random.Random(0)
    starts = [rng.randint(0, stream.numel() - seqlen) for _ in range(5)]
    expected = [stream[s : s + seqlen] for s in starts]
    got = [s["input_ids"][0] for s in sample_token_windows([TEXT], plain, 5, seqlen, 0)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


class _WindowRecorder:
    """The input_ids of every forward of `model`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.windows: list[torch.Tensor] = []
        model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, args, kwargs):
        self.windows.append((args[0] if args else kwargs["input_ids"])[0].clone())


@torch.no_grad()
def test_perplexity_windows_start_with_the_bos_the_tokenizer_adds():
    tokenizer, seqlen = bos_tokenizer(), 32
    bos = tokenizer.bos_token_id
    model = tiny_llama(vocab_size=VOCAB_SIZE)
    recorder = _WindowRecorder(model)
    text = TEXT[:400]
    stream = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    result = perplexity(model, tokenizer, text, seqlen=seqlen, show_progress=False)
    body = seqlen - 1
    count = (stream.numel() - body) // body + 1
    assert result["windows"] == count and result["tokens"] == count * body
    # Each window: the BOS, then the next seqlen - 1 tokens of the text; every text token scored once.
    for index, window in enumerate(recorder.windows):
        assert torch.equal(window, torch.cat([torch.tensor([bos]), stream[index * body : (index + 1) * body]]))
    nll = 0.0
    for window in list(recorder.windows):  # (these forwards are recorded too)
        logits = model(window[None]).logits[0, :-1]
        nll += float(torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum"))
    assert result["nll"] == pytest.approx(nll / result["tokens"], rel=1e-5)
    # The same with the stream tokenized beforehand, the tokenizer (or its prefix) saying how windows start.
    assert perplexity(model, tokenizer, input_ids=stream[None], seqlen=seqlen, show_progress=False) == result
    assert perplexity(model, input_ids=stream[None], seqlen=seqlen, show_progress=False, prefix=[bos]) == result

    # A tokenizer that adds nothing: plain slices of the stream, as before.
    plain = make_tokenizer()
    recorder.windows.clear()
    stream = plain(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    result = perplexity(model, plain, text, seqlen=seqlen, show_progress=False)
    assert result["tokens"] == result["windows"] * (seqlen - 1)
    for index, window in enumerate(recorder.windows):
        assert torch.equal(window, stream[index * seqlen : (index + 1) * seqlen])


def test_benchmark_windows_start_with_the_bos_the_tokenizer_adds():
    """benchmarks/common.py: each evaluation window starts with the workload's prefix (none for SmolLM2)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        common = importlib.import_module("common")
    finally:
        sys.path.remove(BENCHMARKS)
    tokenizer = bos_tokenizer()
    model = tiny_llama(vocab_size=VOCAB_SIZE, max_position_embeddings=common.EVAL_SEQLEN)
    recorder = _WindowRecorder(model)
    # Three windows of a BOS and 511 tokens (no more than two of 512 tokens): eval_windows counts them as evaluate does.
    text = TEXT[: 3 * (common.EVAL_SEQLEN - 1)]
    eval_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    work = common.Workload(model, tokenizer, [TEXT], eval_ids, 0.0, [tokenizer.bos_token_id])
    result = common.evaluate(model, work, None)
    assert result["windows"] == work.eval_windows(None) == len(recorder.windows) == 3
    assert all(window[0].item() == tokenizer.bos_token_id for window in recorder.windows)


# ---- no LM head during calibration ---------------------------------------------------------------------------------
def _tiny_gemma3() -> torch.nn.Module:
    """Gemma 3's sliding-window and full-attention layers (blocks with their own masks), one KV group each."""
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=4,
        sliding_window_pattern=2,
        max_position_embeddings=256,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    model = transformers.Gemma3ForCausalLM(config).eval()
    assert len(set(model.config.layer_types)) == 2
    return model


@pytest.mark.parametrize("family", ["gemma3", "llama"])
@pytest.mark.parametrize(
    "recipe",
    [
        dict(sparsity=0.3),
        dict(sparsity=0.3, allocation="global"),
        dict(structures=["layers"], sparsity=0.3, reconstruction="none"),
        dict(target="unstructured", method="sparsegpt", sparsity=0.5),
    ],
    ids=["structured", "global", "depth", "unstructured"],
)
def test_calibration_never_runs_the_lm_head(family, recipe):
    """Blocks with their own masks (Gemma) have their arguments captured from whole-model forwards, and any model
    is probed once for it: those forwards end before the LM head (logits over a 262k vocabulary for Gemma 3)."""
    model = _tiny_gemma3() if family == "gemma3" else tiny_llama(vocab_size=VOCAB_SIZE)
    calls = []
    model.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    pruner = PrunerForCausalLM(model, bos_tokenizer())
    pruner.prune(PruningConfig(dataset=[TEXT], num_samples=3, seqlen=24, **recipe), show_progress=False)
    assert calls == []
    with torch.no_grad():
        assert torch.isfinite(pruner.model(torch.tensor([[5, 6, 7, 8]])).logits).all()


# ---- one KV group per layer: the default structures prune query heads ----------------------------------------------
def test_one_kv_group_prunes_query_heads_by_default(caplog):
    """Whole KV groups cannot go when a layer has one; the defaults prune query heads inside it instead, say so once
    in a warning and in the summary, and do exactly what structures=['query_heads', 'ffn_channels'] does."""
    dense = tiny_llama(num_key_value_heads=1)
    runs = {}
    for name, structures in (("default", None), ("explicit", ["query_heads", "ffn_channels"])):
        pruner = PrunerForCausalLM(copy.deepcopy(dense), make_tokenizer())
        with caplog.at_level(logging.WARNING, logger="optimum_prune"):
            caplog.clear()
            pruner.prune(
                PruningConfig(dataset=[TEXT], num_samples=4, seqlen=32, sparsity=0.5, structures=structures),
                show_progress=False,
            )
        runs[name] = pruner
        fallback = [r for r in caplog.records if "single KV group" in r.getMessage()]
        assert len(fallback) == (1 if structures is None else 0)
    summary = runs["default"].summary
    assert all(layer["num_attention_heads"] == 3 and layer["num_key_value_heads"] == 1 for layer in summary["layers"])
    assert summary["structures"] == ["query_heads", "ffn_channels"]
    assert len(summary["notes"]) == 1 and "query heads" in summary["notes"][0]
    assert summary["layers"] == runs["explicit"].summary["layers"]
    default_state, explicit_state = runs["default"].model.state_dict(), runs["explicit"].model.state_dict()
    assert all(torch.equal(default_state[k], explicit_state[k]) for k in explicit_state)

    # Several KV groups per layer: whole groups, as before, and no note.
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    pruner.prune(PruningConfig(dataset=[TEXT], num_samples=4, seqlen=32, sparsity=0.5), show_progress=False)
    assert pruner.summary["structures"] == ["attention_heads", "ffn_channels"] and "notes" not in pruner.summary
    assert any(layer["num_key_value_heads"] < 3 for layer in pruner.summary["layers"])


def test_one_kv_group_global_allocation_removes_query_heads():
    """Under global allocation the one-group model's query heads compete with FFN channels for the budget."""
    pruner = PrunerForCausalLM(_tiny_gemma3(), make_tokenizer())
    pruner.prune(
        PruningConfig(dataset=[TEXT], num_samples=4, seqlen=32, sparsity=0.5, allocation="global"), show_progress=False
    )
    assert sum(layer["num_attention_heads"] for layer in pruner.summary["layers"]) < 2 * 6
    assert pruner.summary["structures"] == ["query_heads", "ffn_channels"]
