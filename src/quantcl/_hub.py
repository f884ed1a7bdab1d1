"""Fetches from the Hugging Face Hub: offline mode, and one error when the Hub cannot be reached.

A machine without internet (an HPC compute node, a firewalled lab, ``HF_HUB_OFFLINE=1``) gets
a :class:`~quantcl.errors.HubUnreachableError` that names the model or dataset, says why it
could not be fetched and how to run from a local copy, instead of the 40-line ``ConnectionError``
traceback that ``datasets`` and ``transformers`` raise.

Examples:
    >>> def fetch():
    ...     raise ConnectionError("Couldn't reach 'org/data' on the Hub (OfflineModeIsEnabled)")
    >>> with reaching_hub("dataset", "org/data", local="give data_dir a local copy"):  # doctest: +ELLIPSIS
    ...     fetch()
    Traceback (most recent call last):
    ...
    quantcl.errors.HubUnreachableError: cannot fetch dataset 'org/data' from the Hugging Face Hub (...); to run without the Hub, give data_dir a local copy, ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from quantcl.errors import HubUnreachableError

__all__ = ["hub_offline", "reaching_hub"]

_TRUE = {"1", "ON", "YES", "TRUE"}
# transformers' OSError when neither the Hub nor the cache has a model's files
_TRANSFORMERS_NO_CONNECTION = "couldn't connect to"


def _env_true(*names: str) -> list[str]:
    return [f"{v}={os.environ[v]}" for v in names if os.environ.get(v, "").upper() in _TRUE]


def hub_offline(model_kwargs: Mapping[str, Any] | None = None) -> bool:
    """Whether the Hub may not be asked: ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` or ``local_files_only``."""
    from huggingface_hub import constants

    env = bool(_env_true("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE) or (model_kwargs or {}).get("local_files_only") is True


def _why(kind: str, err: BaseException) -> str:
    flags = _env_true("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE" if kind == "dataset" else "TRANSFORMERS_OFFLINE")
    if flags:
        return f"offline mode is on ({', '.join(flags)}) and it is not in the local cache"
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"no network, or the Hub did not answer, and it is not in the local cache: {detail}"


def _is_unreachable(err: BaseException) -> bool:
    if isinstance(err, ConnectionError):  # datasets: "Couldn't reach '<id>' on the Hub (...)"
        return True
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - huggingface_hub always comes with transformers
        return False
    if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return True
    return isinstance(err, OSError) and _TRANSFORMERS_NO_CONNECTION in str(err).lower()


@contextmanager
def reaching_hub(kind: str, name: str, *, local: str) -> Iterator[None]:
    """Turn "the Hub cannot be reached" inside the block into one :class:`HubUnreachableError`.

    Args:
        kind: what is fetched, for the message (``"dataset"``, ``"model"``).
        name: its Hub id.
        local: how to run from a local copy instead (the option that takes one).
    """
    try:
        yield
    except Exception as err:
        if not _is_unreachable(err):
            raise
        cache = "the datasets cache (HF_DATASETS_CACHE)" if kind == "dataset" else "the Hub cache (HF_HOME)"
        raise HubUnreachableError(
            f"cannot fetch {kind} {name!r} from the Hugging Face Hub ({_why(kind, err)}); "
            f"to run without the Hub, {local}, or fetch it once on a machine with internet so that "
            f"{cache} holds it"
        ) from err
