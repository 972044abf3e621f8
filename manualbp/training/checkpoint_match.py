"""Whether a checkpoint belongs to this run: its stored fingerprint against the run's.

`check_fingerprint` raises `CheckpointMismatchError` naming each part of the
fingerprint (`identity.PARTS`: net, plug-in code, shapes, settings, data) that
differs, with its first differing entries; then, unless ``resume="continue"``,
it refuses a checkpoint trained with other caller settings (the starting params,
the optimizer's updates on a fixed probe gradient), naming which.
"""

from __future__ import annotations

from pathlib import Path

from manualbp.training.checkpoint_directory import CheckpointMismatchError
from manualbp.training.identity import PARTS, differences

RESUME = ("same", "continue")
"""How `load` treats a checkpoint whose caller part differs: refuse, or go on with it."""


def check_fingerprint(path: Path, stored: dict, current: dict, resume: str) -> None:
    """Raise `CheckpointMismatchError` naming each part, and the first entries, that differ;
    then, unless ``resume == "continue"``, the caller's settings."""
    _refuse_another_run(path, stored, current)
    if "caller" not in current or resume == "continue" or stored.get("caller") == current["caller"]:
        return
    _refuse_other_caller_settings(path, stored.get("caller"), current["caller"])


def _refuse_another_run(path: Path, stored: dict, current: dict) -> None:
    """Every part of the fingerprint the same, or the parts and first entries that differ."""
    differ = [part for part in PARTS if stored.get(part) != current[part]]
    if differ:
        found = [d for part in differ for d in differences(stored.get(part), current[part], part)]
        details = "; ".join(
            f"{where}: checkpoint has {old!r:.120}, this run has {new!r:.120}"
            for where, old, new in found[:4]
        )
        raise CheckpointMismatchError(
            f"checkpoint_dir: {path} belongs to a different run ({', '.join(differ)} differ"
            f"); it is left untouched. Use another checkpoint_dir, or the same net, code, data, "
            f"optimizer and settings to resume. {details}"
        )


def _refuse_other_caller_settings(path: Path, before, caller: dict) -> None:
    """The checkpoint's caller part ``before`` differs from this call's: say which part."""
    if not isinstance(before, dict):
        raise CheckpointMismatchError(
            f"checkpoint_dir: {path} records no starting params or optimizer to compare with "
            "this call's (an older manualbp wrote it); it is left untouched. Pass "
            "resume='continue' to go on from it with this call's settings"
        )
    changed = []
    if before.get("optimizer") != caller["optimizer"]:
        changed.append(
            "the optimizer (its updates on a fixed probe gradient differ: another learning "
            "rate or hyperparameter)"
        )
    leaves = [k for k, v in caller["params"].items() if before.get("params", {}).get(k) != v]
    if leaves:
        changed.append(
            f"the starting params ({', '.join(f'params{k}' for k in leaves[:4])} differ: another "
            "init, seed or params=)"
        )
    raise CheckpointMismatchError(
        f"checkpoint_dir: {path} was trained with other settings than this call passes: "
        f"{'; and '.join(changed)}. It is left untouched. To go on from the checkpoint with "
        "this call's settings, pass resume='continue'; to start afresh, use another "
        "checkpoint_dir"
    )
