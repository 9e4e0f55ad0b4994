"""How far one `PruningConfig` travels through the package during `pruner.prune(config)` (issue 27's walk).

Issue 27 counted, by reading the code at commit 58be09e: "Following one `config` through `BasePruner.prune`:
17 files, 43 stays, 18 climbs back up, 26 returns to a file already left." This script measures the same walk by
running it, so that any checkout can be measured the same way.

The measure, precisely:

* A *config frame* is the frame of a Python function defined in a file of the imported `optimum_prune` package
  that, when it is entered (`sys.setprofile` "call" event), receives the config: one of its locals (its arguments
  at entry) is a `PruningConfig` instance, or is an object (`self` included) with an instance attribute that is
  one. "The config" is any `PruningConfig` instance, since the run may hand on a copy of the one passed in (a
  dataset set, a reconstruction dropped). By default the config's own methods and properties (frames whose
  function is defined in the module that defines `PruningConfig`'s class and whose first argument is the config)
  are not counted: the config consulting itself is not the config travelling; `--with-config-methods` counts
  them too.
* The walk is the file that holds the innermost config frame, in time: entering a config frame moves the walk
  to that frame's file; leaving one moves it back to the file of the innermost config frame still open (its
  nearest config-holding caller). Frames that do not receive the config are ignored: they neither start nor end
  anything.
* A *stay* is a maximal run of the walk in one file (consecutive config frames in the same file are one stay).
* *files*: distinct files in the walk. *stays*: the number of stays. *climbs back up*: moves between stays
  caused by leaving a frame (the walk returns to a caller's file). *returns to a file already left*: stays whose
  file had been stayed in and left before (by either kind of move).

Two runs are measured, each on a fresh tiny random LlamaForCausalLM (2 layers, hidden 64, built from a config),
calibrated on `dataset="random-tokens"` (4 x 32 random token ids; the only tokenizer is a stub with no special
tokens, which every checkout since 58be09e accepts): a structured prune at 20% with
the default recipe, and an unstructured prune at 50% with `method="sparsegpt"`. Only the package's own source
files count; the walk is independent of timing and of the machine.

    PYTHONPATH=. python benchmarks/config_walk.py             # this checkout, prints the table rows
    PYTHONPATH=/path/to/other/checkout python benchmarks/config_walk.py --label 58be09e
    python benchmarks/config_walk.py --verbose                # also print each stay
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

RUNS = {
    "structured 20%, default recipe": {"target": "structured", "sparsity": 0.2},
    "unstructured 50%, sparsegpt": {"target": "unstructured", "sparsity": 0.5, "method": "sparsegpt"},
}


@dataclass
class Walk:
    """The walk of one run: the stays (file per stay) and how the walk moved into each."""

    root: str
    config_class: type
    with_config_methods: bool = False
    stack: list[tuple[Any, str | None]] = field(default_factory=list)  # (frame, file if a config frame)
    stays: list[str] = field(default_factory=list)
    moves: list[str] = field(default_factory=list)  # "enter" / "leave", one per stay after the first

    def _holds_config(self, frame: Any) -> bool:
        cls = self.config_class
        values = list(frame.f_locals.values())
        code = frame.f_code
        if not self.with_config_methods and code.co_argcount and code.co_filename == _config_file(cls):
            first = frame.f_locals.get(code.co_varnames[0])
            if isinstance(first, cls):
                return False
        for value in values:
            if isinstance(value, cls):
                return True
            attributes = getattr(value, "__dict__", None)
            if isinstance(attributes, dict) and any(isinstance(v, cls) for v in list(attributes.values())):
                return True
        return False

    def _current(self) -> str | None:
        for _, file in reversed(self.stack):
            if file is not None:
                return file
        return None

    def _move(self, file: str | None, how: str) -> None:
        if file is None or (self.stays and self.stays[-1] == file):
            return
        if self.stays:
            self.moves.append(how)
        self.stays.append(file)

    def profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            filename = frame.f_code.co_filename
            file = None
            if filename.startswith(self.root) and self._holds_config(frame):
                file = os.path.relpath(filename, os.path.dirname(self.root))
            self.stack.append((frame, file))
            if file is not None:
                self._move(file, "enter")
        elif event == "return":
            # Generators and the like may leave frames we never saw enter: pop down to this frame if we know it.
            if not any(f is frame for f, _ in self.stack):
                return
            while self.stack:
                f, file = self.stack.pop()
                if f is frame:
                    break
            if file is not None:
                self._move(self._current(), "leave")

    def counts(self) -> dict[str, int]:
        left: set[str] = set()
        returns = 0
        for previous, stay in zip(self.stays, self.stays[1:]):
            left.add(previous)
            returns += stay in left
        return {
            "files": len(set(self.stays)),
            "stays": len(self.stays),
            "climbs back up": self.moves.count("leave"),
            "returns to a file already left": returns,
        }


def _config_file(cls: type) -> str:
    return sys.modules[cls.__module__].__file__


class _NoSpecialTokens:
    """All that random-token calibration asks of a tokenizer: which ids to leave out (none)."""

    all_special_ids: list[int] = []
    pad_token_id = None

    def __len__(self) -> int:
        return 128

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [5]}  # one id for any probe text, nothing added around it


def _tiny_llama() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def measure(fields: dict[str, Any], with_config_methods: bool) -> Walk:
    import optimum_prune
    from optimum_prune import PrunerForCausalLM, PruningConfig

    root = os.path.dirname(os.path.abspath(optimum_prune.__file__)) + os.sep
    config = PruningConfig(**fields, dataset="random-tokens", num_samples=4, seqlen=32)
    pruner = PrunerForCausalLM(_tiny_llama(), _NoSpecialTokens())
    # Typed configs (StructuredConfig, SparsityConfig, ...) are subclasses of PruningConfig.
    walk = Walk(root=root, config_class=PruningConfig, with_config_methods=with_config_methods)
    sys.setprofile(walk.profile)
    try:
        pruner.prune(config, show_progress=False)
    finally:
        sys.setprofile(None)
    return walk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default=None, help="the checkout's name in the printed rows (default: git HEAD)")
    parser.add_argument("--with-config-methods", action="store_true", help="count the config's own methods too")
    parser.add_argument("--verbose", action="store_true", help="print every stay")
    args = parser.parse_args()
    import optimum_prune

    label = args.label or os.path.dirname(os.path.dirname(os.path.abspath(optimum_prune.__file__)))
    print(f"# optimum_prune from {os.path.dirname(os.path.abspath(optimum_prune.__file__))}")
    print("| checkout | run | files | stays | climbs back up | returns to a file already left |")
    print("|---|---|---:|---:|---:|---:|")
    for name, fields in RUNS.items():
        walk = measure(fields, args.with_config_methods)
        c = walk.counts()
        print(
            f"| {label} | {name} | {c['files']} | {c['stays']} | {c['climbs back up']} | "
            f"{c['returns to a file already left']} |",
            flush=True,
        )
        if args.verbose:
            for i, stay in enumerate(walk.stays):
                how = walk.moves[i - 1] if i else "start"
                print(f"    {i:3d} {how:5s} {stay}")


if __name__ == "__main__":
    main()
