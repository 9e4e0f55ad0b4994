"""Task pruners in the shape of Optimum's quantizers: `from_pretrained`, `prune`, `save_pretrained`, `push_to_hub`."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import transformers
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from .architectures import ADAPTERS, UnsupportedArchitectureError, get_adapter
from .checks import check_sequence_length
from .configuration import PruningConfig
from .data.calibration import (
    RANDOM_TOKENS,
    TOKEN_IDS_FORMS,
    CalibrationDataError,
    check_token_ids,
    load_texts,
    random_token_samples,
    sample_examples,
    sample_id_examples,
    sample_id_windows,
    sample_token_windows,
    token_id_rows,
)
from .offline import hub_unreachable_error, is_hub_unreachable
from .pipeline.blocks import find_blocks
from .pipeline.offload import is_offloaded, new_offloaded_zero_biases
from .planning import PruningPlan, calibration_need, plan_inputs, plan_pruning, without_refit
from .serialization.layout import count_parameters, pruned_heads, record_layout
from .serialization.save import save_pruned_checkpoint
from .structured import needs_calibration, prune_structured, pruned_kinds
from .tasks import TASKS, Task, task_for_pipeline

if TYPE_CHECKING:  # imported where used: the evaluation loops bring scikit-learn and scipy
    from .evaluation import EvaluationData, EvaluationResults, EvaluationSpec, TaskResult
    from .planning import PruningResult

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _time_left_message(
    model: PreTrainedModel, config: PruningConfig, samples: list[dict[str, torch.Tensor]] | None
) -> Iterator[None]:
    """Log once, after the run's first block, "about N minutes left on this machine (M blocks, X s for the first)".

    The first block's wall time is scaled by the per-block ratios of `cost.plan_cost`, counted before any weight
    changes from the plan of `config` (a plan that reads data or weights, such as a global allocation, is counted
    with its uniform counterpart of the same sparsity: same solver, same shapes give the ratios). Depth pruning and
    data-free runs log nothing. The message is a courtesy: counting the plan never fails the run.
    """
    from .cost import _EtaLogger, plan_cost
    from .pipeline import block_timings

    cost = None
    depth = config.structures is not None and "layers" in config.structures
    if samples and not depth:
        try:
            uniform = copy.copy(config)
            uniform.allocation = "uniform"
            plan = plan_pruning(model, uniform, adapter=get_adapter(model) if config.is_structured else None)
            tokens = sum(int(sample["input_ids"].numel()) for sample in samples)
            seqlen = max(int(sample["input_ids"].shape[-1]) for sample in samples)
            cost = plan_cost(model, plan, tokens=tokens, seqlen=seqlen)
        except Exception as err:  # a projection must not stop a run
            logger.debug("No time-left projection: %s", err)
    if cost is None:
        yield
        return
    with block_timings(_EtaLogger(cost, logging.getLogger("optimum_prune.cost").info)):
        yield


class BasePruner:
    """Prunes one model. Subclasses fix the task: which Auto class loads it and how calibration text is cut.

    A subclass that sets `task` (a row of `optimum_prune.tasks.TASKS`) takes its Auto class, calibration format and
    pipeline tag from that row.
    """

    task: ClassVar[Task | None] = None
    auto_model_class: ClassVar[type] = AutoModel
    #: "windows": random fixed-length windows of the joined text (language models);
    #: "examples": one sequence per text (encoders, where a sentence is the natural unit).
    calibration_format: ClassVar[str] = "examples"
    pipeline_tag: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        task = cls.__dict__.get("task")
        if task is None:
            return
        from_task = {
            "auto_model_class": getattr(transformers, task.auto_class),
            "calibration_format": task.calibration_format,
            "pipeline_tag": task.pipeline_tag,
        }
        for name, value in from_task.items():
            if name not in cls.__dict__:  # set in the class body: that wins
                setattr(cls, name, value)

    def __init__(self, model: PreTrainedModel, tokenizer: Any | None = None) -> None:
        # Structured pruning needs an adapter; unstructured and N:M sparsity work on any model's blocks.
        try:
            self.adapter = get_adapter(model)
        except UnsupportedArchitectureError:
            self.adapter = None
        self.model = model
        self.tokenizer = tokenizer
        self.pruning_config: PruningConfig | None = None
        self.summary: dict[str, Any] | None = None
        self.base_model_name: str | None = getattr(model, "name_or_path", None) or None
        #: The input model's folder, if local: saving may never replace it.
        self.source_folder: str | None = self.base_model_name
        self._prune_incomplete = False
        #: The latest `evaluate()` results after pruning, merged by task: the model card's model-index.
        self.evaluation: EvaluationResults | None = None
        self._evaluation_baseline: dict[tuple[Any, ...], list[TaskResult]] = {}

    # ---- loading --------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike,
        *,
        gguf_file: str | None = None,
        dtype: torch.dtype | str = torch.float32,
        tokenizer: Any | None = None,
        device_map: str | dict[str, Any] | None = None,
        max_memory: dict[int | str, int | str] | None = None,
        offload_folder: str | os.PathLike | None = None,
        **model_kwargs: Any,
    ) -> BasePruner:
        """Load a model (a Hub id or a local folder; `gguf_file` for a GGUF checkpoint) and its tokenizer.

        `dtype="auto"` keeps the checkpoint's own dtype. A local path that does not exist raises FileNotFoundError;
        `revision`, `token` and `trust_remote_code` (in `model_kwargs`) also apply to the tokenizer.
        `device_map` ("auto" or a dict), `max_memory` and `offload_folder` are accelerate's big-model loading:
        a model larger than memory is pruned one block at a time, with offloaded blocks loaded for their turn
        and the pruned weights written back (to `offload_folder` for disk-offloaded ones).

        A Hub id that is not cached while the Hub is unreachable (`HF_HUB_OFFLINE=1`, no network) raises
        `optimum_prune.offline.HubUnreachableError` (a ConnectionError) with a one-line message; offline, the
        install ships SmolLM2-135M: `folder, gguf = optimum_prune.assets.smollm2_path()`, then
        `from_pretrained(folder, gguf_file=gguf)`.
        """
        model_name_or_path = str(model_name_or_path)
        _check_local_folder(model_name_or_path)
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        placement = {
            key: value
            for key, value in (
                ("device_map", device_map),
                ("max_memory", max_memory),
                ("offload_folder", offload_folder),
            )
            if value is not None
        }
        try:
            if tokenizer is None:
                # The tokenizer comes from the same revision, with the same credentials and trust, as the model.
                hub_options = {
                    k: model_kwargs[k] for k in ("revision", "token", "trust_remote_code") if k in model_kwargs
                }
                tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **extra, **hub_options)
            model = cls.auto_model_class.from_pretrained(
                model_name_or_path, dtype=dtype, **extra, **placement, **model_kwargs
            )
        except OSError as err:
            if os.path.exists(model_name_or_path) or not is_hub_unreachable(err):
                raise
            # Offline with an uncached Hub id: one line instead of huggingface_hub's chained traceback.
            raise hub_unreachable_error(
                f"model {model_name_or_path!r}",
                "download it once where the Hub is reachable (`hf download "
                f"{model_name_or_path}`) or pass a local folder",
            ) from None
        if gguf_file and is_offloaded(model):
            # GGUF weights are dequantized in memory and copied (below); offloading needs a safetensors checkpoint.
            raise ValueError(
                "Offloading is not supported for GGUF checkpoints: save the model with save_pretrained (safetensors) "
                "and load that folder with device_map/max_memory/offload_folder."
            )
        if gguf_file:
            # A GGUF-loaded model is marked as quantized and refuses save_pretrained; its weights are already
            # dequantized, so an ordinary copy of it is the same model.
            model = _plain_copy(model)
        model.eval()
        pruner = cls(model, tokenizer)
        pruner.base_model_name = model_name_or_path if not gguf_file else f"{model_name_or_path}/{gguf_file}"
        pruner.source_folder = model_name_or_path
        return pruner

    # ---- pruning --------------------------------------------------------------------------------------------
    def calibration_samples(self, config: PruningConfig) -> list[dict[str, torch.Tensor]]:
        """The calibration sequences of `config.dataset` (see `PruningConfig.dataset`), `config.num_samples` of
        `config.seqlen` tokens drawn with `config.seed`: random windows of the joined data for language models,
        one sequence per text or row for encoders. Token ids (`data.calibration.token_id_rows`) need no
        tokenizer; text and 'random-tokens' do."""
        check_sequence_length(config.seqlen, self.model.config)
        windows = self.calibration_format == "windows"
        rows = token_id_rows(config.dataset)
        if rows is not None:
            check_token_ids(rows, self._vocab_size())
            if windows:
                return sample_id_windows(rows, self.tokenizer, config.num_samples, config.seqlen, config.seed)
            pad = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer is not None else None
            if pad is None:
                pad = getattr(self.model.config, "pad_token_id", None)
            return sample_id_examples(rows, self.tokenizer, config.num_samples, config.seqlen, config.seed, pad)
        if self.tokenizer is None and config.dataset is not None:
            random_tokens = isinstance(config.dataset, str) and config.dataset == RANDOM_TOKENS
            what = "dataset='random-tokens' (its special tokens)" if random_tokens else "text"
            raise CalibrationDataError(
                f"Calibration on {what} needs a tokenizer: pass one to the pruner, or calibrate on token ids "
                f"({TOKEN_IDS_FORMS})."
            )
        if isinstance(config.dataset, str) and config.dataset == RANDOM_TOKENS:
            vocab_size = int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))
            return random_token_samples(
                self.tokenizer,
                vocab_size,
                config.num_samples,
                config.seqlen,
                config.seed,
                as_windows=self.calibration_format == "windows",
            )
        texts = load_texts(config.dataset)
        sampler = sample_token_windows if windows else sample_examples
        return sampler(texts, self.tokenizer, config.num_samples, config.seqlen, config.seed)

    def _vocab_size(self) -> int | None:
        """How many token ids the model embeds: its (text) config's vocab_size, else its input embedding's rows."""
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        size = getattr(text_config, "vocab_size", None)
        if size:
            return int(size)
        embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        return int(embeddings.num_embeddings) if isinstance(embeddings, torch.nn.Embedding) else None

    def prune(
        self,
        config: PruningConfig | None = None,
        *,
        dataset: Any = None,
        show_progress: bool = True,
        execution_device: torch.device | str | None = None,
        activations_device: torch.device | str | None = None,
        activations_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """Prune the model in place and return it. `dataset` (or `config.dataset`) is the calibration data: text
        (a list of strings, a datasets.Dataset, a local file or folder, 'wikitext2' / 'c4' / 'ptb'), which the
        pruner's tokenizer tokenizes, 'random-tokens', or token ids as llm-compressor's `oneshot` takes them (a
        LongTensor [n, seqlen], a list of 1-D tensors or of lists of ints, a datasets.Dataset or a tokenizer's
        output with an `input_ids` column; padding that an `attention_mask` marks is dropped), which need no
        tokenizer. Language models calibrate on `num_samples` random windows of `seqlen` tokens of the joined data
        (seeded by `seed`), encoders on one sequence per text or row, truncated to `seqlen`.

        Keyword arguments build a `PruningConfig` when `config` is not given. `execution_device` (where each block
        is pruned; default: where the model's accelerate hooks or weights say), `activations_device` and
        `activations_dir` (where calibration activations wait between blocks: a device, or files in a folder)
        change where the work happens, not its result; see `layerwise.BlockStreamer`.
        """
        config = self._checked_config(config, dataset, kwargs)
        model = self.model
        # Until this run finishes, the model may be half-pruned: save_pretrained refuses to write it.
        self._prune_incomplete = True
        placement = {
            "execution_device": execution_device,
            "activations_device": activations_device,
            "activations_dir": activations_dir,
        }
        parameters_before = count_parameters(model)
        prunable_before = (
            self.adapter.count_prunable_parameters(pruned_kinds(self.adapter, config)) if config.is_structured else 0
        )
        heads_before = (
            [
                g.num_units * self.adapter.heads_per_unit(layer)
                for layer in self.adapter.layers()
                for g in self.adapter.groups(layer)
                if g.kind == "attention_heads"
            ]
            if config.is_structured
            else []
        )

        if config.is_structured:
            config = _drop_reconstruction_without_data(config)
            samples = self.calibration_samples(config) if needs_calibration(config) else None
            with _time_left_message(model, config, samples):
                result = prune_structured(
                    model, self.adapter, config, samples, show_progress=show_progress, **placement
                )
            removed_heads = pruned_heads(self.adapter, result.kept_units, heads_before) if heads_before else {}
            if removed_heads:
                model.config.pruned_heads = removed_heads
        else:
            from .unstructured import prune_unstructured, uses_calibration

            samples = self.calibration_samples(config) if uses_calibration(config) else None
            with _time_left_message(model, config, samples):
                result = prune_unstructured(model, config, samples, show_progress=show_progress, **placement)

        layout = None
        if config.is_structured:
            # The layout may add zero biases so plain transformers can load the model; on offloaded modules those
            # are created on the meta device and must be given values in the offload store.
            with new_offloaded_zero_biases(model):
                layout = record_layout(model, self.adapter, extra={"parameters_before": parameters_before})
        summary = _summary(model, config, result, layout, parameters_before, prunable_before)
        self.pruning_config = config
        self.summary = summary
        self._prune_incomplete = False
        logger.info(
            "Pruned %s: %d parameters, %.1f%% of the prunable ones removed",
            type(model).__name__,
            parameters_before,
            100 * summary["sparsity_achieved"],
        )
        return model

    def plan(
        self,
        config: PruningConfig | None = None,
        *,
        dataset: Any = None,
        show_progress: bool = True,
        execution_device: torch.device | str | None = None,
        activations_device: torch.device | str | None = None,
        activations_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> PruningPlan:
        """What `prune()` with the same arguments would do, per layer, with its parameter totals; the model is
        not changed.

        The plan comes from the code `prune()` decides with (`planning.plan_pruning`). A uniform allocation and
        sparsity patterns read only the layer shapes, so the model may have been built on the meta device; a
        global allocation reads the weights, and calibration data (`dataset`, in any form `prune()` takes) is read
        only where the plan depends on it (`planning.plan_inputs`): flap and obs allocations, global with a
        data-driven criterion, depth pruning.
        """
        config = self._checked_config(config, dataset, kwargs)
        # (No reconstruction is dropped for want of data, as prune() does: the units kept do not depend on it.)
        samples = None
        if plan_inputs(config).data is not None and config.dataset is not None:
            samples = self.calibration_samples(config)
        return plan_pruning(
            self.model,
            config,
            samples,
            adapter=self.adapter,
            show_progress=show_progress,
            execution_device=execution_device,
            activations_device=activations_device,
            activations_dir=activations_dir,
        )

    def _checked_config(self, config: PruningConfig | None, dataset: Any, kwargs: dict[str, Any]) -> PruningConfig:
        """The config `prune()` and `plan()` run (with `dataset`), after the checks made before data is read."""
        if config is None:
            config = PruningConfig(**kwargs)
        elif kwargs:
            raise TypeError(f"Pass either a PruningConfig or its fields, not both (got {sorted(kwargs)}).")
        if dataset is not None:
            config = copy.copy(config)
            config.dataset = dataset
        model = self.model
        model.eval()
        if config.is_structured and self.adapter is None:
            raise UnsupportedArchitectureError(
                f"Structured pruning does not support model_type {model.config.model_type!r} ({type(model).__name__}). "
                f"Supported model types: {', '.join(sorted(ADAPTERS))}. Unstructured and N:M sparsity work on any model."
            )
        # Before calibration data is read.
        if config.is_structured:
            config.check_layers(len(self.adapter.layers()))
            if config.serving is not None:
                from .serialization.serving import check_plan

                check_plan(model.config, config.serving, config.structures, config.reconstruction, self.tokenizer)
        else:
            config.check_layers(len(find_blocks(model, config.sequential_targets)))
        return config

    # ---- evaluating -----------------------------------------------------------------------------------------
    def evaluate(
        self,
        tasks: str | EvaluationSpec | EvaluationData | Sequence[str | EvaluationSpec | EvaluationData],
        dataset: Any = None,
        *,
        split: str | None = None,
        text_column: str | None = None,
        max_samples: int | None = None,
        batch_size: int | None = None,
        seqlen: int | None = None,
        max_windows: int | None = None,
        stage: str | None = None,
        show_progress: bool = True,
    ) -> EvaluationResults:
        """Score the model as it is now on `tasks`, without any training; call it before and after `prune()`.

        Before pruning the values are recorded as the baseline; after it, each task's results hold both values,
        their retention (after / before) and the time of each run, and they go into the model card's model-index
        when the model is saved.

        Args:
            tasks: one or several of "ppl" (causal LM), "glue:<task>" (sequence classification: cola, sst2, mrpc,
                qqp, stsb, mnli, qnli, rte, wnli, ...), "squad", "squad_v2" (question answering), and
                "lm-eval:<task,...>" (causal LM; lm-eval task names or task YAML files; the `zeroshot` extra),
                "lm-eval:<folder>[:<task,...>]" (the tasks, groups or tags of a folder of task YAML files).
            dataset: the data of ppl, glue and squad (`optimum_prune.evaluation.runner` says what each reads): a
                local csv / json / jsonl / parquet file or folder with the task's columns (ppl: text files too), a
                Hub dataset id, a `datasets.Dataset`, (ppl) a list of strings or wikitext2 / c4 / ptb. None: GLUE
                and SQuAD read their validation split from the Hub.
            split: the split of a Hub dataset (default: the task's validation split).
            text_column: ppl: the text column of a table.
            max_samples: score the first N examples (lm-eval: its `limit`).
            batch_size: examples per forward pass (default: 32 GLUE, 16 SQuAD, 8 lm-eval).
            seqlen: perplexity window length (default: the pruning config's seqlen, else 512).
            max_windows: score at most this many perplexity windows.
            stage: "before" or "after" pruning; default: "after" once `prune()` has run, else "before".
            show_progress: progress bars.

        Returns:
            `EvaluationResults`: `results["glue:sst2"]["accuracy"].before / .after / .retention`.

        Raises:
            EvaluationInputError: bad input (an unknown task, a task for another kind of model, missing columns,
                labels the model does not have, an empty split), found before the model runs; one line.
        """
        from .evaluation import (
            EvaluationData,
            EvaluationInputError,
            EvaluationResults,
            EvaluationSpec,
            load_evaluation_data,
            parse_evaluation,
            run_evaluation,
        )
        from .evaluation.results import combine_results

        stage = stage or ("after" if self.summary is not None else "before")
        if stage not in ("before", "after"):
            raise ValueError(f"stage must be 'before' or 'after', got {stage!r}.")
        items = [tasks] if isinstance(tasks, (str, EvaluationSpec, EvaluationData)) else list(tasks)
        if not items:
            raise EvaluationInputError("No evaluation given: name one, e.g. 'ppl' or 'glue:sst2'.")
        prepared = []
        for item in items:
            if not isinstance(item, EvaluationData):
                spec = parse_evaluation(item)
                self._check_evaluation_fits(spec)
                item = load_evaluation_data(
                    spec,
                    dataset,
                    model_config=self.model.config,
                    split=split,
                    text_column=text_column,
                    max_samples=max_samples,
                )
            else:
                self._check_evaluation_fits(item.spec)
            prepared.append(item)
        if seqlen is None:
            seqlen = self.pruning_config.seqlen if self.pruning_config is not None else PruningConfig.seqlen
        measured: list[TaskResult] = []
        for data in prepared:
            key = (data.key, seqlen if data.spec.kind == "ppl" else None, max_windows)
            results = run_evaluation(
                data,
                self.model,
                self.tokenizer,
                stage=stage,
                batch_size=batch_size,
                seqlen=seqlen,
                max_windows=max_windows,
                show_progress=show_progress,
            )
            if stage == "before":
                self._evaluation_baseline[key] = results
            else:
                baseline = {result.task: result for result in self._evaluation_baseline.get(key, [])}
                results = [combine_results(baseline.get(result.task), result) for result in results]
            measured += results
        evaluation = EvaluationResults(measured)
        if stage == "after":
            kept = [
                old
                for old in (self.evaluation.tasks if self.evaluation is not None else [])
                if not any(_same_task(old, new) for new in measured)
            ]
            self.evaluation = EvaluationResults(kept + measured)
        return evaluation

    def _check_evaluation_fits(self, spec: EvaluationSpec) -> None:
        from .evaluation import EvaluationInputError

        if self.pipeline_tag is not None and spec.pipeline_tag != self.pipeline_tag:
            raise EvaluationInputError(
                f"{spec.name} {spec.what_it_scores} ({task_for_pipeline(spec.pipeline_tag).pruner}); this is a "
                f"{type(self).__name__}."
            )

    # ---- saving ---------------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        serving: str | None = None,
        **hub_kwargs: Any,
    ) -> None:
        """Write safetensors, config.json (with per-layer sizes), pruning_config.json, tokenizer and model card.

        `serving` (default: the pruning config's `serving`) writes the layout of a serving engine instead of the
        family's own: "vllm" gives a DeciLM (`nemotron-nas`) checkpoint that `vllm.LLM(path, trust_remote_code=True)`
        serves and transformers loads with `trust_remote_code=True` (see `serialization.serving`); "llama.cpp" the
        same layout with `ffn_mult`, which llama.cpp's `convert_hf_to_gguf.py` converts. It raises
        `ServingPlanError` when the pruned model (or, for llama.cpp, its tokenizer) cannot be expressed there.

        Everything is written to a staging folder next to `save_directory`, which then replaces it as a whole
        (see `serialization.save`): a failure or a kill leaves the old content, and no file of an older checkpoint
        survives an overwrite. `repo_id` is the Hub repository the model card's "how to load" names (default: the
        folder name). Raises `CheckpointTargetError` if `save_directory` is (or contains) the input model's folder,
        and RuntimeError after a `prune()` that failed part-way.
        """
        if getattr(self, "_prune_incomplete", False):
            raise RuntimeError(
                "The last prune() stopped with an error part-way, so the model may be half-pruned: nothing was saved. "
                "Load the model again and prune it with a corrected config."
            )
        from .serialization.heterogeneous import check_serializable

        check_serializable(self.model)
        serving = serving or getattr(self.pruning_config, "serving", None)
        write_weights = finish = None
        if serving is not None:
            from functools import partial

            from .serialization.serving import check_target, check_tokenizer, finish_checkpoint, write_checkpoint

            check_target(serving)  # the model itself is checked as it is written
            if serving == "llama.cpp" and self.tokenizer is not None:
                check_tokenizer(self.tokenizer, getattr(self.model.config, "vocab_size", None))
            write_weights = partial(write_checkpoint, self.model, target=serving)
            finish = partial(finish_checkpoint, target=serving)
        save_pruned_checkpoint(
            self.model,
            save_directory,
            write_weights=write_weights,
            finish=finish,
            tokenizer=self.tokenizer,
            pruning_config=self.pruning_config,
            model_card=self._model_card(repo_id),
            protected=[getattr(self, "source_folder", None)],
        )
        if push_to_hub:
            self.push_to_hub(
                repo_id or os.path.basename(os.path.abspath(save_directory)), folder=save_directory, **hub_kwargs
            )

    def _model_card(self, repo_id: str | None = None) -> Any | None:
        from .serialization.hub import create_model_card

        if self.pruning_config is None or self.summary is None:
            return None
        # Results set by hand (`pruner.eval_results = {...}`, create_model_card's format) come first.
        eval_results: dict[str, Any] = dict(getattr(self, "eval_results", None) or {})
        evaluation = getattr(self, "evaluation", None)
        for metric, entries in (evaluation.card_entries() if evaluation is not None else {}).items():
            given = eval_results.get(metric, [])
            eval_results[metric] = [*(given if isinstance(given, (list, tuple)) else [given]), *entries]
        return create_model_card(
            base_model=self.base_model_name,
            pipeline_tag=self.pipeline_tag,
            pruning_config=self.pruning_config.to_dict(),
            summary=self.summary,
            eval_results=eval_results or None,
            repo_id=repo_id,
            cli_options=getattr(self, "recipe_cli_options", ()),
            recipe_note=getattr(self, "recipe_note", None),
        )

    def push_to_hub(self, repo_id: str, *, folder: str | os.PathLike | None = None, **kwargs: Any) -> str:
        """Upload the pruned checkpoint (saving it to a temporary folder first unless `folder` is given)."""
        import tempfile

        from .serialization.hub import push_folder_to_hub

        if folder is not None:
            card = self._model_card(repo_id)
            if card is not None:  # the card saved with the folder named the folder; on the Hub it names the repo
                partial = os.path.join(folder, ".README.md.partial")
                card.save(partial)
                os.replace(partial, os.path.join(folder, "README.md"))
            return push_folder_to_hub(folder, repo_id, **kwargs)
        with tempfile.TemporaryDirectory() as tmp:
            target = os.path.join(tmp, "checkpoint")
            self.save_pretrained(target, repo_id=repo_id)
            return push_folder_to_hub(target, repo_id, **kwargs)


class PrunerForCausalLM(BasePruner):
    """Prunes decoder language models (LLaMA, Mistral, Qwen2, Mamba)."""

    task = TASKS["causal-lm"]


class PrunerForSequenceClassification(BasePruner):
    """Prunes sequence classifiers (BERT and the LLaMA family with a classification head)."""

    task = TASKS["sequence-classification"]


class PrunerForQuestionAnswering(BasePruner):
    """Prunes extractive question-answering models (BERT)."""

    task = TASKS["question-answering"]


def _summary(
    model: PreTrainedModel,
    config: PruningConfig,
    result: PruningResult,
    layout: dict[str, Any] | None,
    parameters_before: int,
    prunable_before: int,
) -> dict[str, Any]:
    """`BasePruner.summary` of a run of `config` that returned `result` (`layout`: a structured run's record)."""
    summary: dict[str, Any] = {
        "model_type": model.config.model_type,
        "parameters_before": parameters_before,
        "prunable_parameters": prunable_before,
        "sparsity_requested": config.sparsity,
    }
    if layout is not None:
        summary["layers"] = layout["layers"]
        # Physically removed parameters (net of any bias reconstruction added) over the prunable ones.
        summary["parameters_after"] = count_parameters(model)
        removed = parameters_before - summary["parameters_after"]
        summary["sparsity_achieved"] = removed / max(prunable_before, 1)
        # The kinds pruned (the defaults may differ by model, see structured.query_heads_fallback) and why.
        summary["structures"] = list(result.kinds or config.structures or [])
        if result.notes:
            summary["notes"] = list(result.notes)
    else:
        summary.update(
            {key: value for key, value in result.record.items() if key not in ("format", "target", "method")}
        )
        summary["prunable_parameters"] = result.prunable_parameters
        summary["parameters_after"] = count_parameters(model)  # zeros are stored densely
    return summary


def _same_task(a: TaskResult, b: TaskResult) -> bool:
    return (a.task, a.dataset, a.dataset_config, a.split) == (b.task, b.dataset, b.dataset_config, b.split)


def _drop_reconstruction_without_data(config: PruningConfig) -> PruningConfig:
    """No data for a recipe whose need falls back (`calibration_need`): prune without refitting, loudly."""
    need = calibration_need(config) if config.dataset is None else None
    if need is None or not need.falls_back:
        return config
    warnings.warn(
        f"criterion={config.criterion!r} is calibration-free but reconstruction={config.reconstruction!r} needs "
        "calibration data, and no dataset was given: pruning with reconstruction='none' (no refit). Pass "
        f"dataset=... to refit with {config.reconstruction!r}, or set reconstruction='none' to silence this.",
        UserWarning,
        stacklevel=3,
    )
    return without_refit(config)


def _plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), strict=False, assign=True)
    plain.tie_weights()
    missing = [name for name, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"Could not copy the GGUF-loaded weights: {missing[:5]} stayed empty.")
    for name, buffer in list(plain.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers (e.g. rotary inv_freq) are not in the state dict
            module_name, _, buffer_name = name.rpartition(".")
            source = model.get_submodule(module_name).get_buffer(buffer_name)
            plain.get_submodule(module_name).register_buffer(buffer_name, source.clone(), persistent=False)
    return plain


def _check_local_folder(name: str) -> None:
    """A path that does not exist gets its own error: transformers would call it an invalid Hub repo id."""
    if os.path.exists(name):
        return
    looks_local = (
        os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name or name.endswith("/")
    )
    if looks_local:
        raise FileNotFoundError(f"Model folder {name!r} does not exist (and it is not a Hub id such as 'org/name').")
