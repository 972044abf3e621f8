"""Bad input gets a clear error naming the argument; saturated numerics stay finite and agree.

`FAULTS`, below, is the one table of every fault manualbp handles: the fault, how it is
handled, and the tests that hold it ("every entry" is forward, loss, manual_value_and_grad,
autodiff_value_and_grad, per_example_grads, verify and train). A test checks that each
test it names exists.
"""

import errno
import functools
import io
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_grads_close

import manualbp as mbp
from manualbp.network import Layer
from manualbp.training import loop, memory
from manualbp.training.identity import code_identity, optimizer_probe

NET = mbp.MLP((3, 4, 2), "tanh", "softmax", "cross_entropy")
PARAMS = NET.init(jax.random.key(0))
X = jnp.ones((5, 3))
Y = jnp.array([0, 1, 1, 0, 1])
EVERY_ENTRY = ("forward", "loss", "manual", "autodiff", "per_example", "verify", "train")

FAULTS = [
    # (fault, how it is handled, the tests: a name here, tests/test_train.py::name, or the
    # command line's own tests)
    (
        "X or Y of the wrong shape, too few layers, params not Layers, a list for a tuple, "
        "string targets, an empty batch, labels out of range",
        "ValueError or TypeError naming the argument, at every entry",
        "test_every_entry_point_names_the_bad_argument",
    ),
    (
        "inf or NaN in X (verify, train)",
        "ValueError naming X and the row",
        "test_non_finite_inputs_are_rejected_by_verify_and_train",
    ),
    (
        "X or Y finite in float64 but not in the parameters' dtype (1e39 in float32)",
        "checked after the cast; ValueError naming X or Y, the value and the dtypes",
        "test_inputs_finite_in_float64_but_not_in_the_parameters_dtype_are_named",
    ),
    (
        "X that overflows only in train's compute dtype (float16)",
        "the same check after both casts",
        "test_train_checks_finiteness_in_the_compute_dtype_too",
    ),
    (
        "binary cross-entropy targets outside [0, 1]; negative cross-entropy targets",
        "ValueError naming the rule and the row, at every entry but forward",
        "test_targets_outside_the_losss_domain_are_refused",
    ),
    (
        "a pandas Series or DataFrame, a list, an `__array__` object as X or Y",
        "converted by np.asarray at every entry, same results as arrays",
        "test_pandas_objects_are_taken_as_their_arrays_everywhere, "
        "test_duck_arrays_and_lists_are_taken_and_objects_refused_with_one_message",
    ),
    (
        "X or Y with no numeric array form (strings in a DataFrame, a dict, ragged lists)",
        "one TypeError naming the argument",
        "test_duck_arrays_and_lists_are_taken_and_objects_refused_with_one_message, "
        "test_every_entry_point_names_the_bad_argument",
    ),
    (
        "a hand-written σ' that returns a scalar, an extra axis, zᵀ or integers",
        "ValueError or TypeError naming the layer and activation, once per (net, dtype), at "
        "every entry and in verify_activation",
        "test_a_bad_hand_written_derivative_is_named_at_every_entry",
    ),
    (
        "a σ' written with NumPy (np.tanh on a tracer)",
        "TypeError: the derivative must use jax.numpy",
        "test_a_bad_hand_written_derivative_is_named_at_every_entry",
    ),
    (
        "a hand-written ∂E/∂ŷ of the wrong shape",
        "ValueError naming the loss, at every entry and in verify_loss",
        "test_a_loss_gradient_of_the_wrong_shape_is_named",
    ),
    (
        "saturated logits (±1e4)",
        "fused losses stay finite, manual and autodiff agree",
        "test_saturated_logits_give_finite_losses_and_agreeing_gradients",
    ),
    (
        "an inf input under the user's own jit",
        "documented: only shapes are checked there",
        "test_an_inf_input_under_a_users_own_jit_is_not_checked",
    ),
    (
        "a bad key or optimizer",
        "TypeError naming it",
        "test_init_names_a_bad_key, test_train_names_a_bad_key_or_optimizer",
    ),
    (
        "a run killed with SIGKILL",
        "the checkpoint is whole; the run resumes bit-identically",
        "tests/test_train.py::test_sigkill_mid_training_resumes_bit_identical",
    ),
    (
        "a truncated, bit-flipped or reshaped checkpoint",
        "CheckpointError; the file is kept",
        "tests/test_train.py::test_corrupted_checkpoint_is_refused_and_kept",
    ),
    (
        "a hand-made checkpoint: epoch a fraction, negative, a string; a history that counts "
        "backwards",
        "CheckpointError naming the field; the file is kept",
        "tests/test_train.py::test_hand_made_metadata_is_refused_and_kept",
    ),
    (
        "resuming another run: net, optimizer state, batch size, grad, key",
        "CheckpointMismatchError naming the parts; the file is kept",
        "tests/test_train.py::test_checkpoint_of_another_run_is_refused_and_kept",
    ),
    (
        "resuming on other data of the same shape, or with a σ' of the same name and other code",
        "CheckpointMismatchError naming data.X, code.activations... ; the file is kept",
        "tests/test_train.py::test_resume_on_other_data_or_code_is_refused_and_kept",
    ),
    (
        "a plug-in's code identity: closures, constants, partials, library functions, another"
        " process",
        "a hash of what the code computes, the same in every process",
        "test_code_identity_sees_code_constants_and_closures, "
        "test_code_identity_is_the_same_in_another_process",
    ),
    (
        "a history holding inf",
        'strict JSON ("inf"), read back as inf',
        "tests/test_train.py::test_a_history_holding_inf_is_written_as_strict_json_and_read_back",
    ),
    (
        "checkpoint_dir a file, below a file, read-only",
        "CheckpointWriteError before the first epoch",
        "tests/test_train.py::test_a_checkpoint_dir_that_cannot_be_written_is_refused_before_"
        "any_epoch, "
        "tests/test_train.py::test_an_unwritable_checkpoint_dir_is_refused_before_any_epoch",
    ),
    (
        "a full disk during a save",
        "partial file removed, previous checkpoint kept, CheckpointWriteError saying so",
        "tests/test_train.py::test_a_full_disk_keeps_the_last_checkpoint_and_leaves_no_partia"
        "l_file",
    ),
    (
        "two trainings on one checkpoint_dir (one process or two)",
        "flock held for the run; the second fails at once with CheckpointLockedError naming "
        "the directory; nothing overwritten",
        "tests/test_train.py::test_a_second_run_on_a_locked_checkpoint_dir_fails_fast_in_proc"
        "ess, "
        "tests/test_train.py::test_a_second_process_on_a_locked_checkpoint_dir_fails_fast",
    ),
    (
        "divergence in training",
        "DivergenceError naming the epoch and step; the previous checkpoint stays",
        "tests/test_train.py::test_divergence_stops_naming_the_epoch_and_keeps_the_last_checkpoint",
    ),
    (
        "a plug-in that raises any error on import",
        "one line, exit 2, no traceback",
        "tests/test_cli.py (command line)",
    ),
    (
        "--json at a directory or a read-only path; --runs-dir unwritable",
        "checked before the run; one line, exit 2",
        "tests/test_cli.py (command line)",
    ),
    (
        "train --epochs 0; --run-name that exists",
        "one line, exit 2",
        "tests/test_cli.py (command line)",
    ),
    (
        "a run that diverges, and the run folder it leaves",
        "one line, exit 1; the folder says the run failed",
        "tests/test_cli.py (command line)",
    ),
    # round 3
    (
        "a softmax over one output unit (always 1: loss 0, accuracy 1, nothing learned)",
        "ValueError at MLP(...), pointing to sigmoid with binary cross-entropy",
        "test_a_softmax_over_one_output_unit_is_refused",
    ),
    (
        "MNIST-format labels: a byte outside 0..9, IDX float32 labels or images",
        "ValueError naming the file, the value and its index, or the dtype",
        "tests/test_data.py::test_labels_outside_the_ten_classes_or_not_bytes_are_refused",
    ),
    (
        "a truncated .gz data file; a gzip CRC mismatch",
        "ValueError naming the file (no EOFError traceback)",
        "tests/test_data.py::test_a_truncated_or_corrupted_gzip_names_the_file",
    ),
    (
        "hostile checkpoints: a huge epoch, a deflate bomb, deeply nested JSON, an encrypted "
        "flag, an unknown zip version or compression method, an unexpected member, a key of "
        "the wrong shape or an unknown PRNG implementation, a weight of another dtype, garbage "
        "in the history, NaN parameters",
        "CheckpointError naming the member or field, before anything large is allocated "
        "(sizes, names, versions and .npy headers checked first); the file is kept",
        "test_hostile_checkpoints_are_refused_before_anything_large_is_allocated",
    ),
    (
        "any single-byte flip of a checkpoint",
        "CheckpointError or an identical load (every 7th byte by default, every byte with -m slow)",
        "test_every_seventh_byte_flip_is_refused_or_loads_identically, "
        "test_every_byte_flip_is_refused_or_loads_identically",
    ),
    (
        "checkpoint_dir=''; a FIFO, a symlink (dangling or not) or a directory at checkpoint.npz",
        "CheckpointWriteError before the first epoch (no hang, nothing replaced)",
        "test_an_empty_checkpoint_dir_is_refused, "
        "test_a_checkpoint_path_that_is_not_a_regular_file_is_refused, "
        "test_completed_epochs_reads_only_the_metadata",
    ),
    (
        "a checkpoint directory made read-only mid-run",
        "CheckpointWriteError saying the last checkpoint (epoch N) is kept",
        "test_a_directory_made_read_only_mid_run_says_the_last_checkpoint_is_kept",
    ),
    (
        "a resume with another learning rate or optimizer hyperparameter, init, seed or params=",
        "CheckpointMismatchError naming the optimizer (by its updates on a fixed probe "
        "gradient) or the starting params; resume='continue' (--resume continue) goes on with "
        "the new settings and records them",
        "test_a_resume_with_other_settings_is_refused_unless_asked_to_continue, "
        "test_continuing_with_a_new_learning_rate_trains_on_from_the_checkpoint, "
        "test_a_checkpoint_without_the_callers_settings_asks_to_continue, "
        "test_the_optimizer_probe_sees_every_hyperparameter",
    ),
    (
        "an optimizer state that turns NaN while the parameters stay finite",
        "DivergenceError naming the epoch and the state's leaves; that epoch is not "
        "checkpointed, the previous checkpoint is kept",
        "test_an_optimizer_state_that_turns_nan_is_not_checkpointed",
    ),
    (
        "a run that cannot fit in memory (huge widths, n or batch; a low ulimit -v)",
        "RunTooLargeError (a ValueError) before anything is placed: how much the parameters, "
        "optimizer state, activations and data need, and how much is available and why",
        "test_the_memory_estimate_counts_parameters_state_activations_and_data, "
        "test_a_run_that_cannot_fit_is_refused_before_anything_is_allocated, "
        "test_the_available_memory_follows_ulimit_v",
    ),
    (
        "jax.distributed processes given different data, keys, starting params or optimizers",
        "one all-gather of the fingerprint's digests before the first epoch; every process "
        "raises ProcessesDisagreeError naming the first entry that differs",
        "tests/test_multiprocess.py::"
        "test_processes_given_different_runs_refuse_together_naming_the_difference",
    ),
    (
        "a coordinator port already in use",
        "processes.join: CoordinatorPortInUseError, one line, before jax.distributed starts "
        "(scripts/multiprocess_train.py exits 2 and stops the other workers)",
        "tests/test_multiprocess.py::test_a_coordinator_port_in_use_is_named_before_joining",
    ),
]


def call(entry, net=NET, params=PARAMS, X=X, Y=Y):
    if entry == "forward":
        return mbp.forward(net, params, X)
    if entry == "loss":
        return mbp.loss(net, params, X, Y)
    if entry == "manual":
        return mbp.manual_value_and_grad(net, params, X, Y)
    if entry == "autodiff":
        return mbp.autodiff_value_and_grad(net, params, X, Y)
    if entry == "per_example":
        return mbp.per_example_grads(net, params, X, Y)
    if entry == "verify":
        return mbp.verify(net, params, X, Y)
    return mbp.train(
        net,
        params,
        optax.sgd(0.1),
        X,
        Y,
        epochs=1,
        batch_size=5,
        key=jax.random.key(0),
        progress=False,
    )


BAD_INPUTS = [
    # (what, keyword arguments to call, error type, message fragment)
    ("X features ≠ N_1", dict(X=jnp.ones((5, 4))), ValueError, r"X: expected shape \(B, N_1\)"),
    ("X not 2-D", dict(X=jnp.ones(3)), ValueError, r"X: expected shape \(B, N_1\)"),
    ("empty batch", dict(X=jnp.ones((0, 3)), Y=jnp.zeros(0, int)), ValueError, "batch is empty"),
    ("Y width ≠ N_L", dict(Y=jnp.zeros((5, 3))), ValueError, r"Y: expected shape \(B, N_L\)"),
    ("row counts differ", dict(Y=jnp.zeros(4, int)), ValueError, "Y: expected 5 rows"),
    ("label too large", dict(Y=jnp.array([0, 1, 2, 0, 1])), ValueError, "class labels must lie"),
    ("negative label", dict(Y=jnp.array([0, -1, 1, 0, 1])), ValueError, "class labels must lie"),
    ("float vector Y", dict(Y=jnp.zeros(5)), ValueError, r"Y: got shape \(5,\)"),
    ("too few layers", dict(params=PARAMS[:1]), ValueError, "params: expected 2 layers"),
    (
        "wrong W shape",
        dict(params=(Layer(jnp.ones((4, 2)), jnp.ones(4)), PARAMS[1])),
        ValueError,
        r"params\[0\].W \(layer l=2\): expected shape \(4, 3\)",
    ),
    ("params not a tuple", dict(params={"W": 1}), TypeError, "params: expected a tuple"),
    ("params a list", dict(params=list(PARAMS)), TypeError, "got a list; pass tuple"),
    (
        "a plain (W, b) pair",
        dict(params=(tuple(PARAMS[0]), PARAMS[1])),
        TypeError,
        r"params\[0\] \(layer l=2\): expected an mbp.Layer",
    ),
    (
        "boolean labels",
        dict(Y=jnp.array([True, False, True, True, False])),
        ValueError,
        r"Y: got shape \(5,\) of bool",
    ),
    (
        "string targets",
        dict(Y=np.array(["a", "b", "a", "b", "a"])),
        TypeError,
        "Y: expected integer, boolean or floating",
    ),
    ("X not an array", dict(X={"x": 1.0}), TypeError, "X: expected an array"),
    ("ragged X", dict(X=[[1.0, 2.0, 3.0], [1.0]]), TypeError, "X: expected an array"),
]


# Every entry with every bad input it takes: forward takes no Y, so it gets no Y-only case.
ENTRY_CASES = [
    pytest.param(entry, *bad, id=f"{entry}-{bad[0]}")
    for bad in BAD_INPUTS
    for entry in EVERY_ENTRY
    if not (entry == "forward" and set(bad[1]) == {"Y"})
]


def test_the_entry_cases_leave_out_only_forward_with_a_y_alone():
    left_out = len(EVERY_ENTRY) * len(BAD_INPUTS) - len(ENTRY_CASES)
    assert left_out == sum(set(bad[1]) == {"Y"} for bad in BAD_INPUTS) == 7


@pytest.mark.parametrize("entry, what, kwargs, error, match", ENTRY_CASES)
def test_every_entry_point_names_the_bad_argument(entry, what, kwargs, error, match):
    with pytest.raises(error, match=match):
        call(entry, **kwargs)


@pytest.mark.parametrize("entry", ["verify", "train"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_inputs_are_rejected_by_verify_and_train(entry, bad):
    X_bad = np.ones((5, 3), np.float32)
    X_bad[2, 1] = bad
    with pytest.raises(ValueError, match="X: expected finite values"):
        call(entry, X=jnp.asarray(X_bad))


@pytest.mark.parametrize(
    "output, loss, Y_sat",
    [
        ("softmax", "cross_entropy", jnp.array([1, 0, 1, 0])),
        ("sigmoid", "binary_cross_entropy", jnp.array([[1.0], [0.0], [0.0], [1.0]])),
    ],
)
def test_saturated_logits_give_finite_losses_and_agreeing_gradients(output, loss, Y_sat):
    N_L = 2 if output == "softmax" else 1
    net = mbp.MLP((2, 3, N_L), "sigmoid", output, loss)
    # Hidden sigmoids saturate to 0/1 and output logits reach ±1e4.
    params = (
        Layer(jnp.array([[1e3, 0.0], [0.0, -1e3], [1e3, 1e3]]), jnp.zeros(3)),
        Layer(jnp.full((N_L, 3), 5e3) * jnp.array([1.0, -1.0])[:N_L, None], jnp.zeros(N_L)),
    )
    X_sat = jnp.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    z_hidden = X_sat @ params[0].W.T
    z_L = jax.nn.sigmoid(z_hidden) @ params[1].W.T
    assert float(jnp.max(jnp.abs(z_L))) >= 1e4
    assert float(jnp.max(jnp.abs(mbp.forward(net, params, X_sat)))) <= 1.0
    E, grads = mbp.manual_value_and_grad(net, params, X_sat, Y_sat)
    E_ref, grads_ref = mbp.autodiff_value_and_grad(net, params, X_sat, Y_sat)
    assert np.isfinite(E) and float(E) > 1e3  # confidently wrong examples cost ~1e4, not inf
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves((grads, grads_ref)))
    assert_grads_close(grads, grads_ref, net.sizes, 4, jnp.float32)
    assert float(jnp.max(jnp.abs(jax.nn.sigmoid(z_hidden) - 0.5))) == 0.5  # fully saturated


def test_an_inf_input_under_a_users_own_jit_is_not_checked():
    """Documented: value checks need concrete arrays; under jit only shapes are checked."""
    step = jax.jit(mbp.manual_value_and_grad, static_argnums=0)
    X_inf = X.at[0, 0].set(jnp.inf)
    _, grads = step(NET, PARAMS, X_inf, Y)  # no error from us: X is a tracer here
    assert not np.all(np.isfinite(grads[0].W))  # which is why verify and train check values
    with pytest.raises(ValueError, match="X: expected shape"):
        step(NET, PARAMS, jnp.ones((5, 4)), Y)


@pytest.mark.parametrize("bad_key", [0, np.array([1, 2]), jax.random.split(jax.random.key(0))])
def test_init_names_a_bad_key(bad_key):
    with pytest.raises(TypeError, match="key: expected one jax.random key"):
        NET.init(bad_key)


def test_init_takes_typed_and_raw_keys():
    typed, raw = NET.init(jax.random.key(3)), NET.init(jax.random.PRNGKey(3))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(typed), jax.tree.leaves(raw), strict=True)
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(key=0), TypeError, "key: expected one jax.random key"),
        (
            dict(optimizer=optax.sgd),
            TypeError,
            "optimizer: expected an optax GradientTransformation",
        ),
    ],
)
def test_train_names_a_bad_key_or_optimizer(kwargs, error, match):
    arguments = dict(optimizer=optax.sgd(0.1), key=jax.random.key(0))
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        mbp.train(
            NET,
            PARAMS,
            arguments["optimizer"],
            X,
            Y,
            epochs=1,
            batch_size=5,
            key=arguments["key"],
            progress=False,
        )


def test_sizes_accept_numpy_integers():
    assert mbp.MLP(tuple(np.array([3, 4, 2]))).sizes == (3, 4, 2)


# --- round 2: values the math will see, targets the loss allows, inputs of any array kind ------


@pytest.mark.parametrize("entry", ["verify", "train"])
def test_inputs_finite_in_float64_but_not_in_the_parameters_dtype_are_named(entry):
    X_big = np.ones((5, 3))  # float64, while the parameters are float32
    X_big[2, 1] = 1e39  # finite here, inf in float32
    with pytest.raises(
        ValueError, match="X: 1e\\+39 in row 2 is finite in float64 but becomes inf"
    ):
        call(entry, X=X_big)
    net = mbp.MLP((3, 4, 2))  # mse: float targets
    Y_big = np.zeros((5, 2))
    Y_big[4, 0] = -1e39
    with pytest.raises(ValueError, match="Y: -1e\\+39 in row 4 is finite in float64"):
        call(entry, net=net, Y=Y_big)


def test_train_checks_finiteness_in_the_compute_dtype_too():
    X_wide = np.ones((5, 3), np.float32)
    X_wide[1, 0] = 1e5  # float16 holds at most 65504
    with pytest.raises(ValueError, match="X: 100000.0 in row 1 .* float32 then float16"):
        mbp.train(
            NET, PARAMS, optax.sgd(0.1), X_wide, Y, epochs=1, batch_size=5,
            key=jax.random.key(0), progress=False, compute_dtype=jnp.float16,
        )  # fmt: skip


BCE_NET = mbp.MLP((3, 4, 1), "tanh", "sigmoid", "binary_cross_entropy")
BCE_PARAMS = BCE_NET.init(jax.random.key(0))
CE_NET = mbp.MLP((3, 4, 2), "tanh", "softmax", "cross_entropy")


@pytest.mark.parametrize("entry", EVERY_ENTRY[1:])
@pytest.mark.parametrize(
    "net, Y_bad, match",
    [
        (BCE_NET, jnp.array([0.0, 2.0, 1.0, 0.0, 1.0]), r"must lie in \[0, 1\].* got 2.0 in row 1"),
        (BCE_NET, jnp.array([[0], [1], [1], [-1], [0]]), r"must lie in \[0, 1\].* got -1 in row 3"),
        (CE_NET, jnp.array([[1.0, 0.0]] * 4 + [[1.5, -0.5]]), "must be non-negative.* in row 4"),
    ],
    ids=["bce {0, 2}", "bce integer column", "ce negative"],
)
def test_targets_outside_the_losss_domain_are_refused(entry, net, Y_bad, match):
    params = BCE_PARAMS if net is BCE_NET else PARAMS
    with pytest.raises(ValueError, match="Y: .*" + match):
        call(entry, net=net, params=params, Y=Y_bad)


def test_targets_inside_the_losss_domain_pass():
    soft = jnp.array([[0.25, 0.75]] * 5)  # class probabilities
    assert np.isfinite(mbp.loss(CE_NET, PARAMS, X, soft))
    assert np.isfinite(mbp.loss(BCE_NET, BCE_PARAMS, X, jnp.array([0.0, 0.5, 1.0, 1.0, 0.0])))


def assert_same_result(entry, got, expected):
    """The same numbers from an entry: arrays and trees equal, verify's whole report."""
    if entry == "verify":
        got, expected = (got.passed, got.rows), (expected.passed, expected.rows)
    elif entry == "train":
        got, expected = (got.params, got.history), (expected.params, expected.history)
    leaves = jax.tree.leaves(got), jax.tree.leaves(expected)
    assert len(leaves[0]) == len(leaves[1]) > 0
    assert all(np.array_equal(a, b) for a, b in zip(*leaves, strict=True))


@pytest.mark.parametrize("entry", EVERY_ENTRY)
def test_pandas_objects_are_taken_as_their_arrays_everywhere(entry):
    pd = pytest.importorskip("pandas")
    frame, series = pd.DataFrame(np.asarray(X)), pd.Series(np.asarray(Y))
    assert_same_result(entry, call(entry, X=frame, Y=series), call(entry))


class Duck:
    """An array-like that is no array: only ``__array__``."""

    def __init__(self, values):
        self.values = np.asarray(values)

    def __array__(self, dtype=None, copy=None):
        return self.values


@pytest.mark.parametrize("entry", EVERY_ENTRY)
def test_duck_arrays_and_lists_are_taken_and_objects_refused_with_one_message(entry):
    got, expected = call(entry, X=Duck(X), Y=np.asarray(Y).tolist()), call(entry)
    assert_same_result(entry, got, expected)
    pd = pytest.importorskip("pandas")
    words = pd.DataFrame([["a", "b", "c"]] * 5)  # np.asarray gives dtype object
    with pytest.raises(TypeError, match="X: expected an array, or anything np.asarray turns"):
        call(entry, X=words)
    if entry != "forward":
        with pytest.raises(TypeError, match="Y: expected an array, or anything np.asarray"):
            call(entry, Y=words[0])


# --- round 2: a hand-written σ' or ∂E/∂ŷ of the wrong shape, dtype or library -----------------


def _tanh_prime(z):
    return 1 - jnp.tanh(z) ** 2


BAD_DERIVATIVES = [
    # (what, σ', error, message fragment)
    ("a scalar", lambda z: jnp.ones((), z.dtype), ValueError, r"σ' returned shape \(\)"),
    ("an extra axis", lambda z: _tanh_prime(z)[..., None], ValueError, r"σ' returned shape"),
    (
        "the transpose",
        lambda z: _tanh_prime(z).T,
        ValueError,
        r"σ' returned shape \((\d), (\d)\) .* for shape \(\2, \1\)",
    ),
    ("integers", lambda z: jnp.where(z > 0, 1, 0), TypeError, "σ' returned shape .* int32"),
    ("NumPy", lambda z: 1 - np.tanh(z) ** 2, TypeError, "σ' cannot be traced.* use jax.numpy"),
]


@pytest.mark.parametrize("entry", [*EVERY_ENTRY, "verify_activation"])
@pytest.mark.parametrize(
    "what, deriv, error, match", BAD_DERIVATIVES, ids=[b[0] for b in BAD_DERIVATIVES]
)
def test_a_bad_hand_written_derivative_is_named_at_every_entry(entry, what, deriv, error, match):
    mine = mbp.Activation("my_tanh", jnp.tanh, deriv)
    if entry == "verify_activation":
        with pytest.raises(error, match=f"activation 'my_tanh': {match}"):
            mbp.verify_activation(mine)
        return
    net = mbp.MLP((3, 4, 2), mine, "softmax", "cross_entropy")
    with pytest.raises(error, match=f"layer l=2, activation 'my_tanh': {match}"):
        call(entry, net=net)


@pytest.mark.parametrize("entry", [*EVERY_ENTRY[1:], "verify_loss"])
def test_a_loss_gradient_of_the_wrong_shape_is_named(entry):
    summed = mbp.Loss("my_mse", lambda y_hat, y: 0.5 * jnp.sum((y_hat - y) ** 2), jnp.subtract)
    bad = summed._replace(grad=lambda y_hat, y: jnp.sum(y_hat - y))
    match = r"loss 'my_mse': ∂E/∂ŷ returned shape \(\) float32 .*expected shape \(2,\)"
    with pytest.raises(ValueError, match=match):
        if entry == "verify_loss":
            mbp.verify_loss(bad, width=2)
        else:
            call(entry, net=mbp.MLP((3, 4, 2), "tanh", "identity", bad), Y=jnp.zeros((5, 2)))
    assert mbp.verify_loss(summed, width=2).passed  # the same loss with a good ∂E/∂ŷ


# --- round 2: what a checkpoint's code identity sees -------------------------------------------


def _leaky_prime(slope):
    def deriv(z):
        return jnp.where(z >= 0, 1.0, slope).astype(z.dtype)

    return deriv


def _with_a_set(z):
    """A frozenset constant, whose order follows the per-process string hash."""
    return z if "relu" in {"relu", "gelu", "silu", "elu"} else -z


def test_code_identity_sees_code_constants_and_closures():
    assert code_identity(_leaky_prime(0.01)) == code_identity(_leaky_prime(0.01))
    assert code_identity(_leaky_prime(0.01)) != code_identity(_leaky_prime(0.02))
    assert code_identity(lambda z: 1 - jnp.tanh(z) ** 2) != code_identity(
        lambda z: 1 - jnp.tanh(z) ** 3
    )
    assert code_identity(jnp.tanh) != code_identity(jnp.sin)  # jnp functions: by name
    assert code_identity(np.tanh) != code_identity(np.sin)  # ufuncs and builtins: by name
    assert code_identity(abs) != code_identity(max)
    slopes = [functools.partial(jax.nn.leaky_relu, negative_slope=s) for s in (0.1, 0.2)]
    assert code_identity(slopes[0]) != code_identity(slopes[1])
    scale = [jnp.arange(3.0), jnp.arange(3.0) + 1]
    closures = [lambda z, c=c: z * c for c in scale]  # array defaults: by content
    assert code_identity(closures[0]) != code_identity(closures[1])


def test_code_identity_is_the_same_in_another_process():
    tests = Path(__file__).parent
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]),
        PYTHONHASHSEED="12345",
        JAX_PLATFORMS="cpu",
    )
    script = (
        "from manualbp.training.identity import code_identity; import test_reliability as t; "
        "print(code_identity(t._with_a_set), code_identity(t._leaky_prime(0.01)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tests, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [
        code_identity(_with_a_set),
        code_identity(_leaky_prime(0.01)),
    ]


def test_the_fault_table_names_tests_that_exist():
    here = Path(__file__).parent
    for fault, _, tests in FAULTS:
        for test in tests.split(", "):
            if test == "tests/test_cli.py (command line)":
                continue  # the command line's own tests
            file, _, name = test.rpartition("::")
            words = (
                set(globals()) if not file else set((here.parent / file).read_text().split("def "))
            )
            assert any(w.startswith(name + "(") for w in words) or (not file and name in words), (
                f"{fault}: no test {test}"
            )


# --- round 3: silent wrong results ------------------------------------------------------------


def test_a_softmax_over_one_output_unit_is_refused():
    with pytest.raises(ValueError, match="output: softmax over N_L = 1 .*output='sigmoid' with "):
        mbp.MLP((2, 8, 1), output="softmax", loss="cross_entropy")
    with pytest.raises(ValueError, match="softmax over N_L = 1"):
        mbp.MLP((2, 1), output="softmax", loss="mse")
    assert mbp.MLP((2, 8, 2), output="softmax", loss="cross_entropy").sizes[-1] == 2
    assert mbp.MLP((2, 8, 1), output="sigmoid", loss="binary_cross_entropy").classifier


# --- round 3: hostile checkpoints --------------------------------------------------------------

TINY = mbp.MLP((2, 3, 2), "tanh", "softmax", "cross_entropy")
TINY_PARAMS = TINY.init(jax.random.key(1))
TINY_SGD = optax.sgd(0.1)  # one object: every tiny run reuses the compiled epoch
TINY_X = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), jnp.float32)
TINY_Y = jnp.array([0, 1, 1, 0, 1, 0, 0, 1])


def tiny_run(checkpoint_dir, epochs=1, **overrides):
    arguments = dict(epochs=epochs, batch_size=4, key=jax.random.key(2), progress=False)
    arguments.update(overrides)
    return mbp.train(
        TINY, TINY_PARAMS, TINY_SGD, TINY_X, TINY_Y, checkpoint_dir=checkpoint_dir, **arguments
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The bytes of a tiny run's checkpoint after one epoch, and what loading it needs."""
    directory = tmp_path_factory.mktemp("tiny")
    tiny_run(directory)
    data = mbp.checkpoint.path_in(directory).read_bytes()
    with np.load(io.BytesIO(data)) as stored:
        printed = json.loads(stored["meta"].tobytes())["fingerprint"]
    return data, printed


def load_bytes(directory: Path, data: bytes, printed: dict):
    mbp.checkpoint.path_in(directory).write_bytes(data)
    opt_state = TINY_SGD.init(TINY_PARAMS)
    return mbp.checkpoint.load(directory, printed, TINY_PARAMS, opt_state, jax.random.key(2))


def rewritten(data: bytes, change) -> bytes:
    """The checkpoint ``data`` with ``change(arrays, meta)`` applied, saved as np.savez does."""
    with np.load(io.BytesIO(data)) as stored:
        arrays = {name: stored[name] for name in stored.files}
    meta = json.loads(arrays["meta"].tobytes())
    change(arrays, meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def patched_zip(data: bytes, local: int, central: int, value: int) -> bytes:
    """Every member's 2-byte field at ``local`` (local header) and ``central`` (its entry in
    the central directory) set to ``value``: a version, the flags or the compression method."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = out.find(signature)
        while start >= 0:
            out[start + offset : start + offset + 2] = value.to_bytes(2, "little")
            start = out.find(signature, start + 4)
    return bytes(out)


def deflated_junk(data: bytes) -> bytes:
    """params/0 replaced by a 64 MiB member that deflates to a few kilobytes."""
    with np.load(io.BytesIO(data)) as stored:
        arrays = {name: stored[name] for name in stored.files}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, values in arrays.items():
            member = io.BytesIO()
            np.save(member, np.zeros(1 << 24, np.float32) if name == "params/0" else values)
            archive.writestr(f"{name}.npy", member.getvalue())
    return out.getvalue()


def deeply_nested(data: bytes, depth: int = 100_000) -> bytes:
    """The history's first entry a list nested ``depth`` deep (JSON text, written by hand)."""
    with np.load(io.BytesIO(data)) as stored:
        arrays = {name: stored[name] for name in stored.files}
    text = arrays["meta"].tobytes().decode()
    text = text.replace('"history": [', '"history": [' + "[" * depth + "]" * depth + ", ", 1)
    arrays["meta"] = np.frombuffer(text.encode(), np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def set_history(**entries):
    return lambda arrays, meta: meta["history"][0].update(entries)


HOSTILE = [
    # (what, the damage, message fragment)
    ("huge epoch", lambda d: rewritten(d, lambda a, m: m.update(epoch=10**12)), "do not count"),
    ("deflate bomb", deflated_junk, "compression method 8, expected stored"),
    ("nested JSON", deeply_nested, "RecursionError"),
    ("encrypted flag", lambda d: patched_zip(d, 6, 8, 0x0001), r"zip flags 0x0001 \(encrypted"),
    ("zip version 6.3", lambda d: patched_zip(d, 4, 6, 63), "zip version 63, expected 20 or 45"),
    ("compression 99", lambda d: patched_zip(d, 8, 10, 99), "compression method 99"),
    (
        "an unexpected member",
        lambda d: rewritten(d, lambda a, m: a.update(extra=np.zeros(3))),
        r"unexpected \['extra.npy'\]",
    ),
    (
        "a key of the wrong shape",
        lambda d: rewritten(d, lambda a, m: a.update(key=np.zeros(3, np.uint32))),
        r"key.npy: shape \(3,\) '<u4', expected \(2,\) '<u4'",
    ),
    (
        "an unknown PRNG implementation",
        lambda d: rewritten(d, lambda a, m: m.update(key_impl="nonesuch")),
        "the key implementation 'nonesuch' is not this run's 'threefry2x32'",
    ),
    (
        "a weight of another dtype",
        lambda d: rewritten(
            d, lambda a, m: a.update({"params/0": a["params/0"].astype(np.float64)})
        ),
        r"params/0.npy: shape \(3, 2\) '<f8', expected \(3, 2\) '<f4'",
    ),
    ("loss a string", lambda d: rewritten(d, set_history(loss="garbage")), "loss is 'garbage'"),
    (
        "accuracy 7",
        lambda d: rewritten(d, set_history(test_accuracy=7)),
        r"test_accuracy is 7, expected a number in \[0, 1\]",
    ),
    (
        "an unknown history entry",
        lambda d: rewritten(d, set_history(note="hi")),
        "an unknown history entry 'note'",
    ),
    (
        "NaN parameters",
        lambda d: rewritten(d, lambda a, m: a["params/1"].__setitem__(0, np.nan)),
        r"holds non-finite values in params/1 \(1 of 3\)",
    ),
]


@pytest.mark.parametrize("what, damage, match", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_checkpoints_are_refused_before_anything_large_is_allocated(
    tmp_path, tiny_checkpoint, what, damage, match
):
    data, printed = tiny_checkpoint
    hostile = damage(data)
    tracemalloc.start()
    try:
        with pytest.raises(mbp.checkpoint.CheckpointError, match=match) as error:
            load_bytes(tmp_path, hostile, printed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(error.value) is mbp.checkpoint.CheckpointError  # not a mismatch: damage
    assert peak < 8 * 2**20 + 4 * len(hostile), f"{what}: {peak} bytes allocated"
    assert mbp.checkpoint.path_in(tmp_path).read_bytes() == hostile  # left untouched
    assert load_bytes(tmp_path, data, printed).epoch == 1  # the undamaged file loads


def loads_identically(a, b) -> bool:
    def arrays(c):
        return jax.tree.leaves((c.params, c.opt_state, jax.random.key_data(c.key)))

    same = all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(b), strict=True))
    return a.epoch == b.epoch and a.history == b.history and same


def flip_every_byte(tmp_path, tiny_checkpoint, stride):
    data, printed = tiny_checkpoint
    original = load_bytes(tmp_path, data, printed)
    outcomes = {"refused": 0, "identical": 0}
    for i in range(0, len(data), stride):
        flipped = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        try:
            loaded = load_bytes(tmp_path, flipped, printed)
        except mbp.checkpoint.CheckpointError:
            outcomes["refused"] += 1
            continue
        assert loaded is not None and loads_identically(loaded, original), f"byte {i}"
        outcomes["identical"] += 1
    return outcomes


def test_every_seventh_byte_flip_is_refused_or_loads_identically(tmp_path, tiny_checkpoint):
    outcomes = flip_every_byte(tmp_path, tiny_checkpoint, stride=7)
    assert outcomes["refused"] > 0 and outcomes["identical"] > 0, outcomes


@pytest.mark.slow
def test_every_byte_flip_is_refused_or_loads_identically(tmp_path, tiny_checkpoint):
    outcomes = flip_every_byte(tmp_path, tiny_checkpoint, stride=1)
    assert sum(outcomes.values()) == len(tiny_checkpoint[0]), outcomes


def test_an_empty_checkpoint_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        mbp.checkpoint.CheckpointWriteError, match="expected a directory path, got ''"
    ):
        tiny_run("")
    assert list(tmp_path.iterdir()) == []


def a_fifo(path: Path) -> str:
    os.mkfifo(path)
    return "a FIFO"


def a_dangling_link(path: Path) -> str:
    path.symlink_to(path.parent / "nowhere.npz")
    return "a symbolic link"


def a_link_to_a_file(path: Path) -> str:
    (path.parent / "elsewhere.npz").write_bytes(b"")
    path.symlink_to(path.parent / "elsewhere.npz")
    return "a symbolic link"


def a_directory(path: Path) -> str:
    path.mkdir()
    return "a directory"


@pytest.mark.parametrize("make", [a_fifo, a_dangling_link, a_link_to_a_file, a_directory])
def test_a_checkpoint_path_that_is_not_a_regular_file_is_refused(tmp_path, make):
    path = mbp.checkpoint.path_in(tmp_path)
    kind = make(path)
    with pytest.raises(
        mbp.checkpoint.CheckpointWriteError, match=f"checkpoint.npz is {kind}, not a regular"
    ):
        tiny_run(tmp_path)
    assert os.path.lexists(path) and not path.is_file() or path.is_symlink()
    with pytest.raises(mbp.checkpoint.CheckpointError, match=f"is {kind}, not a regular file"):
        mbp.checkpoint.load(tmp_path, {}, TINY_PARAMS, TINY_SGD.init(TINY_PARAMS))
    assert mbp.checkpoint.completed_epochs(tmp_path) == 0  # what the command line announces


def test_completed_epochs_reads_only_the_metadata(tmp_path, tiny_checkpoint):
    data, _ = tiny_checkpoint
    mbp.checkpoint.path_in(tmp_path).write_bytes(data)
    assert mbp.checkpoint.completed_epochs(tmp_path) == 1
    for damage in (deflated_junk, lambda d: patched_zip(d, 6, 8, 0x0001), deeply_nested):
        mbp.checkpoint.path_in(tmp_path).write_bytes(damage(data))
        assert mbp.checkpoint.completed_epochs(tmp_path) == 0
    assert mbp.checkpoint.completed_epochs(tmp_path / "absent") == 0


def test_a_directory_made_read_only_mid_run_says_the_last_checkpoint_is_kept(tmp_path, monkeypatch):
    mkstemp = tempfile.mkstemp

    def read_only_after_epoch_1(*args, **kwargs):
        if mbp.checkpoint.path_in(tmp_path).exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only_after_epoch_1)
    with pytest.raises(
        mbp.checkpoint.CheckpointWriteError,
        match=r"checkpoint of epoch 2 .*Read-only file system.* still holds the previous "
        r"checkpoint \(epoch 1\): the last checkpoint is kept",
    ):
        tiny_run(tmp_path, epochs=3)
    monkeypatch.undo()
    assert tiny_run(tmp_path, epochs=1).history[0]["epoch"] == 1  # epoch 1 resumes, whole


# --- round 3: a resume takes what the caller changed into account ------------------------------

TINY_FAST_SGD = optax.sgd(10.0)


@pytest.mark.parametrize(
    "changed, match",
    [
        (dict(optimizer=TINY_FAST_SGD), r"the optimizer \(its updates on a fixed probe gradient"),
        (dict(optimizer=optax.sgd(0.1, momentum=0.9)), "belongs to a different run"),
        (
            dict(params=TINY.init(jax.random.key(9))),
            r"the starting params \(params\[0\]\.W, params\[1\]\.W differ: another init, seed "
            r"or params=\)",
        ),
        (
            dict(params=TINY.init(jax.random.key(1), scheme="glorot")),
            r"the starting params \(params\[0\]\.W, params\[1\]\.W differ",
        ),
    ],
    ids=["learning rate", "momentum (another state)", "seed", "init"],
)
def test_a_resume_with_other_settings_is_refused_unless_asked_to_continue(tmp_path, changed, match):
    tiny_run(tmp_path, epochs=1)
    kept = mbp.checkpoint.path_in(tmp_path).read_bytes()
    arguments = {**dict(optimizer=TINY_SGD, params=TINY_PARAMS), **changed}

    def call(epochs, **more):
        return mbp.train(
            TINY, arguments["params"], arguments["optimizer"], TINY_X, TINY_Y, epochs=epochs,
            batch_size=4, key=jax.random.key(2), progress=False, checkpoint_dir=tmp_path, **more,
        )  # fmt: skip

    with pytest.raises(mbp.checkpoint.CheckpointMismatchError, match=match):
        call(2)
    assert mbp.checkpoint.path_in(tmp_path).read_bytes() == kept
    if "momentum" in match or "different run" in match:
        return  # another optimizer state: continuing is impossible, and so refused
    went_on = call(2, resume="continue")
    assert [h["epoch"] for h in went_on.history] == [1, 2]
    # The new settings are recorded: the same call resumes, the old ones are refused now.
    assert len(call(3).history) == 3
    with pytest.raises(mbp.checkpoint.CheckpointMismatchError, match="other settings"):
        tiny_run(tmp_path, epochs=4)


def test_a_checkpoint_without_the_callers_settings_asks_to_continue(tmp_path, tiny_checkpoint):
    data, _ = tiny_checkpoint
    mbp.checkpoint.path_in(tmp_path).write_bytes(
        rewritten(data, lambda arrays, meta: meta["fingerprint"].pop("caller"))
    )
    with pytest.raises(mbp.checkpoint.CheckpointMismatchError, match="records no starting params"):
        tiny_run(tmp_path, epochs=2)
    assert len(tiny_run(tmp_path, epochs=2, resume="continue").history) == 2


def test_continuing_with_a_new_learning_rate_trains_on_from_the_checkpoint(tmp_path):
    tiny_run(tmp_path, epochs=1)
    went_on = mbp.train(
        TINY, TINY_PARAMS, TINY_FAST_SGD, TINY_X, TINY_Y, epochs=2, batch_size=4,
        key=jax.random.key(2), progress=False, checkpoint_dir=tmp_path, resume="continue",
    )  # fmt: skip
    first = tiny_run(None, epochs=1)
    by_hand = mbp.train(
        TINY, first.params, TINY_FAST_SGD, TINY_X, TINY_Y, epochs=1, batch_size=4,
        key=first.key, progress=False,
    )  # fmt: skip
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(went_on.params), jax.tree.leaves(by_hand.params), strict=True
        )
    )
    with pytest.raises(ValueError, match="resume: expected one of same, continue, got 'yes'"):
        tiny_run(tmp_path, epochs=2, resume="yes")


def test_the_optimizer_probe_sees_every_hyperparameter():
    probe = functools.partial(optimizer_probe, params=TINY_PARAMS)
    same = [(optax.adam(0.05), optax.adam(0.05)), (optax.sgd(0.1), optax.sgd(0.1))]
    assert all(probe(a) == probe(b) for a, b in same)
    differ = [
        (optax.adam(0.05), optax.adam(0.06)),
        (optax.adam(0.05), optax.adam(0.05, b1=0.8)),
        (optax.adam(0.05), optax.adam(0.05, b2=0.9)),
        (optax.sgd(0.1), optax.sgd(0.1, momentum=0.5)),
        (optax.adamw(0.05), optax.adamw(0.05, weight_decay=0.1)),
        (optax.sgd(0.1), optax.sgd(-0.1)),
    ]
    assert all(probe(a) != probe(b) for a, b in differ)


# --- round 3: an optimizer state that turns NaN ------------------------------------------------


def nan_after_two_steps() -> optax.GradientTransformation:
    """Leaves the parameters alone; its step counter turns NaN at the third step."""

    def init(params):
        return jnp.zeros((), jnp.float32)

    def update(grads, count, params=None):
        count = jnp.where(count >= 2, jnp.float32(jnp.nan), count + jnp.float32(1))
        return jax.tree.map(jnp.zeros_like, grads), count

    return optax.GradientTransformation(init, update)


def test_an_optimizer_state_that_turns_nan_is_not_checkpointed(tmp_path):
    optimizer = nan_after_two_steps()
    with pytest.raises(
        mbp.DivergenceError,
        match=r"epoch 2: the optimizer state holds NaN in opt_state while the parameters are "
        r"finite; nothing of epoch 2 is kept; the checkpoint of epoch 1 in .* is kept",
    ) as error:
        mbp.train(
            TINY, TINY_PARAMS, optimizer, TINY_X, TINY_Y, epochs=3, batch_size=4,
            key=jax.random.key(2), progress=False, checkpoint_dir=tmp_path,
        )  # fmt: skip
    assert error.value.epoch == 2 and [h["epoch"] for h in error.value.history] == [1]
    with np.load(mbp.checkpoint.path_in(tmp_path)) as stored:
        assert json.loads(stored["meta"].tobytes())["epoch"] == 1
        assert float(stored["opt_state/0"]) == 2.0  # the state after epoch 1, finite
    assert mbp.checkpoint.nan_leaves({"a": jnp.ones(2), "b": jnp.array([0.0, jnp.nan])}) == [
        "['b']"
    ]
    assert mbp.checkpoint.nan_leaves((jnp.arange(3), jnp.full(2, jnp.inf))) == []


# --- round 3: a run that cannot fit in memory --------------------------------------------------


def test_the_memory_estimate_counts_parameters_state_activations_and_data():
    net = mbp.MLP((784, 100, 10))
    P = (100 * 784 + 100 + 10 * 100 + 10) * 4  # every W^l and b^l in float32: 318,040 bytes
    shape = memory.RunShape(net.sizes, n=60_000, batch_size=200, n_test=10_000)
    needed = memory.estimate(shape, optax.adam(1e-3), jax.eval_shape(net.init, jax.random.key(0)))
    assert needed.parameters == 3 * P  # the caller's, the run's copy, the gradients
    assert needed.optimizer_state == 2 * (2 * P + 4)  # μ, ν and the int32 count, placed twice
    assert needed.activations == 200 * (3 * 110 + 784) * 4  # z, a, δ per layer, and the batch
    row = (784 + 10) * 4
    assert needed.data == 2 * 60_000 * row + 10_000 * (row + 2 * 110 * 4)
    assert needed.total == sum(needed)


def test_a_run_that_cannot_fit_is_refused_before_anything_is_allocated(monkeypatch):
    huge = mbp.MLP((2, 10**6, 10**6, 2))  # 4 TB of float32 weights: fits on no machine here
    shape = memory.RunShape(huge.sizes, n=1000, batch_size=32)
    needed = memory.estimate(shape, optax.sgd(0.1), jax.eval_shape(huge.init, jax.random.key(0)))
    match = r"needs about 10.9 TiB \(parameters 10.9 TiB, .*\), but .* is available \(.*\); use"
    with pytest.raises(memory.RunTooLargeError, match=match):
        memory.check_fits(needed)
    monkeypatch.setattr(memory, "available", lambda: (512, "a test's bound"))
    placed = []
    for name in ("place", "place_data"):
        real = getattr(loop, name)
        monkeypatch.setattr(
            loop, name, lambda *a, real=real, **k: placed.append(a) or real(*a, **k)
        )
    # The tiny run: parameters 3 · 68 B, activations 4 · (3 · 5 + 2) · 4 B, data 2 · 8 · 4 · 4 B.
    match = r"needs about 732 B \(parameters 204 B, optimizer state 0 B, activations 272 B, data "
    with pytest.raises(memory.RunTooLargeError, match=match + r"256 B\), but 512 B is available"):
        tiny_run(None)
    assert placed == []  # refused before the first array was placed
    monkeypatch.undo()
    assert tiny_run(None).history[0]["epoch"] == 1


def test_the_available_memory_follows_ulimit_v():
    code = (
        "import resource, jax; from manualbp.training import memory; jax.devices(); "
        "used = memory._used_virtual(); "
        "resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.RLIM_INFINITY)); "
        "free, why = memory.available(); print(free, why, sep='|')"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    free, why = out.stdout.strip().split("|")
    assert "ulimit -v" in why and 0 < int(free) <= 2**30
