"""Tiny random models, a character tokenizer and synthetic text, for the examples' `--tiny` mode.

Built in-process in well under a second, with nothing to download, so every example can be tried (and tested) on
any machine. The numbers they give are those of random weights: perplexity near the vocabulary size, accuracy near
chance. They show that the pipeline runs end to end, not how well pruning works; the default, real runs do that.
"""

from __future__ import annotations

import random
import string

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from tokenizers.processors import TemplateProcessing
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

__all__ = [
    "TINY_SEQLEN",
    "char_tokenizer",
    "labelled_sentences",
    "synthetic_articles",
    "tiny_bert_classifier",
    "tiny_llama",
]

CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " \n"
SPECIAL_TOKENS = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
VOCAB_SIZE = 128  # the special tokens and 98 characters, rounded up
#: Tokens per calibration sequence and perplexity window in --tiny mode (characters, with this tokenizer).
TINY_SEQLEN = 64

_SUBJECTS = ["the model", "a network", "the pruner", "each layer", "the tokenizer", "this channel", "a head"]
_VERBS = ["removes", "keeps", "predicts", "scores", "refits", "measures", "saves"]
_OBJECTS = ["heads", "channels", "weights", "the bias", "its inputs", "the output", "a checkpoint"]
_POSITIVE = ["wonderful", "moving", "funny", "brilliant", "charming", "gripping"]
_NEGATIVE = ["tedious", "silly", "dull", "clumsy", "boring", "shallow"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (BERT-style special tokens), like tests/conftest.py's."""
    vocab = {**SPECIAL_TOKENS, **{c: i + len(SPECIAL_TOKENS) for i, c in enumerate(CHARACTERS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    # A BERT classifier is fed "[CLS] text [SEP]"; a causal LM's calibration and perplexity windows start as this
    # tokenizer starts a text, with [CLS] (its BOS here), then text tokens (optimum_prune.data.calibration.window_prefix).
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tokenizer


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 3-layer LLaMA (6 heads in 3 KV groups, 96 FFN channels), randomly initialised."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=3,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def tiny_bert_classifier(seed: int = 0) -> BertForSequenceClassification:
    """A 2-layer BERT with a 2-label head (negative, positive), randomly initialised."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        max_position_embeddings=256,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    return BertForSequenceClassification(config).eval()


def synthetic_articles(count: int = 50, sentences: int = 12, seed: int = 0) -> list[str]:
    """`count` short "articles" of generated sentences; split them 80/20 like optimum_prune.assets.wikipedia_split."""
    rng = random.Random(seed)
    articles = []
    for _ in range(count):
        body = " ".join(
            f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}."
            for _ in range(sentences)
        )
        articles.append(body)
    return articles


def labelled_sentences(count: int = 40, seed: int = 0) -> tuple[list[str], list[int]]:
    """Movie-review-like sentences with labels 0 (negative) and 1 (positive) in pairs (0, 0, 1, 1, ...), so that every
    other sentence (the examples' calibration / evaluation split) still holds both labels."""
    rng = random.Random(seed)
    texts, labels = [], []
    for index in range(count):
        label = (index // 2) % 2
        word = rng.choice(_POSITIVE if label else _NEGATIVE)
        texts.append(f"{rng.choice(['the film', 'this movie', 'the plot'])} is {word} and {rng.choice(_OBJECTS)} .")
        labels.append(label)
    return texts, labels
