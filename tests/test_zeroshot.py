"""Zero-shot multiple choice through lm-eval on a tiny local task (skipped when the `zeroshot` extra is missing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import TEXT, tiny_llama

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.evaluation import evaluate_zero_shot

# A random tiny model answers anything: the checks compare lm-eval's scores with the same scores computed by hand.
QUESTIONS = [
    {"question": "The sky is", "choices": ["blue", "green"], "label": 0},
    {"question": "Grass is", "choices": ["red", "green"], "label": 1},
    {"question": "Snow is", "choices": ["white", "black"], "label": 0},
    {"question": "Coal is", "choices": ["white", "black"], "label": 1},
    {"question": "Two plus two is", "choices": ["four", "five", "six"], "label": 0},
    {"question": "Fire is", "choices": ["cold", "hot"], "label": 1},
    {"question": "The sun rises in the", "choices": ["east", "west", "north"], "label": 0},
    {"question": "Ice is", "choices": ["warm", "frozen water"], "label": 1},
]

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_task(folder: Path, name: str = "tiny_mc", relative: bool = True) -> Path:
    data = folder / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    path = folder / f"{name}.yaml"
    path.write_text(TASK_YAML.format(name=name, data_file=data.name if relative else data), encoding="utf-8")
    return path


@torch.no_grad()
def expected_accuracy(model: torch.nn.Module, tokenizer) -> dict[str, float]:
    """lm-eval's acc and acc_norm by hand: the choice with the highest summed log-probability after the question,
    raw (acc) or divided by the choice's length in characters (acc_norm)."""
    correct = correct_norm = 0
    for question in QUESTIONS:
        scores = []
        for choice in question["choices"]:
            context = tokenizer(question["question"], add_special_tokens=False).input_ids
            # lm-eval scores " " + choice (its default target_delimiter) but normalises by len(choice).
            continuation = tokenizer(" " + choice, add_special_tokens=False).input_ids
            ids = torch.tensor([context + continuation])
            logprobs = model(ids).logits[0, :-1].log_softmax(-1)
            positions = range(len(context) - 1, ids.shape[1] - 1)
            scores.append(sum(logprobs[p, ids[0, p + 1]].item() for p in positions))
        normalised = [score / len(choice) for score, choice in zip(scores, question["choices"])]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == question["label"])
        correct_norm += int(max(range(len(scores)), key=normalised.__getitem__) == question["label"])
    return {"acc": correct / len(QUESTIONS), "acc_norm": correct_norm / len(QUESTIONS)}


def test_missing_lm_eval_gives_install_hint(monkeypatch, tokenizer) -> None:
    # A None entry in sys.modules makes `import lm_eval` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"optimum-prune\[zeroshot\]"):
        evaluate_zero_shot(tiny_llama(), tokenizer, ["anything"])


def test_local_yaml_task_matches_hand_computed_accuracy(tmp_path, tokenizer, monkeypatch) -> None:
    pytest.importorskip("lm_eval")
    task_file = write_task(tmp_path)
    # The data file is relative to the YAML: it must be found whatever the working directory.
    monkeypatch.chdir(tmp_path.parent)
    model = tiny_llama(seed=1).train()  # a seed where acc and acc_norm pick differently
    results = evaluate_zero_shot(model, tokenizer, [task_file], batch_size=2)
    assert model.training  # evaluated in eval mode, then given back in the mode it came in
    assert set(results) == {"tiny_mc"}
    assert results["tiny_mc"]["num_samples"] == len(QUESTIONS)
    expected = expected_accuracy(model.eval(), tokenizer)
    assert results["tiny_mc"]["acc"] == pytest.approx(expected["acc"])
    assert results["tiny_mc"]["acc_norm"] == pytest.approx(expected["acc_norm"])


def test_task_name_from_include_path_on_pruned_model(tmp_path, tokenizer) -> None:
    pytest.importorskip("lm_eval")
    write_task(tmp_path, name="tiny_mc_named", relative=False)
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    pruner.prune(
        PruningConfig(sparsity=0.3, criterion="activation", reconstruction="liar", num_samples=4, seqlen=64),
        dataset=[TEXT],
        show_progress=False,
    )
    model = pruner.model.train()
    results = evaluate_zero_shot(model, tokenizer, "tiny_mc_named", include_path=tmp_path, batch_size=4)
    assert results["tiny_mc_named"]["acc"] == pytest.approx(expected_accuracy(model.eval(), tokenizer)["acc"])


def test_missing_task_file_fails_clearly(tmp_path, tokenizer) -> None:
    pytest.importorskip("lm_eval")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_zero_shot(tiny_llama(), tokenizer, [tmp_path / "nope.yaml"])
