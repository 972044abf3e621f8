"""Verification of the curvature quantities: rows per equation and layer against autodiff.

Every quantity of equations (10)–(19) is checked two ways, in the derivation's
layer numbering (l = 2..L), as `verify` checks (1)–(4):

* Teacher-forced steps. Each equation is given exactly the inputs the
  reference computes (S^{l+1} = (∂f/∂z^{l+1})ᵀ S_f from `jax.jacrev`, the
  Hessian H^{l+1} = ∂²E/∂z^{l+1}² from `jax.hessian`, R{δ^{l+1}} and R{z^l}
  from `jax.jvp`, σ' and σ'' from forward mode), and its output is compared
  with the reference's at that layer. A wrong step fails at its own equation
  and layer, and not at every layer below it. At the output, (17) and (19)
  start from z^L, ŷ and y and use the net's own σ^L derivatives and loss
  record, so a wrong σ^L'' fails there as well as in its own σ'' row.
* End to end. The composed quantities (`diag_ggn`, its Monte Carlo estimate
  with the same sampled targets, `kflr`, `kfac`, `diag_hessian`, `hvp`,
  `ggn_vp`) against autodiff routes: per-example Jacobians with the loss's
  Hessian, `jax.hessian` of Ē per parameter array (small nets), `jax.jvp`
  of `jax.grad`, and J v, H, Jᵀ composed. For B = 1 the KFLR factors are
  also checked as G ⊗ A against the GGN block of W^l.

The building blocks come first: H_f, S_f S_fᵀ and the closed-form H_f r
against `jax.hessian` of E in f, and σ'' of every layer that needs it
against autodiff of the hand-derived σ' (as `verify_activation`). Every row
goes through `_agree`, the one place that decides the tolerance.

The verdict is `tolerance.judge`'s: the program that forms every row runs
twice, in the net's dtype (the manual results, and the references as the
witness) and in float64 from the same parameters and batch cast up (the
reference, and the magnitudes). What is drawn at random, the direction v and
the sampled factors s̃ of (16), is drawn once in the net's dtype and cast up,
so that both runs see the same v and the same samples. A float64 net has no
higher precision: its one run is the reference, and there is no witness.
A 2-byte net (bfloat16, float16) is judged the same way, by its own witness.
A teacher-forced step or a building block passes through one layer (d = 1);
an end-to-end quantity through L − 1.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import validation
from manualbp._entry import in_compute_dtype
from manualbp._records import environment
from manualbp.extensions.curvature_equations import CURVATURE, CurvatureEquations, logits_are_f
from manualbp.network import MLP, Params, forward_pass_batch
from manualbp.parameters import param_dtype
from manualbp.verification import kinks, witnesses
from manualbp.verification.compare import Rounding, Site, compare
from manualbp.verification.curvature_ggn import block_rows, ggn_rows
from manualbp.verification.curvature_hessian import hessian_rows, r_rows
from manualbp.verification.curvature_references import References
from manualbp.verification.curvature_sampled import sampled_rows
from manualbp.verification.report import Report, Row
from manualbp.verification.spectra import verify_spectra

Array = jax.Array


def _agree(label, actual, reference, witness, magnitude, dtype) -> Row:
    """One row: ``actual`` against the float64 ``reference``, judged by ``witness``.

    ``label`` = (check, equation, layer, depth). The one place the curvature
    rows meet the tolerance rule (`tolerance.judge`), so that a change of rule
    is a change here.
    """
    check, equation, layer, depth = label
    return compare(
        Site(check, equation, layer), actual, reference, witness, Rounding(dtype, depth, magnitude)
    )


def verify_curvature(
    net: MLP,
    params: Params,
    X: Array,
    Y: Array,
    *,
    key: Array | None = None,
    equations: CurvatureEquations = CURVATURE,
    spectra: bool = False,
) -> Report:
    """Check every curvature quantity equation by equation and layer by layer.

    Args:
        net, params, X, Y: the network, its parameters and a (small) batch.
        key: a `jax.random` key for the direction v of the vector products and
            the sampled targets (default ``jax.random.key(0)``).
        equations: the `CurvatureEquations` under test (default: manualbp's).
        spectra: also check the spectra of equations (20)–(25) on these products:
            `verify_spectra`'s rows for the GGN, and for the Hessian where every
            activation the Hessian needs has σ'' (otherwise one row says why not).

    Returns:
        A `Report`.
    """
    key = jax.random.key(0) if key is None else key
    rows = curvature_rows(net, params, X, Y, key=key, equations=equations)
    if spectra:
        rows += _spectra_rows(net, params, X, Y, key)
    dtype = param_dtype(params)
    meta = {
        "subject": f"curvature of {net!r}",
        "batch": int(X.shape[0]),
        "dtype": str(jnp.dtype(dtype)),
        "reference": witnesses.reference_note(dtype),
        **environment(),
    }
    return Report(tuple(rows), meta)


def _spectra_rows(net: MLP, params: Params, X: Array, Y: Array, key: Array) -> list[Row]:
    """`verify_spectra`'s rows for each operator these products define, checks prefixed."""
    needs = net.hidden if logits_are_f(net) else net.activations
    operators = ["ggn"]
    if all(sigma.deriv2 is not None for sigma in needs):
        operators.append("hessian")
    rows = []
    for operator in operators:
        report = verify_spectra(net, params, X, Y, operator=operator, key=key)
        rows += [row._replace(check=f"spectra: {row.check}") for row in report.rows]
    if "hessian" not in operators:
        rows.append(
            Row(
                check="spectra: Hessian",
                equation=None,
                layer=None,
                max_abs_err=math.nan,
                rel_err=math.nan,
                tol=math.nan,
                passed=False,
                diagnosis="not judged: an activation has no σ'' (Activation.deriv2), "
                "so the Hessian's products cannot be formed; the GGN's spectra were checked",
                judged=False,
            )
        )
    return rows


MAX_ARRAY_SIZE = 2048
"""Most entries of one W^l or b^l: the reference forms its dense Hessian (size² entries)."""


MAX_BATCH = 256
"""Most examples: the reference forms every example's Jacobian with respect to θ."""


def _check_small(net: MLP, batch: int) -> None:
    """Refuse, with a clear error, a net whose dense autodiff references would not fit."""
    largest = max(n_out * n_in for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:], strict=True))
    if largest > MAX_ARRAY_SIZE or batch > MAX_BATCH:
        raise ValueError(
            f"verify_curvature: its autodiff references are dense Hessians and Jacobians, so it "
            f"takes nets whose largest W^l has at most {MAX_ARRAY_SIZE} entries and batches of at "
            f"most {MAX_BATCH}; got {largest} entries (sizes={net.sizes}) and B = {batch}. "
            "Check the derivation on a small net of the same activations and loss"
        )


def curvature_rows(
    net: MLP,
    params: Params,
    X: Array,
    Y: Array,
    *,
    key: Array,
    equations: CurvatureEquations = CURVATURE,
) -> list[Row]:
    """The rows of `verify_curvature`: building blocks, GGN, Hessian, R-operator."""
    validation.check_batch(net, params, X, Y)
    validation.check_finite(X, Y)
    validation.check_key(key)
    _check_small(net, X.shape[0])
    p, X, Y = in_compute_dtype(net, params, X, Y)
    dtype = jnp.dtype(param_dtype(p))
    _check_loss_hessian(net)
    missing = _without_second_derivative(net)
    found = _kinks_in_batch(net, p, X)
    if found:  # autodiff takes the hand's one-sided slope there (kinks.py)
        net = kinks.with_ties_broken(net, found)
    arrays, reference_arrays, labels = _programs(net, equations, tuple(missing))
    values, v, drawn = arrays(p, X, Y, key)
    if dtype == witnesses.REFERENCE_DTYPE:
        # No higher precision: this run is the reference, and there is no witness.
        judged = [(actual, None, reference, magnitude) for actual, reference, magnitude in values]
    else:
        with jax.enable_x64(True):
            up = jax.tree.map(lambda t: jnp.asarray(np.asarray(t, np.float64)), (p, X, Y, v, drawn))
            references = jax.device_get(reference_arrays(*up[:3], key, *up[3:]))
        judged = [
            (actual, witness, reference64, magnitude64)
            for (actual, witness, _), (reference64, magnitude64) in zip(
                values, references, strict=True
            )
        ]
    rows = [
        _agree(label, actual, reference, witness, magnitude, dtype)
        for label, (actual, witness, reference, magnitude) in zip(labels, judged, strict=True)
    ]
    rows += sampled_rows(net, p, X, Y, equations, jax.random.fold_in(key, 1))
    return rows + ([_skipped_row(missing)] if missing else [])


@functools.lru_cache(maxsize=32)
def _programs(net: MLP, equations: CurvatureEquations, missing: tuple):
    """(the rows' arrays, their float64 references, the rows' labels) for one net.

    One traced program for every reference and step: op by op, the many small
    autodiff transforms spend most of their time compiling. It runs first in
    the net's dtype (v and the samples drawn there), then in float64 with that
    v and those samples cast up. Built once per (net, equations), so that
    `verify_curvature` called again on the same net reuses the compiled
    programs; the labels are the same for every batch and are recorded when
    the program is traced.
    """
    labels = []

    def arrays(p, X, Y, key, v=None, drawn=None):
        key_v, key_mc = jax.random.split(key)
        if v is None:
            v = jax.tree.map(lambda t: jax.random.normal(key_v, t.shape, t.dtype), p)
        ref = References(net, p, (X, Y), (v, equations), (key_mc, drawn))
        pairs = (
            block_rows(ref, equations)
            + ggn_rows(ref, equations, key_mc)
            + ([] if missing else hessian_rows(ref, equations))
            + r_rows(ref, equations, second=not missing)
        )
        labels[:] = [label for label, _ in pairs]
        return [values for _, values in pairs], v, ref.drawn

    def reference_arrays(p, X, Y, key, v, drawn):
        values, _, _ = arrays(p, X, Y, key, v, drawn)
        return [(reference, magnitude) for _, reference, magnitude in values]

    return jax.jit(arrays), jax.jit(reference_arrays), labels


def _kinks_in_batch(net: MLP, p, X) -> dict:
    """`kinks.on_kinks` on the float64 forward pass of the batch."""
    with jax.enable_x64():
        up = jax.tree.map(lambda t: jnp.asarray(np.asarray(t, np.float64)), (p, X))
        z = forward_pass_batch(net, *up).z
        return kinks.on_kinks(net, [np.asarray(z_l) for z_l in z[1:]])


def _check_loss_hessian(net: MLP) -> None:
    """Every curvature quantity needs the loss's Hessian and its factor: one line if absent."""
    record = net.fused_loss if logits_are_f(net) else net.loss
    if record.hessian is None or record.hessian_factor is None:
        what = "the fused pair" if logits_are_f(net) else f"loss {net.loss.name!r}"
        raise ValueError(
            f"verify_curvature: {what} has no hand-derived Hessian (hessian and "
            "hessian_factor), which every curvature quantity needs; give the Loss both"
        )


def _without_second_derivative(net: MLP) -> list[str]:
    """The activations (with their layers) whose σ'' the Hessian rows need but that lack one."""
    needs = net.hidden if logits_are_f(net) else net.activations
    return [
        f"{sigma.name!r} (layer l={k + 2})" for k, sigma in enumerate(needs) if sigma.deriv2 is None
    ]


def _skipped_row(missing) -> Row:
    """The rows that need σ'' are not run: said once, not judged, never a pass."""
    return Row(
        "Hessian, R-operator rows (17), (19), hvp",
        None,
        None,
        np.nan,
        np.nan,
        np.nan,
        False,
        f"skipped: no σ'' (Activation.deriv2) for {', '.join(missing)}; the GGN, "
        "Kronecker and R{z} rows, which need none, are checked",
        judged=False,
    )
