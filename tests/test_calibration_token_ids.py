"""Calibration from token ids, as llm-compressor's oneshot takes pre-tokenized data: a LongTensor [n, seqlen], a
list of 1-D tensors or of lists of ints, a datasets.Dataset (or a tokenizer's output) with an input_ids column. They
need no tokenizer, and are cut as text is: random windows of the joined data for language models, one sequence per
row for encoders."""

from __future__ import annotations

import random

import datasets
import pytest
import torch
from conftest import TEXT, VOCAB_SIZE, make_tokenizer, tiny_bert, tiny_llama
from tokenizers import processors

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig
from optimum_prune.data.calibration import CalibrationDataError

SEQLEN = 40


def _config(**overrides) -> PruningConfig:
    return PruningConfig(**{"num_samples": 5, "seqlen": SEQLEN, "seed": 0, **overrides})


def _ids(samples) -> list[list[int]]:
    return [sample["input_ids"][0].tolist() for sample in samples]


def _stream() -> torch.Tensor:
    return make_tokenizer()(TEXT, add_special_tokens=False, return_tensors="pt").input_ids[0]


def _rows(length: int = 64) -> torch.Tensor:
    stream = _stream()
    count = stream.numel() // length
    return stream[: count * length].reshape(count, length)


def _bos_tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tokenizer.bos_token_id)]
    )
    return tokenizer


@pytest.mark.parametrize("with_tokenizer", [True, False])
def test_token_ids_of_a_text_give_the_windows_of_the_text(with_tokenizer):
    """The ids of one text (tokenized without special tokens) are cut into the windows the text gives, with or
    without a tokenizer in the pruner (this one adds nothing to a text)."""
    expected = _ids(PrunerForCausalLM(tiny_llama(), make_tokenizer()).calibration_samples(_config(dataset=[TEXT])))
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer() if with_tokenizer else None)
    stream = _stream()
    assert _ids(pruner.calibration_samples(_config(dataset=stream[None]))) == expected
    assert _ids(pruner.calibration_samples(_config(dataset=[stream.tolist()]))) == expected


def test_windows_keep_the_bos_once():
    """With a tokenizer that starts a text with a BOS, rows made with that BOS give the text path's windows: the
    BOS starts every window and appears nowhere else."""
    tokenizer = _bos_tokenizer()
    bos = tokenizer.bos_token_id
    pruner = PrunerForCausalLM(tiny_llama(vocab_size=VOCAB_SIZE), tokenizer)
    expected = _ids(pruner.calibration_samples(_config(dataset=[TEXT])))
    with_bos = tokenizer(TEXT, return_tensors="pt").input_ids
    assert with_bos[0, 0].item() == bos
    got = _ids(pruner.calibration_samples(_config(dataset=with_bos)))
    assert got == expected
    assert all(window[0] == bos and bos not in window[1:] for window in got)


def test_every_form_of_token_ids_gives_the_same_windows_and_honours_the_config():
    rows = _rows()
    pruner = PrunerForCausalLM(tiny_llama(), None)
    reference = _ids(pruner.calibration_samples(_config(dataset=rows)))
    # Windows cut as the text path cuts them: one stream of the rows, starts drawn by random.Random(seed).
    stream = rows.reshape(-1)
    rng = random.Random(0)
    starts = [rng.randint(0, stream.numel() - SEQLEN) for _ in range(5)]
    assert reference == [stream[s : s + SEQLEN].tolist() for s in starts]

    padded = torch.cat([rows, torch.zeros(rows.shape[0], 7, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones_like(rows), torch.zeros(rows.shape[0], 7, dtype=torch.long)], dim=1)
    forms = {
        "list of tensors": list(rows),
        "list of lists": rows.tolist(),
        "numpy": rows.numpy(),
        "Dataset": datasets.Dataset.from_dict({"input_ids": rows.tolist()}),
        "Dataset in torch format": datasets.Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch"),
        # padding that the attention mask marks is dropped
        "Dataset with padding": datasets.Dataset.from_dict(
            {"input_ids": padded.tolist(), "attention_mask": mask.tolist(), "text": ["ignored"] * rows.shape[0]}
        ),
        "tokenizer output": {"input_ids": padded, "attention_mask": mask},
        "list of dicts": [{"input_ids": row} for row in rows],
    }
    for name, data in forms.items():
        assert _ids(pruner.calibration_samples(_config(dataset=data))) == reference, name

    more = pruner.calibration_samples(_config(dataset=rows, num_samples=9, seqlen=24, seed=3))
    assert len(more) == 9 and all(s["input_ids"].shape == (1, 24) for s in more)
    assert _ids(pruner.calibration_samples(_config(dataset=rows, seed=1))) != reference


def test_pruning_on_token_ids_without_a_tokenizer_equals_pruning_on_the_text():
    config = _config(sparsity=0.3, criterion="activation", reconstruction="liar", num_samples=4, seqlen=32)
    on_text = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    on_text.prune(config, dataset=[TEXT], show_progress=False)
    on_ids = PrunerForCausalLM(tiny_llama(), None)
    on_ids.prune(config, dataset=_stream()[None], show_progress=False)
    first, second = on_text.model.state_dict(), on_ids.model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def _encoder_tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tokenizer


def test_encoders_take_one_unpadded_sequence_per_row(sentences):
    """Encoders: one sequence per row, chosen and truncated as texts are (with the tokenizer, its [SEP] is kept;
    without, the row's first seqlen ids); the padding of a tokenizer's padded output (attention mask), or trailing
    pad ids without a mask, never reaches a statistic."""
    from optimum_prune.data.calibration import sample_examples

    tokenizer = _encoder_tokenizer()
    config = _config(num_samples=6, seqlen=24)
    pruner = PrunerForSequenceClassification(tiny_bert(), tokenizer)
    expected = _ids(pruner.calibration_samples(_config(num_samples=6, seqlen=24, dataset=sentences)))
    assert any(len(ids) == 24 and ids[-1] == 3 for ids in expected)  # some texts were truncated, [SEP] kept
    whole = _ids(sample_examples(sentences, tokenizer, 6, 256, 0))  # the same rows, not truncated
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    assert (encoded["attention_mask"] == 0).any()
    for dataset in (encoded, [row.tolist() for row in encoded["input_ids"]]):
        for owner in (tokenizer, None):
            pruner = PrunerForSequenceClassification(tiny_bert(), owner)
            config.dataset = dataset
            got = _ids(pruner.calibration_samples(config))
            assert got == (expected if owner else [ids[:24] for ids in whole]), (type(dataset), owner)
    pruner = PrunerForSequenceClassification(tiny_bert(), None)
    pruner.prune(
        PruningConfig(sparsity=0.3, num_samples=6, seqlen=24), dataset=encoded["input_ids"], show_progress=False
    )
    assert pruner.summary["parameters_after"] < pruner.summary["parameters_before"]


def test_what_cannot_calibrate_says_so_in_one_line():
    pruner = PrunerForCausalLM(tiny_llama(), None)
    rows = _rows()
    too_large = rows.clone()
    too_large[2, 5] = VOCAB_SIZE + 6
    with pytest.raises(
        CalibrationDataError, match=rf"up to {VOCAB_SIZE + 6}, but the model's vocabulary has {VOCAB_SIZE}"
    ):
        pruner.calibration_samples(_config(dataset=too_large))
    with pytest.raises(CalibrationDataError, match="ids include -1"):
        pruner.calibration_samples(_config(dataset=[[5, -1, 7]]))
    with pytest.raises(CalibrationDataError, match="text needs a tokenizer: pass one to the pruner, or calibrate on"):
        pruner.calibration_samples(_config(dataset=[TEXT]))
    with pytest.raises(CalibrationDataError, match="must be integers"):
        pruner.calibration_samples(_config(dataset=rows.float()))
    with pytest.raises(CalibrationDataError, match="one sequence per item"):
        pruner.calibration_samples(_config(dataset=rows[0].tolist()))
    with pytest.raises(CalibrationDataError, match="fewer than seqlen=40: give more token ids"):
        pruner.calibration_samples(_config(dataset=rows[:2, :3]))
    with pytest.raises(CalibrationDataError, match="needs an 'input_ids' entry"):
        pruner.calibration_samples(_config(dataset={"ids": rows}))
