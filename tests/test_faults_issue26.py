"""Issue 26: calibration folders, a model card that neither breaks nor leaks local paths, unstructured sparsity that
is met or refused, and protect_layers indices the model has."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_llama
from huggingface_hub import ModelCard

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.checks import SparsityShortfallError
from optimum_prune.cli import main
from optimum_prune.data.calibration import CalibrationDataError, load_texts
from optimum_prune.serialization.hub import create_model_card

SMALL = {"num_samples": 2, "seqlen": 32}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("issue26") / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def _unchanged(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("optimum-prune: error: "), lines
    return lines[0]


# ---- 2. a calibration folder ------------------------------------------------------------------------------------------


def test_a_folder_of_text_files_is_calibration_data_in_sorted_order(tmp_path, tokenizer):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("second " + TEXT, encoding="utf-8")
    (folder / "a.txt").write_text("first " + TEXT, encoding="utf-8")
    texts = load_texts(str(folder))
    assert [t.split()[0] for t in texts] == ["first", "second"]

    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    pruner.prune(PruningConfig(sparsity=0.3, dataset=str(folder), **SMALL), show_progress=False)
    assert pruner.summary["sparsity_achieved"] > 0.2


def test_a_folder_of_jsonl_shards_is_read_in_sorted_order(tmp_path):
    folder = tmp_path / "shards"
    (folder / "part").mkdir(parents=True)
    (folder / "part" / "01.jsonl").write_text(json.dumps({"text": "two"}) + "\n", encoding="utf-8")
    (folder / "00.jsonl").write_text(json.dumps({"text": "one"}) + "\n", encoding="utf-8")
    assert load_texts(str(folder)) == ["one", "two"]


def test_a_folder_that_mixes_file_types_is_refused_naming_the_types(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT, encoding="utf-8")
    (folder / "b.csv").write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(CalibrationDataError) as info:
        load_texts(str(folder))
    message = str(info.value)
    assert "\n" not in message and str(folder) in message and "'.csv'" in message and "'.txt'" in message


def test_a_folder_without_calibration_files_is_refused_naming_it(tmp_path):
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.md").write_text("# notes", encoding="utf-8")
    with pytest.raises(CalibrationDataError) as info:
        load_texts(str(folder))
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_an_unsupported_file_type_names_the_path(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text(TEXT, encoding="utf-8")
    with pytest.raises(CalibrationDataError) as info:
        load_texts(str(path))
    assert "Unsupported calibration file type '.md'" in str(info.value) and str(path) in str(info.value)


def test_the_cli_reads_a_calibration_folder(saved_llama, tmp_path, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT, encoding="utf-8")
    (folder / "b.txt").write_text(TEXT, encoding="utf-8")
    output = tmp_path / "out"
    arguments = ["-m", str(saved_llama), "--sparsity", "0.3", "--dataset", str(folder), "--num-samples", "2"]
    assert main([*arguments, "--seqlen", "32", "--no-progress", str(output)]) == 0, capsys.readouterr().err
    assert (output / "model.safetensors").exists()


# ---- 3. a model card that nothing in a name or a dataset string can break ----------------------------------------------


def _markdown_tokens(text: str):
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark").parse(text)


def test_a_dataset_string_cannot_end_the_cards_code_block_or_add_a_heading(tmp_path):
    injected = "wiki\n```\n# injected"
    base = tmp_path / "my `model`\n# base heading"
    base.mkdir()
    card = create_model_card(
        base_model=str(base),
        pipeline_tag="text-generation",
        pruning_config={"target": "unstructured", "sparsity": 0.5, "method": "wanda", "dataset": injected},
        summary={"parameters_before": 100, "parameters_after": 100, "model_type": "llama"},
        eval_results={"perplexity": {"value": 3.0, "dataset": "evil\n# eval heading | x", "dataset_name": "a\r# b"}},
        cli_options=["--text-column", "x\n````\n# cli heading"],
    )
    text = ModelCard(str(card)).text
    tokens = _markdown_tokens(text)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings[1:] == ["What was removed", "How to reproduce", "How to load", "Evaluation"], headings
    assert "\n" not in headings[0] and "base heading" in headings[0]  # the folder name, on one line
    fences = {t.info: t.content for t in tokens if t.type == "fence"}
    assert set(fences) == {"json", "python", "bash"}
    assert fences["bash"].startswith("optimum-cli prune") and "# injected" in fences["bash"]
    assert "# cli heading" in fences["bash"] and "--text-column" in fences["bash"]
    assert fences["bash"].rstrip().endswith("-pruned'")  # the whole command, up to its last argument
    assert ModelCard(str(card)).data.to_dict()["model-index"][0]["results"][0]["dataset"]["type"].startswith("evil")


# ---- 4. no local path in the card ----------------------------------------------------------------------------------------


def test_a_card_names_a_local_calibration_file_by_name_and_hash_not_by_path(tmp_path, tokenizer):
    data = tmp_path / "private" / "wiki.txt"
    data.parent.mkdir()
    data.write_text(TEXT, encoding="utf-8")
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    pruner.prune(PruningConfig(sparsity=0.3, dataset=str(data), **SMALL), show_progress=False)
    pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert str(tmp_path) not in card and str(data.parent) not in card
    assert "wiki.txt" in card and hashlib.sha256(data.read_bytes()).hexdigest()[:16] in card


def test_a_card_names_a_local_calibration_folder_by_name_and_hash_not_by_path(tmp_path, tokenizer):
    folder = tmp_path / "private" / "corpus"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text(TEXT, encoding="utf-8")
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    pruner.prune(PruningConfig(sparsity=0.3, dataset=str(folder), **SMALL), show_progress=False)
    pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert str(tmp_path) not in card and "corpus" in card and "sha256" in card


def test_the_cli_card_has_no_absolute_calibration_path(saved_llama, tmp_path):
    data = tmp_path / "private" / "wiki.txt"
    data.parent.mkdir()
    data.write_text(TEXT, encoding="utf-8")
    output = tmp_path / "out"
    arguments = ["-m", str(saved_llama), "--sparsity", "0.3", "--dataset", str(data), "--evaluate", "ppl"]
    assert (
        main([*arguments, "--num-samples", "2", "--seqlen", "32", "--eval-windows", "1", "--no-progress", str(output)])
        == 0
    )
    card = (output / "README.md").read_text(encoding="utf-8")
    assert str(tmp_path) not in card and "wiki.txt" in card


def test_a_hub_dataset_name_is_published_as_it_is():
    card = create_model_card(
        base_model=None,
        pipeline_tag="text-generation",
        pruning_config={"target": "unstructured", "sparsity": 0.5, "method": "wanda", "dataset": "wikitext2"},
        summary={"parameters_before": 100, "parameters_after": 100},
    )
    assert "--dataset wikitext2" in card.text and "dataset='wikitext2'" in card.text and "sha256" not in card.text


# ---- 5. unstructured sparsity: met, or refused before any weight changes -------------------------------------------------


def test_unstructured_sparsity_rows_cannot_reach_is_refused_before_any_change(tokenizer):
    # Rows of 48 and 96 weights; each keeps at least one, so 0.999 cannot be had: at most 47/48 = 97.9% of a row.
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    before = {k: v.clone() for k, v in pruner.model.state_dict().items()}
    config = PruningConfig(target="unstructured", method="magnitude", sparsity=0.999)
    with pytest.raises(SparsityShortfallError) as info:
        pruner.prune(config, show_progress=False)
    message = str(info.value)
    assert "\n" not in message and "sparsity=0.999 cannot be met" in message and "97.9%" in message
    assert "allow_sparsity_shortfall" in message
    assert _unchanged(before, pruner.model)

    allowed = PruningConfig(target="unstructured", method="magnitude", sparsity=0.999, allow_sparsity_shortfall=True)
    pruner.prune(allowed, show_progress=False)
    assert pruner.summary["sparsity_achieved"] == pytest.approx((336 * 47 + 48 * 95) / (336 * 48 + 48 * 96))


def test_unstructured_sparsity_that_rounds_to_nothing_removed_is_refused(tokenizer):
    # 0.02 x 48 = 0.96 weights asked of each row of 48, floor gives none: 0.2% in all, a tenth of the request.
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    with pytest.raises(
        SparsityShortfallError, match=r"sparsity=0.02 cannot be met: .* lose none, .* at least 0.02083"
    ):
        pruner.prune(PruningConfig(target="unstructured", method="magnitude", sparsity=0.02), show_progress=False)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.95, 0.98])
def test_unstructured_sparsity_within_rounding_still_passes(tokenizer, sparsity):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    pruner.prune(PruningConfig(target="unstructured", method="magnitude", sparsity=sparsity), show_progress=False)
    assert sparsity - 0.03 < pruner.summary["sparsity_achieved"] <= sparsity


def test_the_cli_refuses_unstructured_sparsity_it_cannot_reach(saved_llama, tmp_path, capsys):
    output = tmp_path / "out"
    arguments = ["-m", str(saved_llama), "--target", "unstructured", "--method", "magnitude", "--sparsity", "0.999"]
    assert main([*arguments, "--no-progress", str(output)]) == 1
    line = _one_error_line(capsys)
    assert "sparsity=0.999 cannot be met" in line and "97.9%" in line
    assert list(tmp_path.iterdir()) == []
    assert main([*arguments, "--dry-run", str(output)]) == 1
    assert "sparsity=0.999 cannot be met" in _one_error_line(capsys)


# ---- 6. protect_layers names layers the model has ---------------------------------------------------------------------


@pytest.mark.parametrize("index", [99, 3, -4])
def test_protect_layers_out_of_range_is_refused(tokenizer, texts, index):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)  # 3 layers
    before = {k: v.clone() for k, v in pruner.model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        pruner.prune(
            PruningConfig(sparsity=0.2, dataset=texts, protect_layers=[0, index], **SMALL), show_progress=False
        )
    message = str(info.value)
    assert "\n" not in message and f"protect_layers names layer {index}" in message and "3 layers" in message
    assert _unchanged(before, pruner.model)


def test_protect_layers_in_range_still_works(tokenizer, texts):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    pruner.prune(PruningConfig(sparsity=0.2, dataset=texts, protect_layers=[0, -1], **SMALL), show_progress=False)
    sizes = [layer["intermediate_size"] for layer in pruner.summary["layers"]]
    assert sizes[0] == sizes[2] == 96 and sizes[1] < 96


def test_the_cli_refuses_protect_layers_out_of_range(saved_llama, tmp_path, capsys):
    output = tmp_path / "out"
    arguments = ["-m", str(saved_llama), "--criterion", "magnitude", "--protect-layers", "99"]
    assert main([*arguments, "--no-progress", str(output)]) == 1
    line = _one_error_line(capsys)
    assert "protect_layers names layer 99" in line and "3 layers" in line
    assert list(tmp_path.iterdir()) == []
