"""A checkpoint's metadata, checked field by field before the run trusts any of it.

The metadata is strict JSON: ``format``, ``epoch``, ``key_impl``, ``history``
and ``fingerprint``. `check_meta` takes nothing on faith: the epoch is a whole
number that equals the length of the history (read before anything is built
from the number), every history record holds only the entries `train` writes,
each of its type and range, and the key's implementation is the run's.

Non-finite numbers in the history (an overflowing test loss) are written as the
strings "inf", "-inf" or "nan" and read back as those floats.
"""

from __future__ import annotations

import math

FORMAT = 1

_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fraction(value) -> bool:
    return _number(value) and 0 <= value <= 1


def _non_negative(value) -> bool:
    return _number(value) and not value < 0  # inf allowed: ε of a run without noise


def _grad_check(value) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"max_rel_error", "rtol", "passed"}
        and _non_negative(value["max_rel_error"])
        and _non_negative(value["rtol"])
        and isinstance(value["passed"], bool)
    )


RECORD = {
    "loss": (_number, "a number"),
    "test_loss": (_number, "a number"),
    "test_accuracy": (_fraction, "a number in [0, 1]"),
    "epsilon": (_non_negative, "a number ≥ 0"),
    "delta": (_fraction, "a number in [0, 1]"),
    "grad_check": (_grad_check, "{max_rel_error ≥ 0, rtol ≥ 0, passed: bool}"),
    "steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an int ≥ 0"),
    "accountant": (lambda v: v in ("pld", "rdp"), "'pld' or 'rdp'"),
    "adjacency": (lambda v: v == "add-or-remove-one", "'add-or-remove-one'"),
}
"""What a history record may hold besides ``epoch``: the check and what it expects."""


def check_meta(meta, key_impl: str | None) -> tuple[int, list[dict], dict]:
    """The epoch, history and fingerprint of ``meta``, each checked; ValueError if not.

    Args:
        meta: the decoded JSON.
        key_impl: the run's PRNG implementation (None for a raw uint32 key).
    """
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"unknown format {found!r:.80}, expected {FORMAT}")
    if set(meta) != {"format", "epoch", "key_impl", "history", "fingerprint"}:
        raise ValueError(f"the metadata's entries are {sorted(meta)!r:.200}")
    epoch, history = meta["epoch"], meta["history"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"the epoch {epoch!r:.80} is not a whole number ≥ 0")
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise ValueError("the history is not a list of records")
    counted = [record.get("epoch") for record in history]
    if len(history) != epoch or counted != list(range(1, epoch + 1)):
        raise ValueError(
            f"the history's epochs {counted!r:.80} do not count 1, 2, ... up to the epoch "
            f"{epoch!r:.40}"
        )
    history = _floats_back(history)
    for record in history:
        _check_record(record)
    if not isinstance(meta["fingerprint"], dict):
        raise ValueError("the fingerprint is not a mapping")
    if meta["key_impl"] is not None and not isinstance(meta["key_impl"], str):
        raise ValueError(f"the key implementation {meta['key_impl']!r:.80} is not a name")
    if meta["key_impl"] != key_impl:
        raise ValueError(
            f"the key implementation {meta['key_impl']!r:.80} is not this run's {key_impl!r}"
        )
    return epoch, history, meta["fingerprint"]


def _check_record(record: dict) -> None:
    """Each entry of one history record of its type and range; no entry `train` never writes."""
    for name, value in record.items():
        if name == "epoch":
            continue
        if name not in RECORD:
            raise ValueError(f"epoch {record['epoch']}: an unknown history entry {name!r:.40}")
        check, expected = RECORD[name]
        if not check(value):
            raise ValueError(
                f"epoch {record['epoch']}: {name} is {value!r:.80}, expected {expected}"
            )
    if "loss" not in record and "epsilon" not in record:  # a private run releases no loss
        raise ValueError(f"epoch {record['epoch']}: the history record has no loss")


def _floats_back(value):
    """The history as it was saved: the strings "inf", "-inf", "nan" back to floats."""
    if isinstance(value, dict):
        return {k: _floats_back(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats_back(v) for v in value]
    return _NON_FINITE.get(value, value) if isinstance(value, str) else value
