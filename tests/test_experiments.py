"""The experiment plumbing, each experiment's main on a tiny config, and `manualbp train`."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from test_data import write_mnist

from manualbp.tools import cli, experiment, plots, train_cli
from manualbp.tools.console import UserError

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@functools.cache
def load(name: str):
    """Import experiments/<name>.py (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def only_run(root: Path, experiment_name: str) -> Path:
    """The single run folder under <root>/<experiment>/, checked for its standard files."""
    (run,) = (root / experiment_name).iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["experiment"] == experiment_name
    assert config["config"]["runs_dir"] == str(root)
    environment = config["environment"]
    assert {"backend", "devices", "x64", "versions"} <= set(environment)
    assert {"jax", "jaxlib", "numpy", "optax", "python"} <= set(environment["versions"])
    assert isinstance(environment["devices"], list) and environment["devices"]
    return run


def metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_png(path: Path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- configs as command lines --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Toy(experiment.RunConfig):
    lr: float = 0.1  # the step size
    epochs: int = 3  # passes over the data
    widths: tuple[int, ...] = (8, 8)  # hidden widths
    grad: Literal["manual", "autodiff"] = "manual"  # which gradients
    shuffle: bool = True  # reshuffle every epoch
    data_dir: str | None = None  # where the data are


def test_defaults_and_flags():
    assert experiment.parse_config(Toy, []) == Toy()
    config = experiment.parse_config(
        Toy,
        ["--lr", "0.5", "--widths", "3", "4", "5", "--grad", "autodiff", "--no-shuffle"]
        + ["--data-dir", "/data", "--seed", "7", "--run-name", "a"],
    )
    assert config == Toy(
        lr=0.5,
        widths=(3, 4, 5),
        grad="autodiff",
        shuffle=False,
        data_dir="/data",
        seed=7,
        run_name="a",
    )


def test_help_lists_flags_with_their_comments(capsys):
    with pytest.raises(SystemExit) as exit_:
        experiment.parse_config(Toy, ["-h"], description="What does the toy show?")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "What does the toy show?" in out
    for flag, comment in [
        ("--lr", "the step size"),
        ("--seed", "the one seed"),
        ("--no-shuffle", ""),
    ]:
        assert flag in out and comment in out


@pytest.mark.parametrize(
    "argv", [["--epochs", "two"], ["--lr", "fast"], ["--grad", "numeric"], ["--widths", "a"]]
)
def test_bad_values_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        experiment.parse_config(Toy, argv)
    assert exit_.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_unsupported_field_types_and_missing_defaults_are_refused():
    @dataclasses.dataclass(frozen=True)
    class NoDefault:
        lr: float

    @dataclasses.dataclass(frozen=True)
    class Dict:
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="needs a default"):
        experiment.build_parser(NoDefault)
    with pytest.raises(TypeError, match="needs a default|unsupported"):
        experiment.build_parser(Dict)


def test_run_folders_never_overwrite(tmp_path):
    config = Toy(runs_dir=str(tmp_path))
    first, second = experiment.start_run("toy", config), experiment.start_run("toy", config)
    assert first.path != second.path and first.path.parent == second.path.parent
    named = Toy(runs_dir=str(tmp_path), run_name="baseline")
    assert experiment.start_run("toy", named).path == tmp_path / "toy" / "baseline"
    with pytest.raises(UserError, match="--run-name"):
        experiment.start_run("toy", named)


def test_metrics_are_strict_json(tmp_path):
    import numpy as np

    run = experiment.start_run("toy", Toy(runs_dir=str(tmp_path)))
    run.log(epoch=1, loss=np.float32(0.5), diverged=float("nan"), sizes=(2, 3))
    (record,) = metrics(run.path)
    assert record == {"epoch": 1, "loss": 0.5, "diverged": None, "sizes": [2, 3]}
    assert json.loads((run.path / "config.json").read_text())["config"]["widths"] == [8, 8]


def test_format_table():
    table = plots.format_table([{"grad": "manual", "loss": 0.123456}, {"grad": "autodiff"}])
    lines = table.splitlines()
    assert lines[0].split() == ["grad", "loss"] and "0.1235" in lines[2]
    assert len(lines) == 4


# --- each experiment's main on a tiny config -------------------------------------------


def test_xor(tmp_path):
    xor = load("xor")
    summary = xor.main(xor.Config(runs_dir=str(tmp_path), epochs=5))
    run = only_run(tmp_path, "xor")
    records = metrics(run)
    assert [r["grad"] for r in records] == ["manual"] * 5 + ["autodiff"] * 5
    assert summary["max_loss_gap"] < 1e-5  # the two paths' curves coincide
    assert_png(run / "curves.png")
    assert json.loads((run / "summary.json").read_text())["max_loss_gap"] == summary["max_loss_gap"]


@pytest.mark.slow  # compiles two training paths and draws two PNGs
def test_sine_regression(tmp_path):
    sine = load("sine_regression")
    config = sine.Config(runs_dir=str(tmp_path), n=40, widths=(4,), epochs=2, batch_size=8)
    summary = sine.main(config)
    run = only_run(tmp_path, "sine_regression")
    assert len(metrics(run)) == 4 and {"loss", "test_loss"} <= set(metrics(run)[0])
    assert summary["split_epoch"] is None
    assert_png(run / "curves.png")
    assert_png(run / "fit.png")


@pytest.mark.slow  # loads scikit-learn and compiles two training paths
def test_digits(tmp_path):
    pytest.importorskip("sklearn")
    digits = load("digits")
    summary = digits.main(digits.Config(runs_dir=str(tmp_path), hidden_width=8, epochs=1))
    run = only_run(tmp_path, "digits")
    assert set(summary["test_accuracy"]) == {"manual", "autodiff"}
    # One epoch of Adam from the same start: the two paths differ only by float32 rounding,
    # a few ulps of the loss (measured 1.4e-8 on a loss of 2.06); a wrong gradient would
    # move the loss by orders more, and the accuracies would part.
    loss = summary["final"][0]["loss"]
    assert summary["max_loss_gap"] <= 16 * float(np.finfo(np.float32).eps) * loss
    assert summary["test_accuracy"]["manual"] == summary["test_accuracy"]["autodiff"]
    assert "test_accuracy" in metrics(run)[0]
    assert_png(run / "curves.png")


@pytest.mark.slow  # trains 8 runs and compiles a Lanczos program per loss and optimizer
def test_edge_of_stability(tmp_path):
    pytest.importorskip("sklearn")
    eos = load("edge_of_stability")
    config = eos.Config(
        runs_dir=str(tmp_path),
        data_cross_entropy="digits",
        n_examples=50,
        widths=(8,),
        seeds=2,
        steps=4,
        every=2,
        lanczos_steps=5,
    )
    summary = eos.main(config)
    run = only_run(tmp_path, "edge_of_stability")
    pairs = [(r["loss"], r["optimizer"], r["seeds"]) for r in summary["results"]]
    assert pairs == [(loss, opt, 2) for loss in ("mse", "cross_entropy") for opt in ("gd", "adam")]
    assert {"step", "hessian", "ggn", "ratio", "hessian_residual"} <= set(metrics(run)[0])
    assert_png(run / "sharpness.png")
    assert (run / "manifest.json").exists()


def test_mnist_nielsen_without_files_says_where_to_get_them(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MANUALBP_MNIST_DIR", raising=False)
    mnist = load("mnist_nielsen")
    summary = mnist.main(mnist.Config(runs_dir=str(tmp_path), mnist_dir=str(tmp_path)))
    assert "train-images-idx3-ubyte" in summary["skipped"]
    assert "storage.googleapis.com" in capsys.readouterr().out
    assert not (tmp_path / "mnist_nielsen").exists()


def test_mnist_nielsen_on_tiny_idx_files(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=10)
    mnist = load("mnist_nielsen")
    config = mnist.Config(
        runs_dir=str(tmp_path / "runs"),
        mnist_dir=str(tmp_path),
        recipe="ch1",  # ch3 differs in sizes and optimizer, tested below
        epochs=1,
        progress=False,
    )
    summary = mnist.main(config)
    run = only_run(tmp_path / "runs", "mnist_nielsen")
    assert set(summary) == {"ch1"}
    assert set(summary["ch1"]["test_accuracy"]) == {"manual", "autodiff"}
    assert len(metrics(run / "ch1")) == 2
    assert_png(run / "ch1" / "curves.png")


def test_mnist_nielsen_tables_share_one_column_order(tmp_path, capsys):
    write_mnist(tmp_path, n_train=20, n_test=10)
    mnist = load("mnist_nielsen")
    config = mnist.Config(
        runs_dir=str(tmp_path / "runs"), mnist_dir=str(tmp_path), epochs=1, progress=False
    )
    summary = mnist.main(config)
    headers = [line.split() for line in capsys.readouterr().out.splitlines() if "grad" in line]
    assert headers[0] == headers[1] == list(mnist.COLUMNS), headers
    assert [list(summary[name]["final"][0]) for name in ("ch1", "ch3")] == [list(mnist.COLUMNS)] * 2


def test_mnist_nielsen_on_fashion_mnist_files(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=10)
    mnist = load("mnist_nielsen")
    config = mnist.Config(
        runs_dir=str(tmp_path / "runs"),
        dataset="fashion-mnist",
        fashion_mnist_dir=str(tmp_path),
        recipe="ch3",
        epochs=1,
        progress=False,
    )
    summary = mnist.main(config)
    run = only_run(tmp_path / "runs", "mnist_nielsen")
    assert set(summary) == {"ch3"}
    assert json.loads((run / "config.json").read_text())["config"]["dataset"] == "fashion-mnist"


def test_sklearn_partial_fit_per_epoch_trains_as_fit_does():
    """One partial_fit per epoch, given a RandomState object: fit's first epoch to the bit,
    then a fresh shuffle per epoch with Adam's state kept (an int seed repeats the shuffle)."""
    pytest.importorskip("sklearn")
    import numpy as np
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6)).astype(np.float32)
    Y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)

    def classifier(random_state, max_iter=1):
        return MLPClassifier((5,), batch_size=10, max_iter=max_iter, random_state=random_state)

    def same(a, b):
        pairs = zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True)
        return all(np.array_equal(x, y) for x, y in pairs)

    with pytest.warns(UserWarning, match="Maximum iterations"):
        one_epoch = classifier(0).fit(X, Y)
    stepped, reseeded = classifier(np.random.RandomState(0)), classifier(0)
    stepped.partial_fit(X, Y, classes=np.arange(3))
    reseeded.partial_fit(X, Y, classes=np.arange(3))
    assert same(stepped, one_epoch) and same(reseeded, one_epoch)
    for _ in range(2):
        stepped.partial_fit(X, Y)
        reseeded.partial_fit(X, Y)
    assert stepped._optimizer.t == 3 * 5  # Adam's step count ran on across the calls
    assert not same(stepped, reseeded)  # the int seed shuffled epochs 2 and 3 as epoch 1


def test_nielsen_weight_decay_leaves_biases_alone():
    import jax.numpy as jnp

    import manualbp as mbp

    mnist = load("mnist_nielsen")
    params = (mbp.Layer(jnp.ones((2, 3)), jnp.ones((2,))),)
    zero = (mbp.Layer(jnp.zeros((2, 3)), jnp.zeros((2,))),)
    optimizer = mnist.nielsen_optimizer(eta=0.5, lam=5.0, n=10)
    updates, _ = optimizer.update(zero, optimizer.init(params), params)
    # w ← (1 − ηλ/n) w: an update of −0.25 w on weights, none on biases.
    assert jnp.allclose(updates[0].W, -0.25) and jnp.allclose(updates[0].b, 0.0)


def test_gradient_agreement(tmp_path):
    agreement = load("gradient_agreement")
    config = agreement.Config(
        runs_dir=str(tmp_path), depths=(1,), widths=(4,), activations=("tanh",), draws=1
    )
    summary = agreement.main(config)
    run = only_run(tmp_path, "gradient_agreement")
    assert summary["all_within_bound"] is True
    assert [r["dtype"] for r in metrics(run)] == ["float32", "float64"]
    assert all(0 <= r["error_eps"] <= r["bound_eps"] for r in metrics(run))
    assert_png(run / "agreement.png")


# --- manualbp train ------------------------------------------------------------------------


def test_train_command(tmp_path, capsys):
    argv = [
        "--dataset",
        "xor",
        "--n",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--grad",
        "manual",
    ]
    assert train_cli.main(argv + ["--runs-dir", str(tmp_path), "--no-progress"]) == 0
    run = only_run(tmp_path, "train")
    assert [r["epoch"] for r in metrics(run)] == [1, 2]
    assert_png(run / "curves.png")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [row["grad"] for row in summary["final"]] == ["manual"]
    assert "manual" in capsys.readouterr().out


def test_train_command_on_fashion_mnist_files(tmp_path, capsys):
    write_mnist(tmp_path, n_train=20, n_test=10)
    argv = ["--dataset", "fashion-mnist", "--fashion-mnist-dir", str(tmp_path), "--epochs", "1"]
    argv += ["--batch-size", "10", "--grad", "manual", "--runs-dir", str(tmp_path / "runs")]
    assert train_cli.main(argv + ["--no-progress"]) == 0
    assert "fashion-mnist: 20 train / 10 test examples" in capsys.readouterr().out
    missing = ["--dataset", "fashion-mnist", "--fashion-mnist-dir", str(tmp_path / "absent")]
    assert cli.main(["train", *missing]) == 2  # unavailable data is a usage error
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_an_experiment_refuses_a_seed_out_of_range_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["xor.py", "--seed", str(2**64)])
    xor = load("xor")
    assert experiment.run_main(xor.main, xor.Config, xor.__doc__) == 2
    err = capsys.readouterr().err
    assert err.startswith("xor.py: error: --seed") and err.count("\n") == 1
