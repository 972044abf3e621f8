"""DP-SGD: the settings, Poisson sampling, the masked chunks, the noise, the accounting,
what a private run releases, 16-bit clipping, and the one-run audit."""

import io
import math
import sys
from contextlib import redirect_stderr

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import X_TEST, Y_TEST, X, Y, results_equal, run

import manualbp as mbp
from manualbp.backprop import backward_with_deltas
from manualbp.extensions import per_example
from manualbp.network import forward_pass_batch
from manualbp.training import dpsgd, poisson

DP = mbp.DPSGD(l2_clip=1.0, noise_multiplier=1.1)
N, BATCH = X.shape[0], 16  # test_train's case


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(l2_clip=0.0, noise_multiplier=1.0), ValueError, "l2_clip"),
        (dict(l2_clip=1.0, noise_multiplier=0.0), ValueError, "noise_multiplier"),
        (dict(l2_clip=1.0, noise_multiplier=math.nan), ValueError, "noise_multiplier"),
        (dict(l2_clip=1.0, noise_multiplier="1"), TypeError, "noise_multiplier"),
        (dict(l2_clip=1.0, noise_multiplier=1.0, delta=1.0), ValueError, "delta"),
        (dict(l2_clip=1.0, noise_multiplier=1.0, physical_size=0), ValueError, "physical_size"),
        (dict(l2_clip=1.0, noise_multiplier=1.0, accountant="moments"), ValueError, "accountant"),
    ],
)
def test_bad_settings_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        mbp.DPSGD(**kwargs)


def test_settings_are_frozen_and_hashable():
    assert hash(DP) == hash(mbp.DPSGD(l2_clip=1, noise_multiplier=1.1))
    with pytest.raises(AttributeError):
        DP.l2_clip = 2.0


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(grad="autodiff"), ValueError, "grad='manual'"),
        (dict(shuffle=False), ValueError, "shuffle=False"),
        (dict(privacy=(1.0, 1.1)), TypeError, "mbp.DPSGD"),
        (dict(check_every=1), ValueError, "held-out"),
    ],
)
def test_unsupported_combinations_are_rejected(overrides, error, match, tmp_path):
    with pytest.raises(error, match=match) as raised:
        run(epochs=1, checkpoint_dir=tmp_path / "run", **{"privacy": DP, **overrides})
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_missing_accounting_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)
    with pytest.raises(ImportError, match=r"manualbp\[privacy\]"):
        run(epochs=1, privacy=DP)


# --- Poisson sampling -------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, math.nan])
def test_a_rate_outside_0_1_is_one_clear_line(rate):
    with pytest.raises(ValueError, match=r"rate: expected a sampling rate q in \(0, 1\]"):
        mbp.privacy.poisson_batches(jax.random.key(0), 10, rate, 4)


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_a_physical_size_below_1_is_one_clear_line(size):
    with pytest.raises(ValueError, match="physical_size: expected an integer ≥ 1"):
        mbp.privacy.poisson_batches(jax.random.key(0), 10, 0.5, size)


def test_poisson_batches_cover_the_whole_sample_in_masked_chunks():
    """Rate 0.5 of 40 with P = 3: ⌈count / 3⌉ chunks, every sampled index once, no truncation."""
    indices, mask = mbp.privacy.poisson_batches(jax.random.key(3), 40, 0.5, 3)
    count = int(mask.sum())
    assert indices.shape == mask.shape == (-(-count // 3), 3)
    assert count > 3  # several chunks
    sampled = indices[mask]
    assert np.all(np.diff(sampled) > 0) and sampled.min() >= 0 and sampled.max() < 40
    assert mask.ravel()[:count].all() and not mask.ravel()[count:].any()


def test_inclusion_is_independent_with_the_rate():
    """Over 400 keys, each of 50 examples is included 400 q times on average, and the
    sample sizes have the binomial mean n q and variance n q (1 − q)."""
    q, n, draws = 0.3, 50, 400
    keys = jax.random.split(jax.random.key(0), draws)
    included = np.asarray(jax.vmap(lambda k: poisson.inclusion(k, n, q))(keys))
    sizes = included.sum(axis=1)
    assert abs(sizes.mean() - n * q) < 4 * math.sqrt(n * q * (1 - q) / draws)
    assert 0.7 < sizes.var() / (n * q * (1 - q)) < 1.3
    per_example_rate = included.mean(axis=0)
    assert np.all(np.abs(per_example_rate - q) < 5 * math.sqrt(q * (1 - q) / draws))
    # Independence: the correlation between two examples' inclusions is near 0.
    assert abs(np.corrcoef(included[:, 0], included[:, 1])[0, 1]) < 0.2


def test_the_drawn_rate_is_q_rounded_up_to_2_to_the_minus_32():
    assert poisson.drawn_rate(0.5) == 0.5 and poisson.drawn_rate(1.0) == 1.0
    q = 16 / 70
    assert q <= poisson.drawn_rate(q) < q + 2**-32


def test_masked_padding_contributes_exactly_zero():
    """Padding rows (mask False) change nothing, bit for bit, whatever they hold."""
    net, params = _net_and_params()
    rng = np.random.default_rng(0)
    X_real, Y_real = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
    mask = jnp.asarray([True] * 5 + [False] * 3)
    sums = []
    for garbage in (0.0, 1e3):
        X_pad = jnp.asarray(np.vstack([X_real, np.full((3, 4), garbage)]), jnp.float32)
        Y_pad = mbp.network.as_targets(net, jnp.asarray(np.r_[Y_real, [0, 1, 2]]), jnp.float32)
        sums.append(dpsgd.clipped_sum(net, params, X_pad, Y_pad, mask, _CLIP))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(sums[0]), jax.tree.leaves(sums[1]), strict=True)
    )
    X5 = jnp.asarray(X_real, jnp.float32)
    Y5 = mbp.network.as_targets(net, jnp.asarray(Y_real), jnp.float32)
    alone = dpsgd.clipped_sum(net, params, X5, Y5, jnp.ones(5, bool), _CLIP)
    for a, b in zip(jax.tree.leaves(sums[0]), jax.tree.leaves(alone), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_sample_larger_than_p_is_summed_over_extra_chunks():
    """P = 3 for a sample of about 35: the chunked sum equals the clipped sum of the whole
    sample at once (per_example's mean times the count)."""
    net, params = _net_and_params()
    Xj, Yj = jnp.asarray(X), mbp.network.as_targets(net, jnp.asarray(Y), jnp.float32)
    sample = poisson.sample(jax.random.key(5), N, 0.5)
    count = int(sample.count)
    inputs = dpsgd.StepInputs(net, Xj, Yj, sample, 3, _CLIP)
    chunked = dpsgd.sample_sum(inputs, params, jnp.float32)
    indices, mask = mbp.privacy.poisson_batches(jax.random.key(5), N, 0.5, 3)
    rows = indices[mask]
    assert rows.size == count and count > 3 * 3  # several chunks
    _, mean = per_example.clipped_mean_grad(net, params, Xj[rows], Yj[rows], 1.0)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(mean), strict=True):
        np.testing.assert_allclose(a, count * b, rtol=2e-5, atol=1e-6)


# --- the noise ------------------------------------------------------------------------------


def test_noise_has_the_stated_deviation_and_comes_from_the_key():
    grads = (mbp.Layer(jnp.zeros((300, 100)), jnp.zeros((300,))),)
    noisy = dpsgd.add_noise(grads, jax.random.key(0), 1.5 * 2.0)
    std = float(np.std(np.concatenate([np.ravel(x) for x in jax.tree.leaves(noisy)])))
    assert abs(std - 3.0) < 0.05  # σ C on the sum, ~30 000 draws
    again = dpsgd.add_noise(grads, jax.random.key(0), 3.0)
    assert all(
        jnp.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(noisy), jax.tree.leaves(again), strict=True)
    )


def test_the_sum_is_divided_by_the_expected_size():
    """With a loose clip and tiny noise, one SGD step moves params by lr Σ_S g_b / B̄ for the
    drawn sample S: the expected size B̄, not |S|, divides."""
    net, params = _net_and_params()
    loose = mbp.DPSGD(l2_clip=1e4, noise_multiplier=1e-9)
    Xj, Yj = jnp.asarray(X), mbp.network.as_targets(net, jnp.asarray(Y), jnp.float32)
    key = jax.random.key(9)
    new, *_ = mbp.training.programs.private_epoch(
        jax.tree.map(jnp.array, params), optax.sgd(1.0).init(params), key, Xj[:32], Yj[:32],
        net=net, optimizer=optax.sgd(1.0), batch_size=32, compute_dtype=jnp.dtype("float32"),
        batch_sharding=None, privacy=loose,
    )  # fmt: skip
    # batch_size = n: q = 1, one step, everyone sampled; B̄ = 32 = |S|.
    _, mean = mbp.manual_value_and_grad(net, params, Xj[:32], Yj[:32])
    for p, g, p0 in zip(
        jax.tree.leaves(new), jax.tree.leaves(mean), jax.tree.leaves(params), strict=True
    ):
        np.testing.assert_allclose(p0 - p, g, rtol=1e-4, atol=1e-6)


# --- runs -------------------------------------------------------------------------------------


def test_a_private_run_releases_only_accounted_numbers(autodiff_forbidden):
    """No training loss in the history or the printed lines: ε, δ, steps, adjacency, and
    numbers of the held-out data."""
    printed = io.StringIO()
    with redirect_stderr(printed):
        result = run(epochs=2, privacy=DP, eval_data=(X_TEST, Y_TEST), progress=True)
    for record in result.history:
        assert set(record) == {
            "epoch", "epsilon", "delta", "steps", "accountant", "adjacency",
            "test_loss", "test_accuracy",
        }  # fmt: skip
        assert record["adjacency"] == "add-or-remove-one"
    lines = printed.getvalue().splitlines()
    assert len(lines) == 2 and all("add-or-remove-one" in line for line in lines)
    assert not any(" loss " in f" {line} ".replace("test_loss", "") for line in lines)


def test_epsilon_in_the_history_equals_a_fresh_accountant():
    import dp_accounting as dp

    result = run(epochs=3, privacy=DP)
    steps_per_epoch = N // BATCH
    for record in result.history:
        fresh = dp.pld.PLDAccountant(dp.NeighboringRelation.ADD_OR_REMOVE_ONE)
        event = dp.PoissonSampledDpEvent(BATCH / N, dp.GaussianDpEvent(DP.noise_multiplier))
        fresh.compose(event, record["epoch"] * steps_per_epoch)
        assert record["steps"] == record["epoch"] * steps_per_epoch
        assert record["epsilon"] == pytest.approx(fresh.get_epsilon(DP.delta), rel=1e-6)
    eps = [h["epsilon"] for h in result.history]
    assert eps[0] < eps[1] < eps[2]


def test_rdp_on_request_equals_a_fresh_rdp_accountant():
    import dp_accounting as dp

    settings = mbp.DPSGD(l2_clip=1.0, noise_multiplier=0.9, delta=1e-6, accountant="rdp")
    fresh = dp.rdp.RdpAccountant()
    fresh.compose(dp.PoissonSampledDpEvent(32 / 1000, dp.GaussianDpEvent(0.9)), 37)
    eps = mbp.privacy.epsilon(settings, steps=37, n=1000, batch_size=32)
    assert eps == pytest.approx(fresh.get_epsilon(1e-6), rel=1e-6)
    assert eps > mbp.privacy.epsilon(
        mbp.DPSGD(1.0, 0.9, delta=1e-6), steps=37, n=1000, batch_size=32
    )  # PLD is tighter


def test_check_every_runs_on_the_held_out_batch():
    result = run(epochs=1, privacy=DP, eval_data=(X_TEST, Y_TEST), check_every=1)
    assert result.history[0]["grad_check"]["passed"]


def test_private_training_differs_by_key_and_resumes_bit_identically(tmp_path):
    options = dict(privacy=DP, eval_data=(X_TEST, Y_TEST))
    uninterrupted = run(epochs=3, **options)
    other_key = run(epochs=3, key=jax.random.key(7), **options)
    assert not np.allclose(uninterrupted.params[0].W, other_key.params[0].W)
    run(epochs=2, checkpoint_dir=tmp_path, **options)
    assert results_equal(run(epochs=3, checkpoint_dir=tmp_path, **options), uninterrupted)


def test_a_plain_checkpoint_is_not_resumed_as_private(tmp_path):
    run(epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(mbp.checkpoint.CheckpointMismatchError):
        run(epochs=2, checkpoint_dir=tmp_path, privacy=DP)


# --- calibration ----------------------------------------------------------------------------


def test_calibrated_sigma_reaches_the_target_and_no_less_does():
    setting = dict(delta=1e-5, n=60_000, batch_size=256, epochs=10)
    sigma = mbp.privacy.calibrate(2.0, **setting)
    at = mbp.DPSGD(1.0, sigma, delta=1e-5)
    below = mbp.DPSGD(1.0, sigma * 0.99, delta=1e-5)
    steps = 10 * (60_000 // 256)
    assert mbp.privacy.epsilon(at, steps=steps, n=60_000, batch_size=256) <= 2.0 + 1e-6
    assert mbp.privacy.epsilon(below, steps=steps, n=60_000, batch_size=256) > 2.0


@pytest.mark.parametrize(
    "target, match",
    [(1e-7, "no noise multiplier"), (0.0, "finite ε > 0"), (math.inf, "finite ε > 0")],
)
def test_an_unreachable_target_is_one_clear_line(target, match):
    with pytest.raises(ValueError, match=match) as raised:
        mbp.privacy.calibrate(target, delta=1e-5, n=100, batch_size=50, epochs=100)
    assert "\n" not in str(raised.value)


# --- 16-bit clipping --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_clipped_contributions_stay_within_c_in_16_bit(dtype):
    """Each row c_b δ^l_b as summed (rounded to the dtype), with its a^{l-1}_b, has a norm
    over all layers ≤ C, measured in float64; the same rows clipped from 16-bit norms
    without the margin exceed C, so the check can fail."""
    net = mbp.MLP((20, 64, 10), hidden="tanh", output="softmax", loss="cross_entropy")
    params = jax.tree.map(lambda p: p.astype(dtype), net.init(jax.random.key(0)))
    rng = np.random.default_rng(1)
    Xb = jnp.asarray(3 * rng.normal(size=(512, 20)), dtype)
    Yb = mbp.network.as_targets(net, jnp.asarray(rng.integers(0, 10, 512)), dtype)
    C = 0.05  # below every example's norm: all are clipped
    _, norms, deltas = backward_with_deltas(net, params, Xb, Yb, per_example.NORMS)
    as_ = forward_pass_batch(net, params, Xb).a
    ours = per_example.clip_factors(norms, C, dtype)
    naive = _naive_factors(deltas, as_, C)
    assert _largest_ratio(ours, deltas, as_, C) <= 1.0
    assert _largest_ratio(naive, deltas, as_, C) > 1.0


def _naive_factors(deltas, as_, C):
    """c_b from norms summed in the 16-bit dtype, no margin: the old way."""
    total = sum(
        jnp.sum(d * d, axis=1) * jnp.sum(a * a, axis=1) + jnp.sum(d * d, axis=1)
        for d, a in zip(deltas, as_[:-1], strict=True)
    )
    clip = jnp.asarray(C, total.dtype)
    return (clip / jnp.maximum(clip, jnp.sqrt(total))).astype(jnp.float32)


def _largest_ratio(c, deltas, as_, C) -> float:
    total = 0.0
    for d, a in zip(deltas, as_[:-1], strict=True):
        rows = np.asarray((c[:, None] * d.astype(jnp.float32)).astype(d.dtype), np.float64)
        a64 = np.asarray(a, np.float64)
        total = total + (rows**2).sum(1) * ((a64**2).sum(1) + 1.0)
    return float(np.sqrt(total).max() / C)


# --- the audit --------------------------------------------------------------------------

AUDIT_NET = mbp.MLP((4, 32, 2), hidden="tanh", output="softmax", loss="cross_entropy")
_BROKEN = {
    "noise × 0.1": dpsgd.Mechanism(dpsgd.MECHANISM.clip_factors, lambda s, C, e, p: 0.1 * s * C),
    "clipping off": dpsgd.Mechanism(
        lambda norms, C, dtype: jnp.ones_like(norms[0].W), dpsgd.MECHANISM.noise_std
    ),
    "noise / physical size": dpsgd.Mechanism(
        dpsgd.MECHANISM.clip_factors, lambda s, C, expected, physical: s * C * expected / physical
    ),
}


def _audit(mechanism=dpsgd.MECHANISM):
    rng = np.random.default_rng(0)
    X_a = rng.normal(size=(200, 4)).astype(np.float32)
    Y_a = (X_a[:, 0] > 0).astype(np.int32)
    privacy = mbp.DPSGD(l2_clip=1.0, noise_multiplier=2.0, physical_size=200)
    return mbp.privacy.audit(
        AUDIT_NET, AUDIT_NET.init(jax.random.key(0)), optax.sgd(0.5), (X_a, Y_a), privacy,
        batch_size=20, epochs=5, key=jax.random.key(2),
        settings=mbp.privacy.AuditSettings(canaries=200), mechanism=mechanism,
    )  # fmt: skip


def test_the_audit_does_not_break_the_correct_claim():
    pytest.importorskip("jax_privacy")
    result = _audit()
    assert result.scores.shape == result.included.shape == (200,)
    assert 0 < result.included.sum() < 200
    assert result.epsilon_lower < result.epsilon_claimed
    assert "claim not broken" in result.line() and "add-or-remove-one" in result.line()


@pytest.mark.parametrize("variant", list(_BROKEN))
def test_the_audit_catches_a_broken_mechanism(variant):
    pytest.importorskip("jax_privacy")
    result = _audit(_BROKEN[variant])
    assert result.epsilon_lower > result.epsilon_claimed, result.line()
    assert "CLAIM BROKEN" in result.line()


def _net_and_params():
    net = mbp.MLP((4, 8, 3), hidden="tanh", output="softmax", loss="cross_entropy")
    return net, net.init(jax.random.key(0))


_CLIP = (1.0, per_example.clip_factors)


def test_dp_sgd_experiment(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("jax_privacy")
    from test_experiments import load, only_run

    dp_sgd = load("dp_sgd")
    config = dp_sgd.Config(
        runs_dir=str(tmp_path), dataset="digits", hidden_width=8, epochs=1, batch_size=64,
        noise_multipliers=(1.0,), audit_n=200, audit_batch_size=20, audit_epochs=1,
        canaries=50, timing_repeats=2,
    )  # fmt: skip
    summary = dp_sgd.main(config)
    run = only_run(tmp_path, "dp_sgd")
    assert [row["privacy"] for row in summary["final"]] == ["none", "σ=1"]
    assert summary["final"][0]["epsilon"] is None
    import dp_accounting as dp

    fresh = dp.pld.PLDAccountant(dp.NeighboringRelation.ADD_OR_REMOVE_ONE)
    n = summary["n_train"]
    fresh.compose(dp.PoissonSampledDpEvent(64 / n, dp.GaussianDpEvent(1.0)), n // 64)
    assert summary["final"][1]["epsilon"] == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-6)
    assert [row["mechanism"] for row in summary["audit"]][0] == "σ=1"
    assert len(summary["audit"]) == 1 + len(dp_sgd.BROKEN)
    assert summary["adjacency"] == "add-or-remove-one"
    assert summary["step"]["max_rel_difference"] < 1e-4
    for name in ("accuracy_vs_epsilon.png", "audit.png"):
        assert (run / name).read_bytes().startswith(b"\x89PNG")


# --- the command line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--dp-clip", "1", "--dp-noise", "1"], "--grad manual"),
        (["--grad", "manual", "--dp-noise", "1"], "needs --dp-clip"),
        (["--grad", "manual", "--dp-clip", "1"], "exactly one of"),
        (["--grad", "manual", "--dp-clip", "1", "--dp-epsilon", "1e-7"], "no noise multiplier"),
    ],
)
def test_cli_privacy_flags_that_do_not_fit_are_one_line_and_leave_no_run(flags, match, tmp_path):
    from manualbp.tools import train_cli

    argv = ["--dataset", "moons", "--n", "200", "--epochs", "1", "--runs-dir", str(tmp_path)]
    with pytest.raises((ValueError, train_cli.UserError), match=match) as raised:
        train_cli.main(argv + flags)
    assert "\n" not in str(raised.value)
    assert not list(tmp_path.glob("train/*"))  # nothing half-written


def test_cli_private_run_writes_no_training_loss(tmp_path, capsys):
    import json

    from manualbp.tools import train_cli

    argv = ["--dataset", "moons", "--n", "200", "--epochs", "2", "--runs-dir", str(tmp_path)]
    argv += ["--grad", "manual", "--dp-clip", "1", "--dp-noise", "1", "--batch-size", "20"]
    assert train_cli.main(argv) == 0
    assert "add-or-remove-one" in capsys.readouterr().out
    (run,) = tmp_path.glob("train/*")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(
        "loss" not in r and r["adjacency"] == "add-or-remove-one" for r in records
    )
    summary = json.loads((run / "summary.json").read_text())
    assert all("loss" not in row for row in summary["final"])
