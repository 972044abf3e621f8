"""Training: the jitted epoch, history, verified training, checkpoints and training faults.

Most tests share one small case (CASE below: same net, optimizer object,
batch size and data shapes), so the epoch compiles once for the whole file.
"""

import errno
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_grads_close, trees_equal

import manualbp as mbp
from manualbp import tolerance
from manualbp.training import DivergenceError, checkpoint, permutation, train
from manualbp.training.checkpoint import CheckpointError, CheckpointMismatchError
from manualbp.training.shuffle import _position_bits, _sort_rounds

NET = mbp.MLP((4, 8, 3), hidden="tanh", output="softmax", loss="cross_entropy")
OPTIMIZER = optax.adam(0.05)  # one object, so every test reuses the compiled epoch
N, BATCH = 70, 16  # 4 steps per epoch; 6 examples left out of each epoch


def make_data(seed=0, n=N):
    """Three classes from the signs of two features, drawn with NumPy (no JAX kernels)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    Y = ((X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0)).astype(np.int32)
    return X, Y


X, Y = make_data()
X_TEST, Y_TEST = make_data(seed=1, n=30)


def make_params(net=NET, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(
        mbp.Layer(
            jnp.asarray(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), jnp.float32),
            jnp.zeros((n_out,), jnp.float32),
        )
        for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:], strict=True)
    )


PARAMS = make_params()


def run(epochs=3, **overrides):
    """`train` on the shared case; keyword overrides change any argument."""
    arguments = dict(
        net=NET,
        params=PARAMS,
        optimizer=OPTIMIZER,
        X=X,
        Y=Y,
        epochs=epochs,
        batch_size=BATCH,
        key=jax.random.key(1),
        progress=False,
    )
    arguments.update(overrides)
    net, params, optimizer, X_, Y_ = (
        arguments.pop(name) for name in ("net", "params", "optimizer", "X", "Y")
    )
    return train(net, params, optimizer, X_, Y_, **arguments)


def results_equal(a, b) -> bool:
    return (
        trees_equal((a.params, a.opt_state), (b.params, b.opt_state))
        and a.history == b.history
        and np.array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
    )


# --- the epoch, history and determinism -----------------------------------------------


def test_same_seed_same_bits_and_another_seed_differs():
    a, b = run(), run()
    assert results_equal(a, b)
    c = run(key=jax.random.key(2))
    assert not trees_equal(a.params, c.params)  # the equality check can fail


@pytest.mark.parametrize("n", [1, 2, 3, 100, 10_000, 2**16 + 3])
def test_permutation_is_a_permutation_fixed_by_its_key(n):
    order = np.asarray(permutation(jax.random.key(n), n))
    assert order.dtype == np.int32
    assert np.array_equal(np.sort(order), np.arange(n))
    assert np.array_equal(order, np.asarray(permutation(jax.random.key(n), n)))
    if n >= 100:
        assert not np.array_equal(order, np.asarray(permutation(jax.random.key(n + 1), n)))


def chi_square_of_orders(orders: np.ndarray) -> float:
    """Pearson's statistic of the 24 orders of 4 elements against equal counts."""
    codes = orders @ np.array([64, 16, 4, 1])
    counts = np.array([np.sum(codes == c) for c in np.unique(codes)])
    expected = len(orders) / 24
    return float(np.sum((counts - expected) ** 2 / expected)) + 1e9 * (len(counts) != 24)


def test_permutation_is_uniform_and_the_statistic_sees_a_biased_shuffle():
    keys = jax.random.split(jax.random.key(0), 24_000)
    orders = np.asarray(jax.vmap(lambda k: permutation(k, 4))(keys))
    # 23 degrees of freedom: P(χ² > 62) ≈ 1e-5 for a uniform shuffle.
    assert chi_square_of_orders(orders) < 62
    # One sort by 2 random bits, ties left in index order, is the biased shuffle
    # the rounds exist to avoid; the same statistic rejects it.
    bits = np.asarray(jax.vmap(lambda k: jax.random.bits(k, (4,), jnp.uint32))(keys)) >> 30
    assert chi_square_of_orders(np.argsort(bits, axis=1, kind="stable")) > 1000


def test_permutation_rounds_bound_the_chance_of_a_tie_in_every_round():
    for n in [2, 3, 100, 10_000, 60_000, 2**20 + 1, 2**24]:
        rounds = _sort_rounds(n)
        random_bits = 32 - _position_bits(n)
        assert (n - 1) < 2 ** _position_bits(n)  # positions fit their bits
        assert 2 ** (rounds * random_bits) >= n**3  # P(a tie in every round) <= 1/(2n)
    assert _sort_rounds(2**24 + 1) is None  # too few random bits: jax.random.permutation


@pytest.mark.parametrize("n", [100, 10_000, 60_000])
def test_permutation_sorts_as_many_rounds_as_the_bound_asks(n):
    jaxpr = jax.make_jaxpr(lambda key: permutation(key, n))(jax.random.key(0))
    sorts = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "sort"]
    assert len(sorts) == _sort_rounds(n) > 0
    assert all(len(e.invars) == 1 for e in sorts)  # one uint32 array each, no key-value sort


def test_history_has_one_json_entry_per_epoch():
    result = run(epochs=4, eval_data=(X_TEST, Y_TEST), check_every=2)
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert json.loads(json.dumps(history)) == history
    for h in history:
        assert set(h) >= {"loss", "test_loss", "test_accuracy"}
        assert 0.0 <= h["test_accuracy"] <= 1.0
        assert ("grad_check" in h) == (h["epoch"] % 2 == 0)
    assert history[-1]["loss"] < history[0]["loss"]
    check = history[1]["grad_check"]
    assert check["passed"] and check["max_rel_error"] <= check["rtol"]
    assert check["rtol"] == tolerance.net_rtol(jnp.float32, NET.sizes, BATCH)
    # The test metrics are those of the returned params.
    assert np.isclose(history[-1]["test_loss"], float(mbp.loss(NET, result.params, X_TEST, Y_TEST)))
    y_hat = mbp.forward(NET, result.params, X_TEST)
    accuracy = np.mean(np.argmax(np.asarray(y_hat), axis=1) == Y_TEST)
    assert np.isclose(history[-1]["test_accuracy"], accuracy)


def compilations(caplog, call) -> list[str]:
    """The names of the XLA compilations that ``call()`` triggers."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        call()
    return [
        r.getMessage().split()[4]
        for r in caplog.records
        if "Finished XLA compilation" in r.getMessage()
    ]


def test_second_call_compiles_nothing_and_the_remainder_is_dropped(caplog):
    options = dict(eval_data=(X_TEST, Y_TEST), check_every=1, epochs=2)
    run(**options)
    assert compilations(caplog, lambda: run(**options)) == []
    # The counter does see a compilation: a new batch size is a new epoch program.
    result = {}
    compiled = compilations(caplog, lambda: result.update(r=run(batch_size=32, epochs=3)))
    assert compiled.count("jit(epoch)") == 1
    # Remainder rule: ⌊70 / 32⌋ = 2 full steps per epoch, the 6 others are left out.
    adam_state = result["r"].opt_state[0]
    assert int(adam_state.count) == 3 * (N // 32)


def test_callers_arrays_are_not_donated():
    run(epochs=1)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(PARAMS))
    assert mbp.loss(NET, PARAMS, X, Y).shape == ()


def test_manual_and_autodiff_side_by_side():
    manual, auto = run(), run(grad="autodiff")
    errors = tolerance.tree_errors(manual.params, auto.params)
    rtol = tolerance.net_rtol(jnp.float32, NET.sizes, BATCH)
    assert all(rel <= rtol for _, _, rel in errors), errors
    for m, a in zip(manual.history, auto.history, strict=True):
        assert np.isclose(m["loss"], a["loss"], rtol=rtol)


def test_manual_training_never_starts_autodiff(autodiff_forbidden):
    optimizer = optax.sgd(0.1)  # a new static argument: the epoch is traced anew here
    run(optimizer=optimizer, epochs=1)
    with pytest.raises(autodiff_forbidden):  # and the guard works
        run(optimizer=optimizer, epochs=1, grad="autodiff")


def test_grad_check_catches_a_wrong_derivative():
    wrong = mbp.Activation("tanh_wrong", jnp.tanh, lambda z: 1 - jnp.tanh(z))  # not squared
    net = mbp.MLP((4, 8, 3), hidden=wrong, output="softmax", loss="cross_entropy")
    result = run(net=net, epochs=1, check_every=1)
    check = result.history[0]["grad_check"]
    assert not check["passed"] and check["max_rel_error"] > check["rtol"]


def test_progress_prints_one_line_per_epoch(capsys):
    run(epochs=3, progress=True, eval_data=(X_TEST, Y_TEST))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert (
        lines[0].split()[:3] == ["manual", "epoch", "1/3"]
        and "loss" in lines[0]
        and "test_accuracy" in lines[0]
    )
    run(epochs=3, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_bfloat16_compute_keeps_float32_parameters():
    full = run(epochs=2)
    mixed = run(epochs=2, compute_dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(mixed.params))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(mixed.opt_state[0].mu))
    assert not trees_equal(full.params, mixed.params)  # the forward really ran in bfloat16
    bf16_rtol = tolerance.net_rtol(jnp.bfloat16, NET.sizes, BATCH)
    for f, m in zip(full.history, mixed.history, strict=True):
        assert np.isclose(m["loss"], f["loss"], rtol=bf16_rtol)


# --- bad inputs --------------------------------------------------------------------------


def with_value(array, row, value):
    array = np.array(array, dtype=np.float32)
    array[row] = value
    return array


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(X=with_value(X, 5, np.nan)), ValueError, "X: expected finite"),
        (dict(Y=with_value(np.eye(3)[Y], 2, np.inf)), ValueError, "Y: expected finite"),
        (dict(eval_data=(with_value(X_TEST, 0, np.inf), Y_TEST)), ValueError, "eval_data: X"),
        (dict(eval_data=(X_TEST, Y_TEST[:5])), ValueError, "eval_data: Y"),
        (dict(eval_data=X_TEST), TypeError, "eval_data"),
        (dict(Y=Y[:10]), ValueError, "Y: expected 70 rows"),
        (dict(grad="numeric"), ValueError, "grad: expected one of manual, autodiff"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=N + 1), ValueError, "batch_size: expected at most the 70"),
        (dict(epochs=-1), ValueError, "epochs"),
        (dict(epochs=2.0), ValueError, "epochs"),
        (dict(check_every=0), ValueError, "check_every"),
        (dict(compute_dtype=jnp.int32), TypeError, "compute_dtype"),
        (dict(mesh="cpu"), TypeError, "mesh"),
        (dict(mesh=jax.make_mesh((1,), ("batch",))), ValueError, "mesh: expected Auto"),
    ],
)
def test_bad_arguments_are_rejected(overrides, error, match):
    with pytest.raises(error, match=match):
        run(**overrides)


def test_divergence_stops_naming_the_epoch_and_keeps_the_last_checkpoint(tmp_path):
    # Regression with MSE: epoch 1 trains, then a huge step makes the error grow
    # geometrically until the loss overflows.
    net = mbp.MLP((4, 8, 3), hidden="tanh")
    one_hot = np.eye(3, dtype=np.float32)
    schedule = optax.piecewise_constant_schedule(0.01, {N // BATCH: 1e12})
    with pytest.raises(DivergenceError, match="in epoch 2: loss (nan|inf) at step") as caught:
        run(
            net=net,
            Y=one_hot[Y],
            optimizer=optax.sgd(schedule),
            epochs=4,
            checkpoint_dir=tmp_path,
            eval_data=(X_TEST, one_hot[Y_TEST]),
        )
    assert isinstance(caught.value, FloatingPointError)
    assert caught.value.epoch == 2 and len(caught.value.history) == 1
    assert "test_loss" in caught.value.history[0]  # a regression: no accuracy
    assert "test_accuracy" not in caught.value.history[0]
    assert "checkpoint of epoch 1" in str(caught.value)
    with np.load(checkpoint.path_in(tmp_path)) as stored:
        assert json.loads(stored["meta"].tobytes())["epoch"] == 1


# --- checkpoints -------------------------------------------------------------------------


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    options = dict(eval_data=(X_TEST, Y_TEST), check_every=2)
    uninterrupted = run(epochs=4, **options)
    first = run(epochs=2, checkpoint_dir=tmp_path, **options)
    assert len(first.history) == 2
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    resumed = run(epochs=4, checkpoint_dir=tmp_path, **options)
    assert results_equal(resumed, uninterrupted)
    again = run(epochs=4, checkpoint_dir=tmp_path, **options)  # complete: nothing to do
    assert results_equal(again, uninterrupted)
    with pytest.raises(ValueError, match="already completed 4 epochs"):
        run(epochs=3, checkpoint_dir=tmp_path, **options)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> bytes:
    """The bytes of the shared case's checkpoint after one epoch."""
    directory = tmp_path_factory.mktemp("saved")
    run(epochs=1, checkpoint_dir=directory)
    return checkpoint.path_in(directory).read_bytes()


def other_net_params():
    net = mbp.MLP((4, 9, 3), hidden="tanh", output="softmax", loss="cross_entropy")
    return net, make_params(net)


@pytest.mark.parametrize(
    "overrides, differs",
    [
        (dict(zip(("net", "params"), other_net_params(), strict=True)), "net, params, opt_state"),
        (dict(optimizer=optax.sgd(0.1)), "opt_state"),
        (dict(batch_size=8), "run"),
        (dict(grad="autodiff"), "run"),
        (dict(key=jax.random.key(7)), "run"),
    ],
)
def test_checkpoint_of_another_run_is_refused_and_kept(
    tmp_path, saved_checkpoint, overrides, differs
):
    path = checkpoint.path_in(tmp_path)
    path.write_bytes(saved_checkpoint)
    run(epochs=2, checkpoint_dir=tmp_path)  # the same run resumes
    resumed = path.read_bytes()
    with pytest.raises(CheckpointMismatchError, match=f"different run \\({differs} differ"):
        run(epochs=3, checkpoint_dir=tmp_path, **overrides)
    assert path.read_bytes() == resumed


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_a_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def reshape_an_array(data: bytes) -> bytes:
    """A well-formed file whose first weight matrix no longer has its recorded shape."""
    with np.load(io.BytesIO(data)) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["params/0"] = arrays["params/0"].T
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


@pytest.mark.parametrize(
    "damage", [truncate, flip_a_byte, reshape_an_array, lambda data: b"not a checkpoint"]
)
def test_corrupted_checkpoint_is_refused_and_kept(tmp_path, saved_checkpoint, damage):
    path = checkpoint.path_in(tmp_path)
    path.write_bytes(damage(saved_checkpoint))
    damaged = path.read_bytes()
    with pytest.raises(CheckpointError, match="corrupted"):
        run(epochs=2, checkpoint_dir=tmp_path)
    assert path.read_bytes() == damaged
    path.write_bytes(saved_checkpoint)  # the undamaged file resumes
    assert len(run(epochs=2, checkpoint_dir=tmp_path).history) == 2


# --- a run killed with SIGKILL ----------------------------------------------------------

KILLED_EPOCHS = 6


def child_main(checkpoint_dir: str) -> None:
    """The run that the next test kills: the shared case, slowed down after each epoch."""
    run(epochs=KILLED_EPOCHS, checkpoint_dir=checkpoint_dir, callback=lambda _: time.sleep(0.4))


def _start_child(tmp_path):
    """A second process running `child_main` on ``tmp_path``, and the checkpoint it writes."""
    tests = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]))
    child = subprocess.Popen(
        [sys.executable, "-c", f"import test_train; test_train.child_main({str(tmp_path)!r})"],
        cwd=tests,
        env=env,
        stderr=subprocess.PIPE,
    )
    return child, checkpoint.path_in(tmp_path)


def test_sigkill_mid_training_resumes_bit_identical(tmp_path):
    child, path = _start_child(tmp_path)
    deadline = time.monotonic() + 120
    while not path.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    _, stderr = child.communicate()
    assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    with np.load(path) as stored:
        epoch = json.loads(stored["meta"].tobytes())["epoch"]
    assert 1 <= epoch < KILLED_EPOCHS
    resumed = run(epochs=KILLED_EPOCHS, checkpoint_dir=tmp_path)
    assert [h["epoch"] for h in resumed.history] == list(range(1, KILLED_EPOCHS + 1))
    assert results_equal(resumed, run(epochs=KILLED_EPOCHS))


def test_shuffle_false_steps_through_the_examples_in_their_order():
    """A reference's trajectory, reproduced step for step: plain SGD over the rows in order."""
    sgd = optax.sgd(0.1)
    batch = 10
    result = mbp.train(
        NET,
        PARAMS,
        sgd,
        X,
        Y,
        epochs=2,
        batch_size=batch,
        key=jax.random.key(0),
        shuffle=False,
        progress=False,
    )
    params = PARAMS
    for _ in range(2):
        for start in range(0, (X.shape[0] // batch) * batch, batch):
            _, grads = mbp.manual_value_and_grad(
                NET, params, X[start : start + batch], Y[start : start + batch]
            )
            params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert_grads_close(result.params, params, NET.sizes, batch, jnp.float32)
    shuffled = mbp.train(
        NET,
        PARAMS,
        sgd,
        X,
        Y,
        epochs=2,
        batch_size=batch,
        key=jax.random.key(0),
        progress=False,
    )
    assert not trees_equal(shuffled.params, result.params)


# --- checkpoints, round 2: other data or code, strict JSON, bad directories, two writers ----


def rewrite_meta(data: bytes, change) -> bytes:
    """The checkpoint ``data`` with ``change(meta)`` applied to its JSON metadata."""
    with np.load(io.BytesIO(data)) as stored:
        arrays = {name: stored[name] for name in stored.files}
    meta = json.loads(arrays["meta"].tobytes())
    change(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def shifted(X_):
    X_ = X_.copy()
    X_[7, 2] += 1.0  # one entry of one example
    return X_


MY_TANH = mbp.Activation("tanh", jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2)


@pytest.mark.parametrize(
    "overrides, where",
    [
        (dict(X=shifted(X)), r"data differ.*data\.X\.sha1"),
        (dict(Y=(Y + 1) % 3), r"data differ.*data\.Y\.sha1"),
        (dict(eval_data=(X, Y)), r"data differ.*data\.X_test"),
        (
            dict(net=mbp.MLP((4, 8, 3), MY_TANH, "softmax", "cross_entropy")),
            r"code differ.*code\.activations\.layer l=2 \(tanh\)\.deriv",
        ),
    ],
    ids=["one X entry", "Y", "test set", "σ' of the same name"],
)
def test_resume_on_other_data_or_code_is_refused_and_kept(
    tmp_path, saved_checkpoint, overrides, where
):
    path = checkpoint.path_in(tmp_path)
    path.write_bytes(saved_checkpoint)
    kept = saved_checkpoint
    base = dict(eval_data=(X_TEST, Y_TEST)) if "eval_data" in overrides else {}
    if base:  # a checkpoint of the run with its own test set
        path.unlink()
        run(epochs=1, checkpoint_dir=tmp_path, **base)
        kept = path.read_bytes()
    with pytest.raises(CheckpointMismatchError, match=where):
        run(epochs=2, checkpoint_dir=tmp_path, **overrides)
    assert path.read_bytes() == kept


def test_a_history_holding_inf_is_written_as_strict_json_and_read_back(tmp_path):
    history = [{"epoch": 1, "loss": 0.5, "test_loss": float("inf")}]
    params = make_params()
    state = checkpoint.Checkpoint(1, params, OPTIMIZER.init(params), jax.random.key(0), history)
    printed = checkpoint.fingerprint(NET, params, state.opt_state, {})
    checkpoint.save(tmp_path, state, printed)
    with np.load(checkpoint.path_in(tmp_path)) as stored:
        text = stored["meta"].tobytes().decode()

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    assert json.loads(text, parse_constant=refuse)["history"][0]["test_loss"] == "inf"
    loaded = checkpoint.load(tmp_path, printed, params, state.opt_state)
    assert loaded.history == history


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda meta: meta.update(epoch=1.5), r"the epoch 1.5 is not a whole number"),
        (lambda meta: meta.update(epoch=-1), r"the epoch -1 is not a whole number"),
        (lambda meta: meta.update(epoch="1"), r"the epoch '1' is not a whole number"),
        (lambda meta: meta.update(epoch=True), r"the epoch True is not a whole number"),
        (lambda meta: meta.update(epoch=2), r"do not count 1, 2, \.\.\. up to the epoch 2"),
        (lambda meta: meta.update(history={"epoch": 1}), "the history is not a list of records"),
        (lambda meta: meta["history"][0].update(epoch=0), r"epochs \[0\] do not count"),
        (lambda meta: meta.update(key_impl=3), "the key implementation 3 is not a name"),
    ],
    ids=["fraction", "negative", "string", "bool", "too few records", "dict", "backwards", "key"],
)
def test_hand_made_metadata_is_refused_and_kept(tmp_path, saved_checkpoint, change, match):
    path = checkpoint.path_in(tmp_path)
    path.write_bytes(rewrite_meta(saved_checkpoint, change))
    made = path.read_bytes()
    with pytest.raises(CheckpointError, match=f"corrupted or not a manualbp checkpoint .*{match}"):
        run(epochs=3, checkpoint_dir=tmp_path)
    assert path.read_bytes() == made


def a_file(path: Path) -> Path:
    path.write_text("")
    return path


def below_a_file(path: Path) -> Path:
    return a_file(path) / "below"


def read_only(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o555)
    return path


@pytest.mark.parametrize(
    "make, match",
    [
        (a_file, "is a file, not a directory"),
        (below_a_file, r"lies below the file"),
        (read_only, r"cannot be written \(Permission denied\)"),
    ],
    ids=["a file", "below a file", "read-only"],
)
def test_a_checkpoint_dir_that_cannot_be_written_is_refused_before_any_epoch(tmp_path, make, match):
    if make is read_only and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the next test simulates it")
    directory = make(tmp_path / "ckpt")
    epochs_run = []
    with pytest.raises(checkpoint.CheckpointWriteError, match=f"checkpoint_dir: .*{match}"):
        run(epochs=1, checkpoint_dir=directory, callback=epochs_run.append)
    assert epochs_run == []


def test_an_unwritable_checkpoint_dir_is_refused_before_any_epoch(tmp_path, monkeypatch):
    """Read-only, simulated: creating a file there fails with EACCES (root ignores modes)."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", refuse)
    epochs_run = []
    with pytest.raises(checkpoint.CheckpointWriteError, match=r"cannot be written \(Permission"):
        run(epochs=1, checkpoint_dir=tmp_path, callback=epochs_run.append)
    assert epochs_run == []


def test_a_full_disk_keeps_the_last_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    real_savez = np.savez
    saves = []

    def savez_until_full(f, **arrays):
        saves.append(1)
        if len(saves) < 2:
            return real_savez(f, **arrays)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.np, "savez", savez_until_full)
    with pytest.raises(
        checkpoint.CheckpointWriteError,
        match=r"checkpoint of epoch 2 .*No space left on device.*partial file is removed and "
        r".*still holds the previous checkpoint \(epoch 1\)",
    ):
        run(epochs=3, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint.lock", "checkpoint.npz"]
    assert len(run(epochs=1, checkpoint_dir=tmp_path).history) == 1  # epoch 1 is intact


def test_a_second_run_on_a_locked_checkpoint_dir_fails_fast_in_process(tmp_path):
    other = tmp_path / "other"
    refused = []

    def start_a_second_run(record):
        if record["epoch"] == 1:
            with pytest.raises(checkpoint.CheckpointLockedError, match=str(tmp_path)) as caught:
                run(epochs=5, batch_size=8, checkpoint_dir=tmp_path)
            refused.append(caught.value)
            run(epochs=1, checkpoint_dir=other)  # another directory is free

    first = run(epochs=2, checkpoint_dir=tmp_path, callback=start_a_second_run)
    assert refused and "in use by another training run" in str(refused[0])
    resumed = run(epochs=2, checkpoint_dir=tmp_path)  # released: the same run resumes
    assert results_equal(resumed, first)


def test_a_second_process_on_a_locked_checkpoint_dir_fails_fast(tmp_path):
    child, path = _start_child(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not path.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.poll() is None, "the first run ended before the second started"
        started = time.monotonic()
        with pytest.raises(checkpoint.CheckpointLockedError, match=str(tmp_path)):
            run(epochs=3, batch_size=8, checkpoint_dir=tmp_path)  # another configuration
        assert time.monotonic() - started < 5  # before any epoch's work
    finally:
        child.send_signal(signal.SIGKILL)  # the lock goes with the process
        child.communicate()
    resumed = run(epochs=KILLED_EPOCHS, checkpoint_dir=tmp_path)  # the first run's, kept
    assert results_equal(resumed, run(epochs=KILLED_EPOCHS))


def test_a_rerun_says_that_it_resumes_or_has_nothing_to_train(tmp_path, capsys):
    run(epochs=1, progress=False, checkpoint_dir=tmp_path)
    run(epochs=1, progress=True, checkpoint_dir=tmp_path)
    assert "already holds all 1 epochs: nothing to train" in capsys.readouterr().err
    run(epochs=2, progress=True, checkpoint_dir=tmp_path)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"resuming from the checkpoint in {tmp_path} after epoch 1 of 2"
    assert err[1].split()[:3] == ["manual", "epoch", "2/2"]
