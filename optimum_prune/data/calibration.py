"""Calibration data: from strings, a `datasets.Dataset`, local files or the usual dataset names, to token tensors.

Pre-tokenized data (what llm-compressor's `oneshot` accepts: a LongTensor [n, seqlen], a list of 1-D tensors or of
lists of ints, a `datasets.Dataset` or a tokenizer's output with an `input_ids` column) skips the tokenizer:
`token_id_rows` reads it, `sample_id_windows` / `sample_id_examples` cut it as the text samplers cut text.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamedDataset:
    """How a dataset name that users of pruning papers know maps to `datasets.load_dataset` (needs the Hub)."""

    path: str
    name: str | None
    split: str
    text_column: str
    data_files: dict[str, str] | None = None


# The loaders of SparseGPT / Wanda / FLAP, under the names those papers' users type.
NAMED_DATASETS: dict[str, NamedDataset] = {
    "wikitext2": NamedDataset("wikitext", "wikitext-2-raw-v1", "train", "text"),
    "c4": NamedDataset(
        "allenai/c4", None, "train", "text", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}
    ),
    "ptb": NamedDataset("ptb_text_only", "penn_treebank", "train", "sentence"),
}
NAMED_EVAL_SPLITS = {"wikitext2": "test", "c4": "validation", "ptb": "test"}

#: `dataset=RANDOM_TOKENS` calibrates on uniformly random token ids: no text at all, so a data-driven criterion
#: or refit runs where no data may be used. On SmolLM2 its FFN activation statistics rank channels far better than
#: any weight-only score (benchmarks/results/ffn_scores.md), though worse than real text.
RANDOM_TOKENS = "random-tokens"

_FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class CalibrationDataError(ValueError):
    """Calibration data is missing, empty or too short."""


def load_named_dataset(name: str, split: str | None = None) -> Any:
    """Load `name` ('wikitext2', 'c4', 'ptb') with `datasets.load_dataset` as the pruning papers do.

    Raises `optimum_prune.offline.HubUnreachableError` when the dataset is not cached and the Hub is unreachable."""
    import datasets

    spec = NAMED_DATASETS[name]
    data_files = spec.data_files
    if split is not None and split != spec.split and name == "c4":
        data_files = {"validation": "en/c4-validation.00000-of-00008.json.gz"}
    try:
        return datasets.load_dataset(spec.path, spec.name, split=split or spec.split, data_files=data_files)
    except Exception as err:
        from ..offline import hub_unreachable_error, is_hub_unreachable

        if not is_hub_unreachable(err):
            raise
        # Offline and not in the datasets cache: one line (HubUnreachableError) instead of datasets' chain.
        raise hub_unreachable_error(
            f"dataset {name!r} (Hub dataset {spec.path!r})",
            "use a local text/json/csv/parquet file, a list of strings or a datasets.Dataset",
        ) from None


def load_texts(source: Any, text_column: str | None = None, split: str | None = None) -> list[str]:
    """Turn any supported calibration source into a list of strings."""
    if source is None:
        raise CalibrationDataError(
            "No calibration data: pass `dataset=` (a list of strings, a datasets.Dataset, a local file or folder, one of "
            f"{sorted(NAMED_DATASETS)}, or {RANDOM_TOKENS!r} for random token ids), or choose a criterion and "
            "reconstruction that need none."
        )
    origin = source if isinstance(source, str) else "(in memory)"
    if isinstance(source, str):
        if source == RANDOM_TOKENS:
            raise CalibrationDataError(
                f"{RANDOM_TOKENS!r} is not text: the pruners draw its token ids themselves (random_token_samples)."
            )
        if source in NAMED_DATASETS:
            text_column = text_column or NAMED_DATASETS[source].text_column
            source = load_named_dataset(source, split)
        elif os.path.exists(source):
            source = _load_file(source)
        else:
            raise CalibrationDataError(
                f"Calibration source {source!r} is neither a local file or folder nor a known dataset name "
                f"({', '.join(sorted(NAMED_DATASETS))})."
            )
    if isinstance(source, Sequence) and not hasattr(source, "column_names"):
        texts = [t for t in source if isinstance(t, str)]
        if len(texts) != len(source):
            raise CalibrationDataError("A calibration list must hold strings only.")
    else:
        column = text_column or _text_column(source)
        try:
            texts = list(source[column])
        except UnicodeDecodeError as err:  # Arrow keeps undecodable bytes until a column is read
            raise _not_utf8(origin, err) from None
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise CalibrationDataError("The calibration data is empty (no non-blank text).")
    return texts


def random_token_samples(
    tokenizer: Any, vocab_size: int, num_samples: int, seqlen: int, seed: int = 0, as_windows: bool = True
) -> list[dict[str, torch.Tensor]]:
    """`num_samples` sequences of `seqlen` token ids drawn uniformly from the vocabulary, special tokens excluded.

    `as_windows=True` (decoders) starts each window as the tokenizer starts a text (`window_prefix`: its BOS, if it
    adds one), followed by random ids up to `seqlen` tokens in all. `as_windows=False` (encoders) wraps each
    sequence in the tokenizer's special tokens ([CLS] ... [SEP]) as real examples would be.
    """
    if num_samples < 1 or seqlen < 1:
        raise CalibrationDataError(f"num_samples and seqlen must be >= 1 (got {num_samples} and {seqlen}).")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    allowed = torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)
    if allowed.numel() == 0:
        raise CalibrationDataError("The vocabulary holds special tokens only: no random calibration tokens to draw.")
    if as_windows:  # a window starts as the tokenizer starts a text (its BOS, if it adds one), seqlen in all
        prefix, suffix = window_prefix(tokenizer), []
        drawn = _window_body(seqlen, prefix)
    else:
        prefix, suffix = _special_token_frame(tokenizer)
        drawn = seqlen
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num_samples):
        ids = allowed[torch.randint(0, allowed.numel(), (drawn,), generator=generator)]
        ids = torch.cat([torch.tensor(prefix, dtype=torch.long), ids, torch.tensor(suffix, dtype=torch.long)])
        samples.append({"input_ids": ids[None, :]})
    return samples


def window_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text of its own (Gemma's and Llama 3's BOS; none for SmolLM2 or GPT-2).

    A window cut from a long token stream (calibration, perplexity) starts with these, so the model sees inputs that
    begin as they do in use (`add_special_tokens=True`): a model trained with a BOS is far off its distribution
    without it. A tokenizer that adds nothing gives `[]`, and windows are cut exactly as before.
    """
    if tokenizer is None:
        return []
    return _special_token_frame(tokenizer)[0]


def _window_body(seqlen: int, prefix: Sequence[int]) -> int:
    """How many text tokens follow `prefix` in a window of `seqlen` tokens."""
    if seqlen <= len(prefix):
        raise CalibrationDataError(
            f"seqlen={seqlen} leaves no room for text after the {len(prefix)} token(s) the tokenizer starts a text "
            "with: use a longer seqlen."
        )
    return seqlen - len(prefix)


def _special_token_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text of its own (e.g. [CLS] and [SEP]), read off a probe."""
    framed = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    content = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(framed) - len(content) + 1):
        if content and framed[start : start + len(content)] == content:
            return framed[:start], framed[start + len(content) :]
    return [], []


def _load_file(path: str) -> Any:
    """The content of a calibration file, or of a folder of them (see `calibration_files`)."""
    import datasets

    files = calibration_files(path)
    ext = os.path.splitext(files[0])[1].lower()
    if ext == ".txt":
        texts = []
        for file in files:
            try:
                with open(file, encoding="utf-8") as handle:
                    texts.append(handle.read())
            except UnicodeDecodeError as err:
                raise _not_utf8(file, err) from None
        return texts
    try:
        return datasets.load_dataset(_FILE_BUILDERS[ext], data_files=files, split="train")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def calibration_files(path: str) -> list[str]:
    """The files `path` stands for: itself, or for a folder its files of the supported types, in sorted order.

    A folder is read recursively; hidden files and folders (".git", ".cache") and files of other types (a README)
    are passed over. Its files must all be read the same way: text files, or one of the json, csv, parquet kinds
    (.json and .jsonl together are fine). Raises `CalibrationDataError` naming the path otherwise.
    """
    if not os.path.isdir(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise CalibrationDataError(
                f"Unsupported calibration file type {ext!r} for {path!r}; use one of {sorted(_FILE_BUILDERS)}, or a "
                "folder of such files."
            )
        return [path]
    files = []
    for root, folders, names in os.walk(path):
        folders[:] = [name for name in folders if not name.startswith(".")]
        files += [
            os.path.join(root, name)
            for name in names
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in _FILE_BUILDERS
        ]
    files.sort(key=lambda file: os.path.relpath(file, path))
    if not files:
        raise CalibrationDataError(
            f"The calibration folder {path!r} holds no file of a supported type ({', '.join(sorted(_FILE_BUILDERS))})."
        )
    kinds = sorted({os.path.splitext(file)[1].lower() for file in files})
    if len({_FILE_BUILDERS[kind] for kind in kinds}) > 1:
        raise CalibrationDataError(
            f"The calibration folder {path!r} mixes file types {kinds}: keep files of one type in it (.json and "
            ".jsonl count as one)."
        )
    return files


def _not_utf8(path: str, err: UnicodeDecodeError) -> CalibrationDataError:
    return CalibrationDataError(
        f"The calibration file {path!r} is not UTF-8 text (byte {err.start}: {err.reason}); convert it to UTF-8, "
        "e.g. `iconv -f latin1 -t utf-8`."
    )


def _text_column(dataset: Any) -> str:
    names = list(dataset.column_names)
    for candidate in ("text", "sentence", "content", "document"):
        if candidate in names:
            return candidate
    features = getattr(dataset, "features", {})
    for name in names:
        if getattr(features.get(name), "dtype", None) == "string":
            return name
    if "input_ids" in names:
        raise CalibrationDataError(
            f"No text column among {names}: for token ids, pass the loaded datasets.Dataset itself as the dataset "
            "(its input_ids column is read as is)."
        )
    raise CalibrationDataError(f"No text column among {names}; pass text_column=.")


def sample_token_windows(
    texts: list[str], tokenizer: Any, num_samples: int, seqlen: int, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Join the texts, tokenize once and draw `num_samples` random windows of `seqlen` tokens (SparseGPT protocol).

    Each window starts as the tokenizer starts a text (`window_prefix`): for a tokenizer that adds a BOS, the BOS
    and then `seqlen - 1` tokens of the stream; for one that adds nothing, `seqlen` tokens of the stream.
    """
    ids = tokenizer("\n\n".join(texts), return_tensors="pt", add_special_tokens=False).input_ids[0]
    return _draw_windows(ids, window_prefix(tokenizer), num_samples, seqlen, seed, "calibration text")


def _draw_windows(
    ids: torch.Tensor, prefix: list[int], num_samples: int, seqlen: int, seed: int, what: str
) -> list[dict[str, torch.Tensor]]:
    """`num_samples` windows of `seqlen` tokens at random starts (`random.Random(seed)`) of the 1-D stream `ids`,
    each `prefix` and then `seqlen - len(prefix)` tokens of the stream."""
    prefix = torch.tensor(prefix, dtype=ids.dtype, device=ids.device)
    body = _window_body(seqlen, prefix.tolist())
    if ids.numel() < body:
        raise CalibrationDataError(
            f"The {what} has {ids.numel()} tokens, fewer than seqlen={seqlen}: give more "
            f"{'text' if what.endswith('text') else 'token ids'} or a smaller seqlen."
        )
    if ids.numel() < num_samples * body:
        logger.warning(
            "The %s has %d tokens, less than the %d that %d windows of seqlen=%d take: windows will overlap.",
            what,
            ids.numel(),
            num_samples * body,
            num_samples,
            seqlen,
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - body) for _ in range(num_samples)]
    return [{"input_ids": torch.cat([prefix, ids[s : s + body]])[None, :].clone()} for s in starts]


def sample_examples(
    texts: list[str], tokenizer: Any, num_samples: int, seqlen: int, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """One tokenized example per text (no padding, so no statistic sees a pad token), for encoders."""
    rng = random.Random(seed)
    chosen = texts if len(texts) <= num_samples else rng.sample(texts, num_samples)
    samples = []
    for text in chosen:
        encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=seqlen)
        samples.append({key: value for key, value in encoded.items() if key != "attention_mask"})
    return samples


# ---- pre-tokenized calibration data ---------------------------------------------------------------------------------
TOKEN_IDS_FORMS = (
    "a LongTensor [n, seqlen], a list of 1-D tensors or of lists of ints, or a datasets.Dataset (or a tokenizer's "
    "output) with an input_ids column"
)


def token_id_rows(source: Any) -> list[torch.Tensor] | None:
    """Pre-tokenized calibration data as one 1-D int64 tensor per sequence, or None where `source` is no token ids
    (text, a file or dataset name, `RANDOM_TOKENS`: `load_texts` reads those).

    Accepted: an integer tensor or NumPy array ([n, length], or [length] for one sequence); a list of 1-D tensors,
    of lists of ints, or of mappings with `input_ids`; a mapping (a tokenizer's `BatchEncoding`) or a
    `datasets.Dataset` with an `input_ids` column. Where an `attention_mask` comes with the ids, the positions it
    masks (padding) are dropped, so every row is one unpadded sequence. Nothing is checked against a vocabulary
    here (`check_token_ids`).
    """
    if source is None or isinstance(source, (str, bytes)):
        return None
    if isinstance(source, Mapping):
        if "input_ids" not in source:
            raise CalibrationDataError(
                f"A calibration mapping needs an 'input_ids' entry (got keys {sorted(map(str, source))})."
            )
        return _unpadded(source["input_ids"], source.get("attention_mask"))
    if hasattr(source, "column_names"):  # a datasets.Dataset: its input_ids column wins over any text column
        names = list(source.column_names or [])
        if "input_ids" not in names:
            return None
        mask = list(source["attention_mask"]) if "attention_mask" in names else None
        return _unpadded(list(source["input_ids"]), mask)
    if _is_array(source):
        return _unpadded(source, None)
    if isinstance(source, Sequence):
        if len(source) == 0 or any(isinstance(item, (str, bytes)) for item in source):
            return None  # text (or a mix, which load_texts refuses)
        if all(isinstance(item, Mapping) for item in source):
            return [row for item in source for row in token_id_rows(item) or []]
        return _unpadded(list(source), None)
    return None


def _is_array(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or type(value).__module__ == "numpy" and hasattr(value, "dtype")


def _unpadded(ids: Any, mask: Any) -> list[torch.Tensor]:
    rows = _rows(ids, "input_ids")
    if mask is not None:
        masks = _rows(mask, "attention_mask")
        if [m.shape for m in masks] != [r.shape for r in rows]:
            raise CalibrationDataError("The calibration attention_mask does not have the shape of its input_ids.")
        rows = [row[m != 0] for row, m in zip(rows, masks)]
    rows = [row for row in rows if row.numel()]
    if not rows:
        raise CalibrationDataError("The calibration token ids are empty (no sequence holds a token).")
    return rows


def _rows(value: Any, name: str) -> list[torch.Tensor]:
    """`value` ([n, length] array, [length] array, or a sequence of rows) as a list of 1-D int64 tensors."""
    if _is_array(value):
        tensor = torch.as_tensor(value)
        if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
            raise CalibrationDataError(f"Calibration {name} must be integers, got a tensor of {tensor.dtype}.")
        if tensor.dim() == 1:
            return [tensor.long().cpu()]
        if tensor.dim() == 2:
            return list(tensor.long().cpu())
        raise CalibrationDataError(
            f"Calibration {name} must be [n, length] or one sequence [length]; got shape {tuple(tensor.shape)}."
        )
    rows: list[torch.Tensor] = []
    for item in value:
        if _is_array(item) and torch.as_tensor(item).dim() > 0:
            rows += _rows(item, name)
        elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in item):
                raise CalibrationDataError(f"Each calibration row of {name} must hold ints only.")
            rows.append(torch.tensor(list(item), dtype=torch.long))
        elif isinstance(item, int) or _is_array(item):
            _flat_error(name)
        else:
            raise CalibrationDataError(
                f"Cannot read a calibration row of {name} from {type(item).__name__}: use {TOKEN_IDS_FORMS}."
            )
    return rows


def _flat_error(name: str) -> None:
    raise CalibrationDataError(
        f"A list of calibration {name} holds one sequence per item (a list of ints or a 1-D tensor), not single "
        "ids: wrap one sequence in a list, or pass a 1-D tensor."
    )


def check_token_ids(rows: Sequence[torch.Tensor], vocab_size: int | None) -> None:
    """Raise `CalibrationDataError` for ids the model cannot embed: negative, or `vocab_size` and above."""
    smallest = min(int(row.min()) for row in rows)
    largest = max(int(row.max()) for row in rows)
    if smallest < 0:
        raise CalibrationDataError(f"The calibration token ids include {smallest}: token ids are >= 0.")
    if vocab_size and largest >= vocab_size:
        raise CalibrationDataError(
            f"The calibration token ids go up to {largest}, but the model's vocabulary has {vocab_size} ids "
            f"(0 to {vocab_size - 1}): were they made by another model's tokenizer?"
        )


def sample_id_windows(
    rows: Sequence[torch.Tensor], tokenizer: Any, num_samples: int, seqlen: int, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Token-id counterpart of `sample_token_windows`: the rows joined into one stream, `num_samples` windows of
    `seqlen` tokens drawn from it with the same seed protocol.

    With a tokenizer, each window starts as the tokenizer starts a text (`window_prefix`, e.g. a BOS), and a row
    that starts with that prefix itself (ids made with `add_special_tokens=True`) loses it in the stream, so no
    window holds it twice; the ids of one text tokenized without special tokens give the windows of that text.
    Without a tokenizer, the windows are cut from the ids exactly as given.
    """
    prefix = window_prefix(tokenizer)
    stream = torch.cat([_without_prefix(row, prefix) for row in rows])
    return _draw_windows(stream, prefix, num_samples, seqlen, seed, "calibration token stream")


def sample_id_examples(
    rows: Sequence[torch.Tensor],
    tokenizer: Any,
    num_samples: int,
    seqlen: int,
    seed: int = 0,
    pad_token_id: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Token-id counterpart of `sample_examples` (encoders): one sequence per row, the rows chosen as texts are.

    A row is truncated to `seqlen` tokens, keeping the tokenizer's closing special tokens (e.g. [SEP]) where it
    ends with them, as the tokenizer truncates a text (without a tokenizer: its first `seqlen` ids). Trailing `pad_token_id`s (rows padded to one length
    without an attention mask) are dropped: no statistic sees a pad token.
    """
    rng = random.Random(seed)
    chosen = list(rows) if len(rows) <= num_samples else rng.sample(list(rows), num_samples)
    suffix = _special_token_frame(tokenizer)[1] if tokenizer is not None else []
    samples = []
    for row in chosen:
        if pad_token_id is not None:
            real = torch.nonzero(row != pad_token_id)
            row = row[: int(real[-1]) + 1] if real.numel() else row[:0]
        if row.numel() > seqlen:
            ending = torch.tensor(suffix, dtype=row.dtype)
            keep = suffix and len(suffix) < seqlen and torch.equal(row[-len(suffix) :], ending)
            row = torch.cat([row[: seqlen - len(suffix)], ending]) if keep else row[:seqlen]
        if row.numel():
            samples.append({"input_ids": row[None, :].clone()})
    if not samples:
        raise CalibrationDataError("The calibration token ids hold only padding.")
    return samples


def _without_prefix(row: torch.Tensor, prefix: list[int]) -> torch.Tensor:
    if prefix and row.numel() >= len(prefix) and row[: len(prefix)].tolist() == prefix:
        return row[len(prefix) :]
    return row
