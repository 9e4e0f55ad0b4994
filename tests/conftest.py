"""Tiny randomly initialised models and a character tokenizer: fast, exact checks with no download."""

from __future__ import annotations

import importlib
import os
import string
import sys
from types import ModuleType

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedTokenizerFast,
)

# Tiny matrices gain nothing from a second thread and lose a lot to its synchronisation on a busy 2-core machine;
# the real-model tests (test_real_models.py) raise this again for themselves.
torch.set_num_threads(1)

CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " \n"
VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{c: i + 4 for i, c in enumerate(CHARACTERS)}}
VOCAB_SIZE = 128

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pruning removes heads and channels from a network, "
    "and least squares puts back what the kept channels can predict of the removed ones. "
) * 40


BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def benchmark_module(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module (they import their siblings, such as `common`, by name)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCHMARKS)


def make_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


#: Config fields of the tiny LLaMA-like decoder; Mistral, Qwen2 and other LLaMA-like configs take the same names.
TINY_DECODER = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=3,
    max_position_embeddings=256,
)
#: Config fields of the tiny BERT-like encoder; RoBERTa, ELECTRA, DeBERTa-v2 and ModernBERT take the same names.
TINY_ENCODER = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=6,
    max_position_embeddings=256,
    num_labels=2,
)


def tiny_causal_lm(model_class: type, config_class: type, seed: int = 0, **overrides) -> torch.nn.Module:
    """A seeded random `model_class(config_class(**TINY_DECODER, **overrides))` in eval mode."""
    torch.manual_seed(seed)
    return model_class(config_class(**{**TINY_DECODER, **overrides})).eval()


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    return tiny_causal_lm(LlamaForCausalLM, LlamaConfig, seed, **overrides)


def tiny_bert(seed: int = 0, head: str = "classification") -> torch.nn.Module:
    torch.manual_seed(seed)
    model_class = BertForSequenceClassification if head == "classification" else BertForQuestionAnswering
    return model_class(BertConfig(**TINY_ENCODER)).eval()


def tiny_mamba(seed: int = 0) -> MambaForCausalLM:
    torch.manual_seed(seed)
    config = MambaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
    )
    return MambaForCausalLM(config).eval()


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def texts() -> list[str]:
    return [TEXT]


@pytest.fixture
def sentences() -> list[str]:
    return [s.strip() + "." for s in TEXT.split(".") if s.strip()][:40]


@pytest.fixture
def one_thread():
    """One thread during the test and the count restored after it, for modules whose tests run code that may set
    its own (CLI commands, examples, benchmark scripts); why one thread: the comment at this file's
    `torch.set_num_threads(1)`.
    Modules that want it for every test say `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
