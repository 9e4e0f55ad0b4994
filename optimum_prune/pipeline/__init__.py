"""The model-agnostic machinery every pruning method runs on, one block at a time.

* `loop`: the block-sequential calibration loop (`run_blocks`, `BlockMethod`, `Block`, `block_timings`);
* `blocks`: which modules are the blocks (`find_blocks`: `_no_split_modules` or `sequential_targets`);
* `layerwise`: capturing block inputs and streaming them between blocks (`BlockStreamer`, `ActivationStore`);
* `offload`: accelerate-offloaded weights, materialised on the execution device a block at a time;
* `statistics` and `weight_inputs`: what the hooks record about the inputs of the weights being pruned.

The names below are the loop's; the other modules are imported by their own paths.
"""

from .loop import Block, BlockMethod, BlockTiming, Calibration, Observer, block_arguments, block_timings, run_blocks

__all__ = [
    "Block",
    "BlockMethod",
    "BlockTiming",
    "Calibration",
    "Observer",
    "block_arguments",
    "block_timings",
    "run_blocks",
]
