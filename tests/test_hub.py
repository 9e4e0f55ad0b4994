"""Publishing a pruned checkpoint folder to the Hub, tested against a real HTTP server on 127.0.0.1 (tests/fake_hub.py).

How the client is pointed at the fake server (huggingface_hub reads HF_ENDPOINT once, at import):

- Uploads run in this process, with `huggingface_hub.constants.ENDPOINT` patched. That is enough for every call
  `push_folder_to_hub` makes: `HfApi()` copies `constants.ENDPOINT` when it is created (inside the call), and the
  create-repo, branch, validate-yaml, preupload, commit and pull-request requests all use `HfApi.endpoint`. Running in
  this process lets the tests catch `HubPublishError` directly and skip the client's retry sleeps.
- Downloads run in a subprocess started with HF_ENDPOINT in its environment. `snapshot_download`,
  `hf_hub_download` and transformers' Hub code build URLs and check redirect hosts from values computed at import
  time, so only a fresh process sees the fake endpoint everywhere; it also gets fresh, private caches and HF_HOME.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http
from transformers import LlamaConfig, LlamaForCausalLM

from optimum_prune.serialization.hub import HubPublishError, create_model_card, push_folder_to_hub

try:  # tests/ on sys.path (rootdir-relative import mode, no tests/__init__.py)
    from fake_hub import FakeHub
except ImportError:  # tests/ is a package
    from tests.fake_hub import FakeHub

REPO_ID = "fake-user/tiny-pruned-llama"
BASE_MODEL = "fake-org/tiny-llama"
TOKEN = "fake-token"
INPUT_IDS = [[1, 7, 42, 99, 3, 64, 127, 0, 15]]

PRUNING_CONFIG = {
    "target": "structured",
    "sparsity": 0.25,
    "criterion": "activation",
    "reconstruction": "liar",
    "method": "sparsegpt",
    "allocation": "uniform",
    "structures": ["attention_heads", "ffn_channels"],
    "round_to": 8,
    "min_keep_fraction": 0.05,
    "layer_overrides": {"0": {"sparsity": 0.0}},
    "modules_to_not_prune": ["lm_head", "embed"],
    "dataset": "wikitext2",
    "num_samples": 16,
    "seqlen": 64,
    "damp": 0.01,
    "seed": 0,
}
EVAL_RESULTS = {
    "perplexity": {
        "value": 21.3,
        "dataset": "wikitext",
        "dataset_name": "WikiText-2",
        "dataset_config": "wikitext-2-raw-v1",
        "split": "test",
        "base_value": 18.9,
    },
    "accuracy": [
        {"value": 0.61, "dataset": "piqa", "split": "validation", "task": "multiple-choice"},
        {"value": 0.55, "dataset": "hellaswag", "split": "validation", "task": "multiple-choice"},
    ],
}

# Downloads in a fresh process, so HF_ENDPOINT is read at import (see the module docstring). Writes the logits of
# both loads next to the inputs and prints what the test checks as one JSON line.
CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM

    repo_id, work, snapshot_cache, hub_cache = sys.argv[1:5]
    input_ids = torch.load(f"{work}/input_ids.pt")
    snapshot = snapshot_download(repo_id, cache_dir=snapshot_cache)
    for name, source, kwargs in (("folder", snapshot, {}), ("hub", repo_id, {"cache_dir": hub_cache})):
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs).eval()
        with torch.no_grad():
            torch.save(model(input_ids).logits, f"{work}/logits_{name}.pt")
    print(json.dumps({"snapshot": snapshot}))
    """
)


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------------------


def _layers(config: LlamaConfig) -> list[dict[str, int]]:
    return [
        {
            "layer": i,
            "num_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "intermediate_size": config.intermediate_size,
        }
        for i in range(config.num_hidden_layers)
    ]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A saved tiny Llama with pruning_config.json and a model card, plus its logits on INPUT_IDS."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    input_ids = torch.tensor(INPUT_IDS)
    with torch.no_grad():
        logits = model(input_ids).logits

    folder = tmp_path_factory.mktemp("checkpoint") / "tiny-pruned-llama"
    model.save_pretrained(folder)
    (folder / "pruning_config.json").write_text(json.dumps(PRUNING_CONFIG, indent=2, sort_keys=True) + "\n")
    parameters = sum(p.numel() for p in model.parameters())
    summary = {
        "model_type": "llama",
        "parameters_before": parameters + 4096,
        "parameters_after": parameters,
        "layers": _layers(config),
        "sparsity_achieved": 0.26,
    }
    card = create_model_card(
        base_model=BASE_MODEL,
        pipeline_tag="text-generation",
        pruning_config=PRUNING_CONFIG,
        summary=summary,
        eval_results=EVAL_RESULTS,
        language="en",
        repo_id=REPO_ID,
    )
    card.save(folder / "README.md")
    return SimpleNamespace(folder=folder, input_ids=input_ids, logits=logits, summary=summary)


@pytest.fixture
def use_hub(monkeypatch: pytest.MonkeyPatch):
    """Point this process's huggingface_hub at a started FakeHub (see the module docstring for why this works)."""

    def point(hub: FakeHub) -> None:
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.endpoint)
        # A CI machine may run with HF_HUB_OFFLINE=1; these tests only talk to 127.0.0.1.
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        # The client retries a failed commit 5 times with 1+2+4+8+8 s of sleep; the retries still happen, instantly.
        monkeypatch.setattr(hf_http, "time", SimpleNamespace(sleep=lambda _seconds: None))

    yield point
    # Drop pooled keep-alive connections to the stopped server, in case the OS hands its port to a later one.
    hf_http.close_session()


def _hashes(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` with the sha256 of its content ("dir" for folders)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        found[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _local_files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def _run_client(hub: FakeHub, work: Path, input_ids: torch.Tensor) -> dict:
    torch.save(input_ids, work / "input_ids.pt")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_")) and key not in ("TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE")
    }
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(work / "hf_home"),
        HF_HUB_CACHE=str(work / "hub_cache"),
        HF_TOKEN=TOKEN,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        TRANSFORMERS_VERBOSITY="error",
        # The logits are compared bit for bit with the test process, which runs torch on one thread (conftest).
        OMP_NUM_THREADS="1",
    )
    args = [REPO_ID, str(work), str(work / "snapshot_cache"), str(work / "hub_cache")]
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"download client failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------------------------------------


def test_push_then_download_and_load_gives_identical_logits(checkpoint, use_hub, tmp_path):
    before = _hashes(checkpoint.folder)
    with FakeHub(token=TOKEN) as hub:
        use_hub(hub)
        url = push_folder_to_hub(checkpoint.folder, REPO_ID, token=TOKEN, commit_message="Upload tiny pruned llama")

        assert url.startswith(f"{hub.endpoint}/{REPO_ID}/commit/")
        assert hub.count("POST", "/commit/") == 1, "the folder must go up as one commit"
        served = hub.files(REPO_ID)
        assert served.pop(".gitattributes")  # written by the Hub when the repo is created
        assert served == _local_files(checkpoint.folder)

        result = _run_client(hub, tmp_path, checkpoint.input_ids)

        # Both loads fetched the weights through /resolve (two fresh caches), and the client needed no route
        # this fake does not implement.
        assert hub.count("GET", "/model.safetensors") == 2
        assert hub.unhandled == []

    assert torch.equal(torch.load(tmp_path / "logits_folder.pt"), checkpoint.logits)
    assert torch.equal(torch.load(tmp_path / "logits_hub.pt"), checkpoint.logits)
    snapshot = Path(result["snapshot"])
    assert _local_files(snapshot).keys() == {".gitattributes", *_local_files(checkpoint.folder)}
    assert (snapshot / "pruning_config.json").read_bytes() == (checkpoint.folder / "pruning_config.json").read_bytes()
    downloaded_card = ModelCard.load(snapshot / "README.md")
    assert downloaded_card.data.to_dict() == ModelCard.load(checkpoint.folder / "README.md").data.to_dict()
    assert _hashes(checkpoint.folder) == before


def test_second_push_of_unchanged_folder_makes_no_commit(checkpoint, use_hub):
    with FakeHub(token=TOKEN) as hub:
        use_hub(hub)
        first = push_folder_to_hub(checkpoint.folder, REPO_ID, token=TOKEN)
        second = push_folder_to_hub(checkpoint.folder, REPO_ID, token=TOKEN)
        assert second == first
        assert hub.count("POST", "/commit/") == 1


def test_pull_request_and_branch_leave_main_alone(checkpoint, use_hub, tmp_path):
    folder = tmp_path / "changed"
    shutil.copytree(checkpoint.folder, folder)
    with FakeHub(token=TOKEN) as hub:
        use_hub(hub)
        push_folder_to_hub(checkpoint.folder, REPO_ID, token=TOKEN)
        main_files = hub.files(REPO_ID)
        (folder / "notes.txt").write_text("second thoughts\n")

        pr_url = push_folder_to_hub(folder, REPO_ID, token=TOKEN, create_pr=True)
        assert pr_url == f"{hub.endpoint}/{REPO_ID}/discussions/1"
        assert hub.files(REPO_ID, "refs/pr/1")["notes.txt"] == b"second thoughts\n"

        push_folder_to_hub(folder, REPO_ID, token=TOKEN, revision="experiments")
        assert "notes.txt" in hub.files(REPO_ID, "experiments")
        assert hub.files(REPO_ID) == main_files
        assert hub.unhandled == []


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------


def test_model_card_metadata_parses_back(checkpoint):
    card = ModelCard.load(checkpoint.folder / "README.md")
    data = card.data

    assert data.base_model == BASE_MODEL
    # The Hub knows adapter/merge/quantized/finetune only; see BASE_MODEL_RELATION in hub.py.
    assert data.base_model_relation == "finetune"
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation"
    assert data.language == "en"
    assert {"pruned", "optimum-prune", "structured-pruning", "criterion-activation", "reconstruction-liar"} <= set(
        data.tags
    )

    assert data.model_name == "tiny-llama-pruned"
    results = {(r.metric_type, r.dataset_type): r for r in data.eval_results}
    assert set(results) == {("perplexity", "wikitext"), ("accuracy", "piqa"), ("accuracy", "hellaswag")}
    perplexity = results["perplexity", "wikitext"]
    assert perplexity.metric_value == 21.3
    assert perplexity.task_type == "text-generation"
    assert perplexity.dataset_name == "WikiText-2"
    assert perplexity.dataset_config == "wikitext-2-raw-v1"
    assert perplexity.dataset_split == "test"
    assert results["accuracy", "piqa"].task_type == "multiple-choice"
    assert "base_value" not in card.content.split("---")[1]  # the base score is for the text table only


def test_model_card_text_has_removal_recipe_and_loading(checkpoint):
    text = ModelCard.load(checkpoint.folder / "README.md").text
    summary = checkpoint.summary

    assert f"| Before | {summary['parameters_before']:,}" in text
    assert f"| After | {summary['parameters_after']:,}" in text
    assert "| Removed | 4,096 (4.10K), 13.3% of the model |" in text
    assert "| layer | num_heads | num_key_value_heads | intermediate_size |" in text
    assert "| 1 | 4 | 2 | 64 |" in text

    recipe = text.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(recipe) == PRUNING_CONFIG
    assert "from optimum_prune import PruningConfig, PrunerForCausalLM" in text
    assert f"PrunerForCausalLM.from_pretrained('{BASE_MODEL}')" in text
    assert "layer_overrides={'0': {'sparsity': 0.0}}" in text
    cli = text.split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert cli.startswith(f"optimum-cli prune \\\n    --model {BASE_MODEL} \\\n    --target structured \\\n")
    assert "    --structures attention_heads ffn_channels \\\n" in cli
    assert '    --layer-overrides \'{"0": {"sparsity": 0.0}}\' \\\n' in cli
    assert cli.endswith("\n    tiny-llama-pruned")

    assert "import optimum_prune" in text
    assert f"AutoModelForCausalLM.from_pretrained('{REPO_ID}')" in text
    assert "| Perplexity" in text or "| perplexity |" in text
    assert "| 21.3 | 18.9 |" in text


def test_model_card_without_eval_results_has_no_model_index():
    card = create_model_card(
        base_model=None,
        pipeline_tag=None,
        pruning_config={"target": "unstructured", "sparsity": 0.5, "method": "wanda", "dataset": None},
        summary={"parameters_before": 100, "parameters_after": 100, "model_type": "bert"},
    )
    data = ModelCard(str(card)).data.to_dict()
    assert "model-index" not in data and "model_name" not in data and "base_model" not in data
    assert set(data["tags"]) == {"pruned", "optimum-prune", "unstructured-pruning", "method-wanda"}
    assert "## Evaluation" not in card.text
    assert "calibration data was passed in memory" in card.text


@pytest.mark.parametrize(
    "base_model, shown, load",
    [
        ("/models/llama-7b", "llama-7b", "'llama-7b'"),
        ("org/llama-gguf/llama-Q8_0.gguf", "llama-gguf/llama-Q8_0.gguf", "'llama-gguf', gguf_file='llama-Q8_0.gguf'"),
    ],
)
def test_base_model_that_is_not_a_hub_id_stays_out_of_the_metadata(base_model, shown, load):
    card = create_model_card(
        base_model=base_model,
        pipeline_tag="text-generation",
        pruning_config=PRUNING_CONFIG,
        summary={"parameters_before": 10, "parameters_after": 5},
    )
    data = ModelCard(str(card)).data.to_dict()
    assert "base_model" not in data and "base_model_relation" not in data
    # A local path is the user's own: the card shows the folder's name, and the recipe runs beside that folder.
    assert f"a pruned version of `{shown}`" in card.text
    assert base_model not in str(card)
    assert f"PrunerForCausalLM.from_pretrained({load})" in card.text


@pytest.mark.parametrize(
    "eval_results, message",
    [
        ({"perplexity": {"dataset": "wikitext"}}, "'value'"),
        ({"perplexity": {"value": 3.0}}, "'dataset'"),
        ({"perplexity": {"value": 3.0, "dataset": "wikitext", "splt": "test"}}, "unknown keys ['splt']"),
        ({"perplexity": 3.0}, "must be a dict"),
    ],
)
def test_malformed_eval_results_are_rejected(eval_results, message):
    with pytest.raises(ValueError, match="eval_results") as info:
        create_model_card(
            base_model=BASE_MODEL,
            pipeline_tag="text-generation",
            pruning_config=PRUNING_CONFIG,
            summary={"parameters_before": 10, "parameters_after": 5},
            eval_results=eval_results,
        )
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "server, expected",
    [
        ({"fail": "unauthorized"}, ["HTTP 401", "token", "hf auth login"]),
        ({"fail": "create_not_found"}, ["HTTP 404", "creating the repository", "does not exist", "HF_ENDPOINT"]),
        ({"drop_commits": None}, ["Lost the connection", "uploading the folder", "Nothing was changed locally"]),
    ],
    ids=["401-everywhere", "404-on-create", "connection-dropped-mid-commit"],
)
def test_publish_errors_are_clear_and_leave_the_folder_alone(checkpoint, use_hub, server, expected):
    before = _hashes(checkpoint.folder)
    with FakeHub(token=TOKEN, **server) as hub:
        use_hub(hub)
        with pytest.raises(HubPublishError) as info:
            push_folder_to_hub(checkpoint.folder, REPO_ID, token=TOKEN)
        endpoint = hub.endpoint
        committed = hub.files(REPO_ID) if REPO_ID in hub.repos else {}
        attempts = hub.commit_attempts

    message = str(info.value)
    for part in (*expected, endpoint, REPO_ID):
        assert part in message, f"{part!r} not in: {message}"
    assert info.value.endpoint == endpoint
    assert info.value.__cause__ is not None, "the huggingface_hub error must be chained"
    assert set(committed) <= {".gitattributes"}, "nothing may be committed"
    if "drop_commits" in server:
        assert attempts > 1, "the client should have retried the commit before giving up"
    assert _hashes(checkpoint.folder) == before


def test_one_dropped_commit_is_retried_by_the_client(checkpoint, use_hub):
    with FakeHub(token=TOKEN, drop_commits=1) as hub:
        use_hub(hub)
        url = push_folder_to_hub(checkpoint.folder, REPO_ID, token=TOKEN)
        assert hub.commit_attempts == 2
        assert url.endswith(hub.repos[REPO_ID].refs["main"])
        assert "model.safetensors" in hub.files(REPO_ID)


def test_unreachable_endpoint_is_named(checkpoint, use_hub):
    hub = FakeHub(token=TOKEN).start()
    use_hub(hub)
    endpoint = hub.endpoint
    hub.stop()  # the port is now closed: connection refused
    before = _hashes(checkpoint.folder)
    with pytest.raises(HubPublishError, match="Cannot reach the Hub endpoint") as info:
        push_folder_to_hub(checkpoint.folder, REPO_ID, token=TOKEN)
    assert endpoint in str(info.value)
    assert _hashes(checkpoint.folder) == before


def test_wrong_token_is_rejected(checkpoint, use_hub):
    with FakeHub(token=TOKEN) as hub:
        use_hub(hub)
        with pytest.raises(HubPublishError, match="HTTP 401") as info:
            push_folder_to_hub(checkpoint.folder, REPO_ID, token="not-the-token")
        assert info.value.status_code == 401
        assert REPO_ID not in hub.repos


def test_pushed_card_loads_from_the_repo_id_and_records_the_dataset(use_hub, tmp_path):
    from conftest import TEXT, make_tokenizer, tiny_llama

    from optimum_prune import PrunerForCausalLM, PruningConfig

    source = tmp_path / "my-llama"
    tiny_llama().save_pretrained(source)
    make_tokenizer().save_pretrained(source)
    (tmp_path / "wiki.txt").write_text(TEXT)
    pruner = PrunerForCausalLM.from_pretrained(source)
    config = PruningConfig(sparsity=0.3, dataset=str(tmp_path / "wiki.txt"), num_samples=2, seqlen=32)
    pruner.prune(config, show_progress=False)
    folder = tmp_path / "out"
    pruner.save_pretrained(folder)
    assert "from_pretrained('my-llama-pruned')" in (folder / "README.md").read_text()  # not pushed yet: its name

    with FakeHub(token=TOKEN) as hub:
        use_hub(hub)
        pruner.push_to_hub(REPO_ID, folder=folder, token=TOKEN)
        card = hub.files(REPO_ID)["README.md"].decode()
    assert f"AutoModelForCausalLM.from_pretrained('{REPO_ID}')" in card
    # The calibration file by its name and content hash: its path is this machine's, of no use to a reader.
    assert "--dataset wiki.txt" in card and "PrunerForCausalLM.from_pretrained('my-llama')" in card
    assert hashlib.sha256(TEXT.encode()).hexdigest() in card
    assert str(tmp_path) not in card
