"""One clear error when a Hub name is asked for and the Hugging Face Hub cannot be reached.

Offline (`HF_HUB_OFFLINE=1`, or no network), a Hub id that is not in the local cache ends in transformers or datasets
with a long chain of exceptions (huggingface_hub, httpx, datasets' module factory). `from_pretrained`, the named
calibration datasets ("wikitext2", "c4", "ptb") and the CLI turn it into `HubUnreachableError`: one line that says
what was asked for, why it failed and what to do, including the model and text this install ships offline
(`python -m optimum_prune.assets`).

Light on purpose: the CLI imports it before torch.
"""

from __future__ import annotations

import os

__all__ = ["HubUnreachableError", "hub_unreachable_error", "is_hub_unreachable"]

# Exception classes, by name, that mean "not in the cache and the Hub could not be asked": huggingface_hub's
# LocalEntryNotFoundError (offline mode, or a failed connection with nothing cached) and OfflineModeIsEnabled, the
# built-in ConnectionError that datasets raises ("Couldn't reach 'wikitext' on the Hub"), and the transport errors of
# httpx / requests. Matched by name so that none of those packages has to be imported here.
_UNREACHABLE = {
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "NetworkError",
}

OFFLINE_ASSETS_HINT = (
    "offline, `python -m optimum_prune.assets` prints the model and text this install ships (SmolLM2-135M, gensim's "
    "Wikipedia articles)"
)


class HubUnreachableError(ConnectionError):
    """A Hub model or dataset was asked for, it is not in the local cache, and the Hub cannot be reached
    (`HF_HUB_OFFLINE=1` or no network). The message is one line and says what to do."""


def is_hub_unreachable(error: BaseException) -> bool:
    """Whether `error`, or an exception it was raised from, says the Hub could not be reached for an uncached file."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ in _UNREACHABLE for cls in type(current).__mro__):
            return True
        current = current.__cause__ or current.__context__
    return False


def _offline_mode() -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_unreachable_error(what: str, fix: str) -> HubUnreachableError:
    """The error for `what` (e.g. "model 'org/name'") that could not be fetched; `fix` says what to pass instead."""
    reason = "HF_HUB_OFFLINE=1 is set" if _offline_mode() else "no connection to the Hub"
    return HubUnreachableError(
        f"Cannot load {what}: the Hugging Face Hub is unreachable ({reason}) and it is not in the local cache. "
        f"{fix[:1].upper()}{fix[1:]}; {OFFLINE_ASSETS_HINT}."
    )
