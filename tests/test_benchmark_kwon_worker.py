"""benchmarks/peers/kwon_worker.py (issue 23): the pieces that need neither Kwon et al.'s source nor a GPU. Folding the
rescaled masks into the weights and removing the masked units computes what the masked model computes, the census
counts what is left, and the accuracy counts argmax hits."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import TINY_ENCODER, benchmark_module, tiny_bert


@pytest.fixture(scope="module")
def worker():
    return benchmark_module("peers.kwon_worker")


def _examples(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"input_ids": [rng.randrange(1, 50) for _ in range(rng.randint(3, 12))], "label": rng.randrange(2)}
        for _ in range(count)
    ]


def _masked_logits(model, batch, head_mask, neuron_mask):
    """The masked model as its code applies the masks, written with hooks (transformers 5 takes no head_mask):
    a head's value scales its context, i.e. the attention output matrix's input columns of that head."""
    handles = []
    for index, layer in enumerate(model.bert.encoder.layer):
        size = layer.attention.self.attention_head_size
        heads = head_mask[index].repeat_interleave(size)
        handles.append(layer.attention.output.dense.register_forward_pre_hook(lambda _, x, h=heads: (x[0] * h,)))
        handles.append(layer.output.dense.register_forward_pre_hook(lambda _, x, n=neuron_mask[index]: (x[0] * n,)))
    try:
        return model(**batch).logits
    finally:
        for handle in handles:
            handle.remove()


def test_fold_and_remove_computes_the_masked_model_with_the_masked_units_gone(worker) -> None:
    model = tiny_bert()  # 2 blocks, hidden 48, 6 heads of 8, FFN 96
    head_mask = torch.tensor([[1.3, 0.0, 0.7, 1.0, 0.0, 0.2], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    neuron_mask = torch.rand(2, 96) + 0.5
    neuron_mask[0, :10] = 0
    neuron_mask[1, 5:] = 0
    batch = next(worker.batches(_examples(6), 6, pad_token_id=0))
    batch.pop("labels")
    with torch.no_grad():
        expected = _masked_logits(model, batch, head_mask, neuron_mask)
        worker.fold_and_remove(model, head_mask, neuron_mask)
        got = model(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    counted = worker.census(model)
    assert counted["attention heads"] == [4, 0]
    assert counted["ffn widths"] == [86, 5]
    assert counted["parameters"] == sum(p.numel() for p in model.parameters())
    # every block: q, k, v (d x 8h + 8h each), output (8h x d + d), two LayerNorms, FFN up / down
    d = TINY_ENCODER["hidden_size"]
    expected_encoder = sum(
        3 * (d * 8 * h + 8 * h) + 8 * h * d + d + 4 * d + d * f + f + f * d + d
        for h, f in zip(counted["attention heads"], counted["ffn widths"])
    )
    assert counted["encoder parameters"] == expected_encoder


def test_batches_pad_to_the_longest_sentence_and_keep_the_labels(worker) -> None:
    examples = [{"input_ids": [5, 6, 7], "label": 1}, {"input_ids": [8], "token_type_ids": [0], "label": 0}]
    (batch,) = list(worker.batches(examples, 8, pad_token_id=0))
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert len(worker.Batches(examples * 5, 4, 0)) == 3


def test_accuracy_counts_argmax_hits_whatever_the_padding(worker) -> None:
    model = tiny_bert(1)
    examples = _examples(20, seed=3)
    with torch.no_grad():
        predicted = [int(model(input_ids=torch.tensor([e["input_ids"]])).logits.argmax(-1)) for e in examples]
    hits = sum(p == e["label"] for p, e in zip(predicted, examples))
    assert worker.accuracy(model, examples, pad_token_id=0, batch_size=7) == pytest.approx(hits / len(examples))
    relabelled = [dict(e, label=p) for e, p in zip(examples, predicted)]
    assert worker.accuracy(model, relabelled, pad_token_id=0, batch_size=7) == 1.0
