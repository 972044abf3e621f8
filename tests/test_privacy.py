"""DP-SGD training: the settings, the noised clipped step, resuming, and the accounting."""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import X_TEST, Y_TEST, results_equal, run

import manualbp as mbp
from manualbp.training import privacy

DP = mbp.DPSGD(l2_clip=1.0, noise_multiplier=1.1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(l2_clip=0.0, noise_multiplier=1.0), ValueError, "l2_clip"),
        (dict(l2_clip=1.0, noise_multiplier=0.0), ValueError, "noise_multiplier"),
        (dict(l2_clip=1.0, noise_multiplier=math.nan), ValueError, "noise_multiplier"),
        (dict(l2_clip=1.0, noise_multiplier="1"), TypeError, "noise_multiplier"),
        (dict(l2_clip=1.0, noise_multiplier=1.0, delta=1.0), ValueError, "delta"),
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
    ],
)
def test_unsupported_combinations_are_rejected(overrides, error, match):
    with pytest.raises(error, match=match):
        run(epochs=1, **{"privacy": DP, **overrides})


def test_missing_accounting_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)
    with pytest.raises(ImportError, match=r"manualbp\[privacy\]"):
        run(epochs=1, privacy=DP)


def test_noise_has_the_stated_deviation_and_comes_from_the_key():
    grads = (mbp.Layer(jnp.zeros((300, 100)), jnp.zeros((300,))),)
    settings = mbp.DPSGD(l2_clip=2.0, noise_multiplier=1.5)
    noisy = privacy.add_noise(settings, grads, jax.random.key(0), batch_size=10)
    std = float(np.std(np.concatenate([np.ravel(x) for x in jax.tree.leaves(noisy)])))
    assert abs(std - 1.5 * 2.0 / 10) < 0.01  # σ C / B = 0.3, ~30 000 draws
    again = privacy.add_noise(settings, grads, jax.random.key(0), batch_size=10)
    assert all(
        jnp.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(noisy), jax.tree.leaves(again), strict=True)
    )


def test_private_training_records_a_growing_epsilon_and_never_starts_autodiff(autodiff_forbidden):
    result = run(epochs=3, privacy=DP)
    eps = [h["epsilon"] for h in result.history]
    assert all(h["delta"] == DP.delta for h in result.history)
    assert 0 < eps[0] < eps[1] < eps[2] < math.inf
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(result.params))


def test_private_training_differs_from_plain_and_by_key():
    plain = run(epochs=1)
    private = run(epochs=1, privacy=DP)
    other_key = run(epochs=1, privacy=DP, key=jax.random.key(7))
    assert not np.allclose(private.params[0].W, plain.params[0].W)
    assert not np.allclose(private.params[0].W, other_key.params[0].W)


def test_tiny_noise_and_a_loose_clip_follow_plain_sgd():
    """The same key gives the same batches: only the clipping and the noise differ."""
    sgd = optax.sgd(0.1)
    loose = mbp.DPSGD(l2_clip=1e4, noise_multiplier=1e-9)
    plain = run(epochs=2, optimizer=sgd)
    private = run(epochs=2, optimizer=sgd, privacy=loose)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(private.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_resume_is_bit_identical_to_an_uninterrupted_private_run(tmp_path):
    options = dict(privacy=DP, eval_data=(X_TEST, Y_TEST))
    uninterrupted = run(epochs=4, **options)
    first = run(epochs=2, checkpoint_dir=tmp_path, **options)
    assert len(first.history) == 2
    resumed = run(epochs=4, checkpoint_dir=tmp_path, **options)
    assert results_equal(resumed, uninterrupted)


def test_a_plain_checkpoint_is_not_resumed_as_private(tmp_path):
    run(epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(mbp.checkpoint.CheckpointMismatchError):
        run(epochs=2, checkpoint_dir=tmp_path, privacy=DP)


def test_epsilon_matches_the_published_dp_sgd_setting():
    """Abadi et al.'s MNIST setting (q = 256/60 000, σ = 1.1, 60 epochs, δ = 1e-5): ε ≈ 3."""
    settings = mbp.DPSGD(l2_clip=1.0, noise_multiplier=1.1, delta=1e-5)
    steps = 60 * (60_000 // 256)
    eps = privacy.epsilon(settings, steps=steps, n=60_000, batch_size=256)
    assert 2.5 < eps < 3.3


@pytest.mark.parametrize("steps", [1, 37, 1000])
def test_epsilon_equals_a_fresh_accountant_over_all_steps(steps):
    import dp_accounting as dp

    settings = mbp.DPSGD(l2_clip=1.0, noise_multiplier=0.9, delta=1e-6)
    event = dp.PoissonSampledDpEvent(32 / 1000, dp.GaussianDpEvent(0.9))
    accountant = dp.rdp.RdpAccountant()
    accountant.compose(dp.SelfComposedDpEvent(event, steps))
    expected = accountant.get_epsilon(1e-6)
    assert privacy.epsilon(settings, steps=steps, n=1000, batch_size=32) == pytest.approx(
        expected, rel=1e-12
    )


def test_dp_sgd_experiment(tmp_path):
    pytest.importorskip("sklearn")
    from test_experiments import load, only_run

    dp_sgd = load("dp_sgd")
    config = dp_sgd.Config(
        runs_dir=str(tmp_path), hidden_width=8, epochs=2, noise_multipliers=(1.0,), timing_repeats=2
    )
    summary = dp_sgd.main(config)
    run = only_run(tmp_path, "dp_sgd")
    assert [row["privacy"] for row in summary["final"]] == ["none", "σ=1"]
    assert summary["final"][0]["epsilon"] is None and summary["final"][1]["epsilon"] > 0
    assert summary["step"]["max_rel_difference"] < 1e-4
    assert (run / "accuracy_vs_epsilon.png").read_bytes().startswith(b"\x89PNG")
