"""Activations and losses named on the command line: a built-in name or ``module:attribute``.

`verify` and `train` resolve ``--hidden``, ``--output`` and ``--loss`` here, so a
derivation verified from the command line is trainable from it under the same
spelling. A ``module:attribute`` plug-in is imported from the current folder
first, as a user's own file next to their data would be.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from manualbp.activations import ACTIVATIONS, HIDDEN_ACTIVATIONS, Activation
from manualbp.losses import LOSSES, Loss
from manualbp.tools.console import UserError


def hidden_activations(specs: Sequence[str]) -> list:
    """``--hidden``: one activation per name, for every hidden layer or one each.

    Only elementwise built-ins are offered: softmax couples its units, so it is
    an output function, never a hidden one.
    """
    builtins = {name: ACTIVATIONS[name] for name in HIDDEN_ACTIVATIONS}
    return [resolve(spec, Activation, builtins, "--hidden") for spec in specs]


def output_activation(spec: str):
    """``--output``: a built-in activation name or an `mbp.Activation` plug-in."""
    return resolve(spec, Activation, ACTIVATIONS, "--output")


def loss_function(spec: str):
    """``--loss``: a built-in loss name or an `mbp.Loss` plug-in."""
    return resolve(spec, Loss, LOSSES, "--loss")


def resolve(spec: str, kind: type, builtins: dict, flag: str):
    """A name of ``builtins`` (returned as is), or the ``kind`` object ``module:attribute`` names.

    Raises:
        UserError: an unknown name; a module that does not import (whatever it
            raises, ``sys.exit`` included); an attribute that is not a ``kind``.
    """
    if ":" not in spec:
        if spec not in builtins:
            raise UserError(
                f"{flag}: unknown {kind.__name__.lower()} {spec!r}; expected one of "
                f"{', '.join(builtins)} or module:attribute"
            )
        return spec
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except SystemExit as exit_:
        # A plug-in's own sys.exit must not end manualbp silently with its status.
        raise UserError(
            f"{flag}: cannot import {module_name!r} for {spec!r}: it called "
            f"sys.exit({exit_.code!r}) while being imported"
        ) from None
    except Exception as error:  # a plug-in may raise anything on import: SyntaxError, ...
        raise UserError(
            f"{flag}: cannot import {module_name!r} for {spec!r}: {type(error).__name__}: {error}"
        ) from None
    obj = getattr(module, attribute, None)
    if not isinstance(obj, kind):
        raise UserError(
            f"{flag}: {spec!r} is {type(obj).__name__}, expected an mbp.{kind.__name__} object"
        )
    return obj
