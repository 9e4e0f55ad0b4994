"""criterion="taylor": LLM-Pruner's Taylor importance, checked against gradients taken here by hand on tiny models.

The hand computations name the LLaMA and BERT weights of each unit themselves (not through the adapters), take the
gradient of the loss with one `torch.autograd.grad` call (for LLaMA on the batch of all samples, as the reference's
`model(x, labels=x).loss` does) and compare with the criterion's unit scores.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from architectures_matrix import ARCHITECTURES, BY_NAME, STRUCTURED
from conftest import TEXT, make_tokenizer, tiny_bert, tiny_llama, tiny_mamba
from transformers import BertConfig, BertForSequenceClassification

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig, get_adapter
from optimum_prune.cli import main
from optimum_prune.commands.prune import CONFIG_OPTIONS
from optimum_prune.configuration import TAYLOR_VARIANTS
from optimum_prune.criteria import CRITERIA
from optimum_prune.criteria.taylor import calibration_loss
from optimum_prune.pipeline.offload import is_offloaded
from optimum_prune.planning import calibration_need, plan_inputs
from optimum_prune.structured import prune_structured

SENTENCES = [s.strip() + "." for s in TEXT.split(".") if s.strip()][:40]


pytestmark = pytest.mark.usefixtures("one_thread")


def _llama() -> torch.nn.Module:
    """2 layers; 6 query heads in 3 KV groups of 2 (grouped-query attention), head size 8; 96 FFN channels."""
    return tiny_llama(num_hidden_layers=2)


def _token_samples(count: int = 3, length: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(4, 100, (1, length), generator=generator)} for _ in range(count)]


def _sentence_samples(count: int = 4) -> list[dict[str, torch.Tensor]]:
    """One example per sentence, of different lengths (as encoders calibrate), without attention masks."""
    tokenizer = make_tokenizer()
    return [
        {k: v for k, v in tokenizer(s, return_tensors="pt").items() if k != "attention_mask"}
        for s in SENTENCES[:count]
    ]


def _prepare(model: torch.nn.Module, samples, **config):
    config = PruningConfig(criterion="taylor", **config)
    return CRITERIA["taylor"].prepare(get_adapter(model), config, show_progress=False, samples=samples)


def _criterion_scores(criterion, model: torch.nn.Module, kind: str) -> list[torch.Tensor]:
    adapter = get_adapter(model)
    return [
        criterion.score_units(adapter, layer, group, None, torch.Generator())
        for layer in adapter.layers()
        for group in adapter.groups(layer)
        if group.kind == kind
    ]


# ---- hand computations ----------------------------------------------------------------------------------------------
def _llama_batch_loss(model, samples):
    ids = torch.cat([sample["input_ids"] for sample in samples])  # equal lengths: the reference's batch
    return model(input_ids=ids, labels=ids).loss


def _predicted_label_loss(model, samples):
    """Mean over the samples of the cross-entropy to the model's own argmax class."""
    losses = []
    for sample in samples:
        logits = model(**sample).logits
        losses.append(F.cross_entropy(logits, logits.argmax(-1)))
    return torch.stack(losses).mean()


def _saliences(model, samples, loss, variant: str) -> dict[str, torch.Tensor]:
    """name -> w * dL/dw (or the variant's second-order estimate), float64, on an eval-mode copy of `model`."""
    model = copy.deepcopy(model).eval()
    for param in model.parameters():
        param.requires_grad_(True)
    names, params = zip(*model.named_parameters())
    gradients = torch.autograd.grad(loss(model, samples), params)
    fisher = [torch.zeros_like(p) for p in params]
    if variant in ("param_mix", "param_second"):
        for sample in samples:  # the Fisher diagonal: mean squared per-sample gradient
            for total, grad in zip(fisher, torch.autograd.grad(loss(model, [sample]), params)):
                total += grad.square() / len(samples)
    out = {}
    for name, param, grad, square in zip(names, params, gradients, fisher):
        w, g, f = param.detach().double(), grad.double(), square.double()
        out[name] = {
            "param_first": w * g,
            "vectorize": w * g,
            "param_mix": w * g - 0.5 * w * w * f,
            "param_second": w * w * f,
        }[variant]
    return out


def _reducers(variant: str):
    """Per row and per column of a salience matrix: |sum| for 'vectorize', the sum of |.| otherwise."""
    if variant == "vectorize":
        return (lambda t: t.sum(1).abs()), (lambda t: t.sum(0).abs())
    return (lambda t: t.abs().sum(1)), (lambda t: t.abs().sum(0))


def _llama_hand_scores(model, salience, kind: str, variant: str) -> list[torch.Tensor]:
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    kv_heads, n_rep = config.num_key_value_heads, config.num_attention_heads // config.num_key_value_heads
    rows, columns = _reducers(variant)
    scores = []
    for i in range(config.num_hidden_layers):
        s = {
            name: salience[f"model.layers.{i}.{name}.weight"]
            for name in (
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            )
        }
        q, k, v = rows(s["self_attn.q_proj"]), rows(s["self_attn.k_proj"]), rows(s["self_attn.v_proj"])
        o = columns(s["self_attn.o_proj"])
        if kind == "attention_heads":  # a KV group: its n_rep query heads, its key and value head, o_proj columns
            width = n_rep * head_dim
            unit = [
                q[g * width : (g + 1) * width].sum()
                + k[g * head_dim : (g + 1) * head_dim].sum()
                + v[g * head_dim : (g + 1) * head_dim].sum()
                + o[g * width : (g + 1) * width].sum()
                for g in range(kv_heads)
            ]
            scores.append(torch.stack(unit))
        elif kind == "query_heads":
            heads = config.num_attention_heads
            unit = [
                q[h * head_dim : (h + 1) * head_dim].sum() + o[h * head_dim : (h + 1) * head_dim].sum()
                for h in range(heads)
            ]
            scores.append(torch.stack(unit))
        else:
            scores.append(rows(s["mlp.gate_proj"]) + rows(s["mlp.up_proj"]) + columns(s["mlp.down_proj"]))
    return scores


def _bert_hand_scores(model, salience, kind: str) -> list[torch.Tensor]:
    config = model.config
    head_size = config.hidden_size // config.num_attention_heads
    scores = []
    for i in range(config.num_hidden_layers):
        p = f"bert.encoder.layer.{i}."
        if kind == "attention_heads":  # query / key / value rows with their biases, attention output columns
            per_row = sum(
                salience[f"{p}attention.self.{n}.weight"].abs().sum(1) + salience[f"{p}attention.self.{n}.bias"].abs()
                for n in ("query", "key", "value")
            )
            per_row = per_row + salience[f"{p}attention.output.dense.weight"].abs().sum(0)
            scores.append(per_row.reshape(config.num_attention_heads, head_size).sum(1))
        else:  # intermediate rows and bias, output columns
            scores.append(
                salience[f"{p}intermediate.dense.weight"].abs().sum(1)
                + salience[f"{p}intermediate.dense.bias"].abs()
                + salience[f"{p}output.dense.weight"].abs().sum(0)
            )
    return scores


def _assert_scores(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected) and actual
    for got, want in zip(actual, expected):
        assert float(want.abs().max()) > 0
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-6 * float(want.abs().max()))


# ---- (a) the scores are the hand computation ------------------------------------------------------------------------
@pytest.mark.parametrize("variant", TAYLOR_VARIANTS)
def test_llama_gqa_scores_are_sums_of_w_times_gradient_over_each_unit(variant):
    model, samples = _llama(), _token_samples()
    salience = _saliences(model, samples, _llama_batch_loss, variant)
    criterion = _prepare(model, samples, taylor_variant=variant)
    for kind in ("attention_heads", "ffn_channels"):
        _assert_scores(_criterion_scores(criterion, model, kind), _llama_hand_scores(model, salience, kind, variant))
    # Single query heads (their q rows and o_proj columns; keys and values stay) when those are pruned.
    criterion = _prepare(model, samples, taylor_variant=variant, structures=["query_heads"])
    _assert_scores(
        _criterion_scores(criterion, model, "query_heads"), _llama_hand_scores(model, salience, "query_heads", variant)
    )
    with pytest.raises(RuntimeError, match="no scores"):  # only the kinds of the run are scored
        _criterion_scores(criterion, model, "ffn_channels")


def test_bert_classifier_scores_use_the_predicted_label_in_eval_mode():
    model, samples = tiny_bert(), _sentence_samples()
    model.train()  # dropout on: the criterion must take its gradients without it, as the hand computation does
    salience = _saliences(model, samples, _predicted_label_loss, "param_first")
    criterion = _prepare(model, samples)
    assert model.training
    for kind in ("attention_heads", "ffn_channels"):
        _assert_scores(_criterion_scores(criterion, model, kind), _bert_hand_scores(model, salience, kind))


def test_question_answering_loss_is_the_predicted_span():
    model, samples = tiny_bert(head="qa"), _sentence_samples(1)
    with torch.no_grad():
        out = model(**samples[0])
        expected = (
            F.cross_entropy(out.start_logits, out.start_logits.argmax(-1))
            + F.cross_entropy(out.end_logits, out.end_logits.argmax(-1))
        ) / 2
        assert torch.allclose(calibration_loss(model, samples[0]), expected)
    scores = _criterion_scores(_prepare(model, samples), model, "ffn_channels")
    assert all(bool((s > 0).all()) for s in scores)


def test_regression_head_is_refused():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_labels=1
    )
    model = BertForSequenceClassification(config).eval()
    with pytest.raises(ValueError, match="regression head"):
        _prepare(model, _sentence_samples(1))


# ---- (b) the model is left as it was --------------------------------------------------------------------------------
def test_prepare_leaves_parameters_flags_gradients_and_modes_unchanged():
    model, samples = _llama(), _token_samples()
    model.model.embed_tokens.weight.requires_grad_(False)  # a frozen parameter stays frozen
    down = model.model.layers[0].mlp.down_proj.weight
    down.grad = torch.full_like(down, 0.5)  # a gradient that was there stays, untouched
    model.train()
    model.model.layers[1].eval()
    parameters = {name: (param, param.detach().clone()) for name, param in model.named_parameters()}
    flags = {name: param.requires_grad for name, param in model.named_parameters()}
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
    modes = {name: module.training for name, module in model.named_modules()}

    criterion = _prepare(model, samples, taylor_variant="param_mix")

    assert criterion.loss is not None and criterion.loss > 0
    for name, param in model.named_parameters():
        assert param is parameters[name][0], name
        assert torch.equal(param, parameters[name][1]), name
        assert param.requires_grad == flags[name], name
        if grads[name] is None:
            assert param.grad is None, name
        else:
            assert torch.equal(param.grad, grads[name]), name
    assert {name: module.training for name, module in model.named_modules()} == modes


# ---- (c) end to end -------------------------------------------------------------------------------------------------
def _end_to_end_cases():
    return {
        "llama": (_llama, PrunerForCausalLM, [TEXT]),
        "bert": (tiny_bert, PrunerForSequenceClassification, SENTENCES),
        "mamba": (tiny_mamba, PrunerForCausalLM, [TEXT]),
        "mamba2": (BY_NAME["mamba2"].build, PrunerForCausalLM, [TEXT]),
    }


@pytest.mark.parametrize("name", list(_end_to_end_cases()))
def test_pruning_with_taylor_and_liar_keeps_the_requested_sparsity(name):
    build, pruner_class, dataset = _end_to_end_cases()[name]
    model = build()
    pruner = pruner_class(model, make_tokenizer())
    sparsity = 0.5 if name == "mamba2" else 0.3  # 4 SSM heads per layer: half is the nearest step
    config = PruningConfig(
        sparsity=sparsity, criterion="taylor", reconstruction="liar", dataset=dataset, num_samples=8, seqlen=32
    )
    pruner.prune(config, show_progress=False)
    summary = pruner.summary
    assert abs(summary["sparsity_achieved"] - sparsity) < 0.08, summary["sparsity_achieved"]
    assert summary["parameters_after"] < summary["parameters_before"]
    ids = torch.tensor([[5, 17, 33, 48, 9, 60, 71, 12]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert all(p.grad is None for p in model.parameters())


def test_units_are_ranked_by_the_dense_models_scores():
    """Every layer keeps the top units of the scores of the unpruned model, though earlier layers were pruned and
    refit before its turn."""
    model, samples = _llama(), _token_samples(count=4, length=24)
    dense = copy.deepcopy(model)
    config = PruningConfig(sparsity=0.5, criterion="taylor", reconstruction="liar", num_samples=4, seqlen=24)
    result = prune_structured(model, get_adapter(model), config, samples, show_progress=False)
    criterion = _prepare(dense, samples)
    adapter = get_adapter(dense)
    removed = []
    for index, layer in enumerate(adapter.layers()):
        for group in adapter.groups(layer):
            if group.kind not in result.kinds:
                continue
            scores = criterion.score_units(adapter, layer, group, None, torch.Generator())
            keep = adapter.select_units(group, scores, result.plans[index][group.kind])
            assert result.kept_units[index][group.kind] == keep.tolist(), (index, group.kind)
            removed.append((index, group.kind, group.num_units - len(keep)))
    # Both layers lose KV groups and FFN channels, so a ranking on the pruned model could differ.
    assert [(i, kind) for i, kind, count in removed if count] == [
        (0, "attention_heads"),
        (0, "ffn_channels"),
        (1, "attention_heads"),
        (1, "ffn_channels"),
    ], removed


def test_offloaded_model_is_refused(tmp_path):
    model = tiny_llama(
        hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    )
    model.save_pretrained(tmp_path / "model")
    make_tokenizer().save_pretrained(tmp_path / "model")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    pruner = PrunerForCausalLM.from_pretrained(
        str(tmp_path / "model"),
        device_map="auto",
        max_memory={"cpu": size // 2},
        offload_folder=str(tmp_path / "offload"),
    )
    assert is_offloaded(pruner.model)
    with pytest.raises(ValueError, match="offloaded model"):
        pruner.prune(sparsity=0.3, criterion="taylor", dataset=[TEXT], num_samples=2, seqlen=16, show_progress=False)


# ---- (d) planning and configuration ---------------------------------------------------------------------------------
def test_planning_says_taylor_needs_calibration_data():
    need = calibration_need(PruningConfig(criterion="taylor", reconstruction="none"))
    assert need is not None and (need.field, need.value) == ("criterion", "taylor")
    assert not need.falls_back and "taylor" not in need.instead
    assert "criterion 'taylor'" in plan_inputs(PruningConfig(criterion="taylor", allocation="global")).data
    pruner = PrunerForCausalLM(_llama(), make_tokenizer())
    with pytest.raises(ValueError, match="calibration"):
        pruner.plan(PruningConfig(criterion="taylor", allocation="global"))


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("taylor") / "llama"
    _llama().save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


def test_dry_run_without_dataset(saved_llama, tmp_path, capsys):
    # A uniform plan follows from the config; the dry run says the run itself needs --dataset.
    capsys.readouterr()
    arguments = ["-m", saved_llama, "--sparsity", "0.3", "--criterion", "taylor", "--reconstruction", "none"]
    assert main([*arguments, "--dry-run", "--json", "--no-progress", str(tmp_path / "never")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert any("The run itself needs --dataset" in note and "taylor" in note for note in plan["notes"])
    # A global plan ranks units by the gradients: one line, exit status 1.
    assert main([*arguments, "--allocation", "global", "--dry-run", "--no-progress", str(tmp_path / "never")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "depends on calibration data" in lines[0] and "taylor" in lines[0], lines


def test_dry_run_with_dataset_matches_the_run(saved_llama, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    arguments = [
        "-m",
        saved_llama,
        "--sparsity",
        "0.3",
        "--criterion",
        "taylor",
        "--allocation",
        "global",
        "--reconstruction",
        "none",
        "--dataset",
        str(text),
        "--num-samples",
        "4",
        "--seqlen",
        "32",
    ]
    capsys.readouterr()
    assert main([*arguments, "--dry-run", "--json", "--no-progress", str(tmp_path / "never")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["reads"] == ["config", "weights", "data"]
    assert main([*arguments, "--json", "--no-progress", str(tmp_path / "pruned")]) == 0
    run = json.loads(capsys.readouterr().out)
    assert plan["totals"]["parameters_after"] == run["after"]["parameters"]


def test_taylor_variant_is_validated_and_on_the_command_line():
    with pytest.raises(ValueError, match="Unknown taylor_variant 'param_third'. Choose one of:"):
        PruningConfig(taylor_variant="param_third")
    option = {o.field: o for o in CONFIG_OPTIONS}["taylor_variant"]
    assert option.metavar == "{" + ",".join(TAYLOR_VARIANTS) + "}" and "param_first" in option.help
    assert "'taylor'" in {o.field: o for o in CONFIG_OPTIONS}["criterion"].help
    assert PruningConfig.from_dict(PruningConfig(taylor_variant="vectorize").to_dict()).taylor_variant == "vectorize"


# ---- what a unit owns -----------------------------------------------------------------------------------------------
def _numbered(layer: torch.nn.Module) -> set[float]:
    """Give every parameter entry of `layer` its own id (float64, from 1) and return the ids."""
    layer.double()
    offset = 1
    for param in layer.parameters():
        param.data = torch.arange(offset, offset + param.numel(), dtype=torch.float64).reshape(param.shape)
        offset += param.numel()
    return set(range(1, offset))


def _ids(layer: torch.nn.Module) -> set[float]:
    return set(torch.cat([p.detach().reshape(-1) for p in layer.parameters()]).tolist()) - {0.0}


@pytest.mark.parametrize("entry", [e for e in ARCHITECTURES if STRUCTURED in e.capabilities], ids=lambda e: e.name)
def test_unit_parameters_are_what_pruning_removes(entry):
    """Each unit owns `params_per_unit` entries, no two slices overlap, and removing units removes exactly the entries
    `unit_parameters` gives them (zeroed, for experts whose stack waits for the layer's other experts)."""
    base = entry.build()
    adapter = get_adapter(base)
    checked = 0
    for layer_index in range(len(adapter.layers())):
        groups = adapter.groups(adapter.layers()[layer_index])
        for position, group in enumerate(groups):
            if group.kind not in adapter.structure_kinds:
                continue
            model = copy.deepcopy(base)
            copy_adapter = get_adapter(model)
            layer = copy_adapter.layers()[layer_index]
            before = _numbered(layer)
            group = copy_adapter.groups(layer)[position]
            owned: list[set[float]] = [set() for _ in range(group.num_units)]
            slices = copy_adapter.unit_parameters(layer, group)
            for piece in slices:
                tensor = piece.tensor(layer).detach()
                for unit in range(group.num_units):
                    entries = tensor.index_select(piece.dim, piece.index[unit]).reshape(-1).tolist()
                    assert owned[unit].isdisjoint(entries), (group.kind, piece.parameter)
                    owned[unit].update(entries)
            assert {len(entries) for entries in owned} == {group.params_per_unit}, group.kind
            assert sum(piece.entries_per_unit(layer) for piece in slices) == group.params_per_unit
            keep_count = max(group.keep_multiple, group.num_units // 2 // group.keep_multiple * group.keep_multiple)
            scores = torch.rand(group.num_units, generator=torch.Generator().manual_seed(position))
            keep = copy_adapter.select_units(group, scores, keep_count)
            copy_adapter.prune_units(layer, group, keep)
            removed = set(range(group.num_units)) - set(keep.tolist())
            assert removed
            assert before - _ids(layer) == set().union(*(owned[unit] for unit in removed)), group.kind
            checked += 1
    assert checked
