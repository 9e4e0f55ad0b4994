"""Which structured-pruned checkpoints plain transformers loads, without `import optimum_prune`.

A checkpoint loads without the plugin only when the family's own config fields can describe every layer: one size
for all layers (uniform allocation, no per-layer overrides), and a config flag for every bias that reconstruction
added. Otherwise `record_layout` marks it as plugin-only and `write_loading_guard` makes a plain load fail with an
error that names the plugin. This table is the single statement of that rule: the README prints it
(`plain_loading_markdown`) and tests/test_plain_loading.py prunes each case and loads it in a process without the
plugin, so the README, the test and the code cannot disagree silently.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlainLoading:
    """One family (and set of pruned structures) under uniform allocation.

    Attributes:
        model_type: `config.model_type` of the family.
        structures: `PruningConfig.structures` (None: all of the family's structures).
        reconstructions: The reconstructions whose checkpoints plain transformers loads; the others need the plugin.
        condition: What else must hold for a plain load, or why the other reconstructions need the plugin.
    """

    model_type: str
    structures: tuple[str, ...] | None
    reconstructions: tuple[str, ...]
    condition: str


PLAIN_LOADING: tuple[PlainLoading, ...] = (
    PlainLoading(
        "llama",
        None,
        ("none", "bias", "liar", "admm", "liar_dense"),
        "the kept heads divide `hidden_size`; the biases that reconstruction adds to `o_proj` / `down_proj` are "
        "written as `attention_bias` / `mlp_bias` (zero biases on the sibling projections)",
    ),
    PlainLoading(
        "mistral",
        None,
        ("none",),
        "the kept heads divide `hidden_size`; `bias`, `liar` and `admm` add biases to `o_proj` / `down_proj`, "
        "which `MistralConfig` has no flag for",
    ),
    PlainLoading(
        "qwen2",
        None,
        ("none",),
        "the kept heads divide `hidden_size`; `bias`, `liar` and `admm` add biases to `o_proj` / `down_proj`, "
        "which `Qwen2Config` has no flag for",
    ),
    PlainLoading(
        "bert",
        None,
        (),
        "`BertConfig` derives the head size from `hidden_size / num_attention_heads`, so removed heads cannot be "
        "expressed",
    ),
    PlainLoading(
        "bert",
        ("ffn_channels",),
        ("none", "bias", "liar", "admm", "liar_dense"),
        "BERT's projections already have biases",
    ),
    PlainLoading(
        "mamba",
        None,
        (),
        "`MambaConfig` computes the inner size as an integer `expand` times `hidden_size`, so at 30% (the test's "
        "budget) no reconstruction loads plainly; a kept width that is a whole multiple of `hidden_size` (50% of "
        "`expand=2`) with `none` does (the architecture table), and `x_proj` (refit by reconstruction) has no bias flag",
    ),
)


def plain_loading_markdown() -> str:
    """`PLAIN_LOADING` as the markdown table printed in README.md."""
    lines = [
        "| family | pruned structures | reconstructions whose checkpoint plain transformers loads | condition, or why not |",
        "|---|---|---|---|",
    ]
    for row in PLAIN_LOADING:
        structures = ", ".join(f"`{s}`" for s in row.structures) if row.structures else "all (default)"
        plain = ", ".join(f"`{r}`" for r in row.reconstructions) if row.reconstructions else "none of them"
        lines.append(f"| {row.model_type} | {structures} | {plain} | {row.condition} |")
    return "\n".join(lines)
