"""The Fashion-MNIST experiment: both protocols over seeds, the paper's stop, its inputs."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from test_data import write_mnist
from test_experiments import assert_png, load, metrics, only_run

fashion = load("fashion_mlp")


def test_tolerance_stop_by_hand():
    # tol 0.1, patience 2: 0.95, 0.96 and 0.97 are each above the best so far minus 0.1,
    # so the count reads 1, 2, 3 and the run stops after the third, not the second.
    assert not fashion.tolerance_stop([1.0, 0.95, 0.96], tol=0.1, patience=2)
    assert fashion.tolerance_stop([1.0, 0.95, 0.96, 0.97], tol=0.1, patience=2)
    # An improvement by more than tol resets the count.
    assert not fashion.tolerance_stop([1.0, 0.95, 0.96, 0.8, 0.79], tol=0.1, patience=2)


@pytest.mark.parametrize("tol, patience", [(1e-2, 2), (1e-3, 3), (1e-4, 10)])
def test_tolerance_stop_ends_where_mlpclassifier_ends(tol, patience):
    """Fed scikit-learn's own loss curve, the rule fires at its last epoch and never before."""
    pytest.importorskip("sklearn")
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5))
    Y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int)
    classifier = MLPClassifier((6,), tol=tol, n_iter_no_change=patience, max_iter=2000,
                               batch_size=30, random_state=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reaching max_iter would not test the stop
        classifier.fit(X, Y)
    curve = classifier.loss_curve_
    assert len(curve) == classifier.n_iter_ < 2000
    assert fashion.tolerance_stop(curve, tol, patience)
    assert not any(fashion.tolerance_stop(curve[:k], tol, patience) for k in range(len(curve)))


def test_standardized_as_standard_scaler():
    pytest.importorskip("sklearn")
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    X, X_test = rng.uniform(size=(30, 4)), rng.uniform(size=(7, 4))
    X[:, 2] = 0.5  # a constant pixel: centred, not divided by 0
    ours = fashion.standardized((X, None), (X_test, None))
    scaler = StandardScaler().fit(X)
    assert ours[0].dtype == np.float64
    np.testing.assert_allclose(ours[0], scaler.transform(X), atol=1e-12)
    np.testing.assert_allclose(ours[1], scaler.transform(X_test), atol=1e-12)


def test_both_protocols_over_seeds_on_tiny_idx_files(tmp_path):
    pytest.importorskip("sklearn")
    write_mnist(tmp_path, n_train=40, n_test=10)
    config = fashion.Config(
        runs_dir=str(tmp_path / "runs"),
        fashion_mnist_dir=str(tmp_path),
        hidden=("10",),
        autodiff=("relu-10",),
        seeds=2,
        epochs=2,
        max_epochs=3,
        batch_size=10,
        timing_rounds=0,
    )
    summary = fashion.main(config)
    run = only_run(tmp_path / "runs", "fashion_mlp")
    rows = {(r["protocol"], r["side"]): r for r in summary["rows"]}
    assert set(rows) == {
        ("ours", "manualbp"),
        ("ours", "autodiff"),
        ("ours", "sklearn"),
        ("paper", "manualbp"),
        ("paper", "sklearn"),
    }
    for row in rows.values():
        assert row["seeds"] == 2 and row["acc_sd"] is not None
        assert row["acc_min"] <= row["acc_mean"] <= row["acc_max"]
    assert rows["ours", "manualbp"]["epochs"] == [2, 2]
    assert len(rows["ours", "sklearn"]["acc_per_seed"]) == 2
    paper = rows["paper", "manualbp"]
    assert all(1 <= e <= 3 for e in paper["epochs"])
    assert paper["at_cap"] == paper["epochs"].count(3)
    logged = metrics(run)
    assert len(logged) == sum(sum(r["epochs"]) for r in rows.values())
    assert {r["seed"] for r in logged} == {0, 1}
    assert_png(run / "accuracy_relu.png")
    with pytest.raises(ValueError, match="--hidden"):
        fashion.main(dataclasses.replace(config, hidden=("10-x",)))
    with pytest.raises(ValueError, match="--protocols"):
        fashion.main(dataclasses.replace(config, protocols=("theirs",)))


def test_the_paper_protocol_trains_manualbp_in_float64(tmp_path, monkeypatch):
    write_mnist(tmp_path, n_train=40, n_test=10)
    seen = []
    train = fashion.mbp.train
    monkeypatch.setattr(
        fashion.mbp, "train", lambda net, params, *a, **k: seen.append(params[0].W.dtype)
        or train(net, params, *a, **k)
    )  # fmt: skip
    config = fashion.Config(runs_dir=str(tmp_path / "runs"), fashion_mnist_dir=str(tmp_path),
                            hidden=("5",), seeds=1, epochs=1, max_epochs=1, batch_size=10,
                            timing_rounds=0, sklearn=False)  # fmt: skip
    fashion.main(config)
    assert [str(d) for d in seen] == ["float32", "float64"]
