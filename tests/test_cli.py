"""The `manualbp` command: exit statuses, one-line errors, list flags, progress, README example.

Every error a person can make at the command line ends in one line on stderr and status 2;
a run that fails ends in one line and status 1; a check that fails, status 1. No traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from pathlib import Path

import pytest
from test_docs import catalogue_sizes

import manualbp as mbp
from manualbp.tools import cli, console, experiment, train_cli

README = Path(__file__).resolve().parent.parent / "README.md"
TINY_TRAIN = ["train", "--dataset", "xor", "--n", "16", "--batch-size", "4", "--epochs", "2"]


def run(argv, capsys) -> tuple[int, str, str]:
    """``manualbp argv``: (exit status, stdout, stderr), argparse's exits included."""
    try:
        status = cli.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err: str, *phrases: str) -> None:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def run_folders(runs: Path) -> list[Path]:
    return sorted((runs / "train").iterdir()) if (runs / "train").exists() else []


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Work in tmp_path, as a user in their project folder; sys.path restored after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


# --- plug-ins ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, source, error",
    [
        ("raises", "raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
        ("typo", "def broken(:\n", "SyntaxError"),
        ("needs", "import not_a_module_anywhere\n", "ModuleNotFoundError"),
    ],
)
def test_a_plugin_that_fails_to_import_is_one_line_and_status_2(
    in_tmp, capsys, name, source, error
):
    (in_tmp / f"{name}.py").write_text(source)
    status, _, err = run(["verify", "--sizes", "2,3,2", "--hidden", f"{name}:act"], capsys)
    assert status == 2
    assert_one_line_error(err, f"cannot import {name!r}", error)


def test_each_kind_of_error_has_its_status(capsys):
    def raises(error):
        def command():
            raise error

        return command

    cases = [
        (console.UserError("--x: bad"), 2),
        (ValueError("Y: bad shape"), 2),
        (mbp.DivergenceError("diverged\nin epoch 3", 3, []), 1),
        (OSError(28, "No space left on device"), 1),
        (KeyboardInterrupt(), 130),
    ]
    for error, status in cases:
        assert console.guarded("manualbp x", raises(error)) == status
        err = capsys.readouterr().err
        assert err.startswith("manualbp x: ") and err.count("\n") == 1, err


# --- output paths are checked before any work ----------------------------------------------


def _root() -> bool:
    """Root writes into read-only folders, so those cases cannot be made as root."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.parametrize("where", ["directory", "below a file", "missing folder", "read-only"])
def test_json_path_that_cannot_be_written_is_refused_before_verifying(
    tmp_path, capsys, monkeypatch, where
):
    if where == "read-only" and _root():
        pytest.skip("root writes into read-only folders")
    (tmp_path / "file").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    path = {
        "directory": tmp_path,
        "below a file": tmp_path / "file" / "report.json",
        "missing folder": tmp_path / "nowhere" / "report.json",
        "read-only": locked / "report.json",
    }[where]

    def never(*args, **kwargs):
        raise AssertionError("verify ran before the --json path was checked")

    monkeypatch.setattr("manualbp.verification.verify", never)
    status, _, err = run(["verify", "--sizes", "2,3,2", "--json", str(path)], capsys)
    assert status == 2
    assert_one_line_error(err, "--json")
    assert not (tmp_path / "nowhere").exists()


def test_the_path_check_leaves_no_file_behind(tmp_path):
    path = tmp_path / "report.json"
    assert console.output_path(str(path)) == str(path)
    assert not path.exists()
    path.write_text("kept")
    console.output_path(str(path))
    assert path.read_text() == "kept"


def test_bench_checks_its_output_paths_before_timing(tmp_path, capsys):
    status, _, err = run(["bench", "--quick", "--markdown", str(tmp_path)], capsys)
    assert status == 2 and "--markdown" in err and "is a directory" in err


# --- manualbp train: usage errors, failed runs, run folders ----------------------------------


def test_epochs_zero_is_a_usage_error(tmp_path, capsys):
    status, _, err = run([*TINY_TRAIN[:-1], "0", "--runs-dir", str(tmp_path)], capsys)
    assert status == 2
    assert_one_line_error(err, "--epochs")
    assert run_folders(tmp_path) == []


@pytest.mark.parametrize("where", ["below a file", "read-only"])
def test_an_unwritable_runs_dir_is_a_usage_error(tmp_path, capsys, where):
    if where == "read-only" and _root():
        pytest.skip("root writes into read-only folders")
    (tmp_path / "file").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    runs = tmp_path / "file" / "runs" if where == "below a file" else locked
    status, _, err = run([*TINY_TRAIN, "--runs-dir", str(runs)], capsys)
    assert status == 2
    assert_one_line_error(err, "--runs-dir")


def test_an_existing_run_name_is_a_usage_error_and_the_run_is_kept(tmp_path, capsys):
    existing = tmp_path / "train" / "baseline"
    existing.mkdir(parents=True)
    (existing / "summary.json").write_text("{}")
    argv = [*TINY_TRAIN, "--runs-dir", str(tmp_path), "--run-name", "baseline"]
    status, _, err = run(argv, capsys)
    assert status == 2
    assert_one_line_error(err, "--run-name", "exists")
    assert os.listdir(existing) == ["summary.json"]


def test_a_diverging_run_is_one_line_status_1_and_leaves_no_empty_run_folder(tmp_path, capsys):
    argv = ["train", "--dataset", "sine", "--n", "64", "--batch-size", "8", "--epochs", "3"]
    argv += ["--optimizer", "sgd", "--lr", "1e10", "--runs-dir", str(tmp_path), "--run-name", "r"]
    status, _, err = run(argv, capsys)
    assert status == 1
    assert_one_line_error(err, "the run failed", "diverged in epoch 1")
    assert not (tmp_path / "train" / "r").exists()  # it held nothing but config.json


def test_a_run_that_fails_after_logging_epochs_says_so_in_its_folder(tmp_path, capsys, monkeypatch):
    real_train = mbp.train

    def diverges_after_one_epoch(*args, **kwargs):
        real_train(*args, **{**kwargs, "epochs": 1})
        raise mbp.DivergenceError("training diverged in epoch 2: loss inf", 2, [])

    monkeypatch.setattr(mbp, "train", diverges_after_one_epoch)
    status, _, err = run([*TINY_TRAIN, "--runs-dir", str(tmp_path), "--run-name", "r"], capsys)
    assert status == 1
    assert_one_line_error(err, "diverged in epoch 2")
    summary = json.loads((tmp_path / "train" / "r" / "summary.json").read_text())
    assert summary == {"status": "failed", "error": "training diverged in epoch 2: loss inf"}
    assert (tmp_path / "train" / "r" / "metrics.jsonl").exists()


def test_a_net_that_does_not_fit_the_data_and_missing_data_are_usage_errors(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("MANUALBP_MNIST_DIR", raising=False)
    runs = ["--runs-dir", str(tmp_path)]
    status, _, err = run([*TINY_TRAIN, "--sizes", "3", "1", *runs], capsys)
    assert status == 2
    assert_one_line_error(err, "--sizes", "N_1 = 2")
    status, _, err = run(["train", "--dataset", "mnist", *runs], capsys)
    assert status == 2
    assert_one_line_error(err, "MNIST not found")
    status, _, err = run(["train", "--dataset", "cifar"], capsys)
    assert status == 2 and "invalid choice" in err
    status, _, err = run([*TINY_TRAIN, "--batch-size", "100", *runs], capsys)
    assert status == 2
    assert_one_line_error(err, "--batch-size")
    assert run_folders(tmp_path) == []


def test_train_shows_the_header_first_then_a_line_per_epoch_naming_the_gradients(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(sys, "stderr", sys.stdout)  # one stream, to see the order
    status, out, _ = run([*TINY_TRAIN, "--runs-dir", str(tmp_path)], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("MLP(sizes=(2, 32, 2)") and "run folder" in lines[0]
    epochs = [m.groups() for m in map(re.compile(r"(\w+) +epoch (\d/\d) ").match, lines) if m]
    assert epochs == [
        ("manual", "1/2"),
        ("manual", "2/2"),
        ("autodiff", "1/2"),
        ("autodiff", "2/2"),
    ]


def test_train_says_when_it_resumes_or_has_nothing_to_train(tmp_path, capsys):
    argv = [*TINY_TRAIN, "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    argv += ["--grad", "manual", "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert run(argv, capsys)[0] == 0
    assert (tmp_path / "ckpt" / "manual" / "checkpoint.npz").exists()
    status, _, err = run(argv, capsys)
    assert status == 0 and "has completed 2 of 2 epochs; nothing to train" in err
    status, _, err = run([*argv, "--epochs", "3"], capsys)
    assert status == 0 and "resuming the checkpoint" in err and "after epoch 2 of 3" in err
    last = run_folders(tmp_path / "runs")[-1]
    last = [json.loads(line) for line in (last / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in last] == [3]


# --- list flags and help ---------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [["3,4,2"], ["3", "4", "2"], ["3,4", "2"]])
def test_sizes_take_commas_or_spaces_in_verify_and_train(sizes):
    verify = argparse.ArgumentParser()
    cli._verify_parser(verify)
    assert verify.parse_args(["--sizes", *sizes]).sizes == (3, 4, 2)
    train = experiment.parse_config(train_cli.TrainConfig, ["--sizes", *sizes])
    assert train.sizes == (3, 4, 2)


def test_verify_and_train_run_the_nets_of_the_new_spellings(tmp_path, capsys):
    status, out, _ = run(["verify", "--sizes", "3", "4", "2", "--batch", "2"], capsys)
    assert status == 0 and "MLP(sizes=(3, 4, 2)" in out
    argv = [*TINY_TRAIN[:-1], "1", "--grad", "manual", "--runs-dir", str(tmp_path)]
    status, out, _ = run([*argv, "--sizes", "2,5,2"], capsys)
    assert status == 0 and "MLP(sizes=(2, 5, 2)" in out


def test_a_bad_list_value_is_a_usage_error(capsys):
    status, _, err = run(["verify", "--sizes", "4,x,3"], capsys)
    assert status == 2 and "separated by commas or spaces" in err


def test_train_help_shows_each_default_once(capsys):
    status, out, _ = run(["train", "--help"], capsys)
    assert status == 0
    options = re.split(r"\n  (?=--)", out.split("options:")[1])
    for option in options:
        assert option.count("(default:") <= 1, option
    assert "(default: None)" not in out
    assert "(default: 20)" in out and "(default: True)" in out  # --epochs, --progress


# --- verify: the catalogue, its progress and its exit status -------------------------------


def test_progress_is_a_line_per_item_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    stream = io.StringIO()
    with console.Progress(3, "verify", bar=True, file=stream) as progress:
        for label in ("a", "b", "c"):
            progress.step(label)
    assert stream.getvalue().splitlines() == ["verify 1/3  a", "verify 2/3  b", "verify 3/3  c"]


def test_progress_is_a_bar_with_tqdm():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    with console.Progress(3, "verify", bar=True, file=stream) as progress:
        progress.step("a")
        progress.step("b")
    assert "2/3" in stream.getvalue() and "verify 1/3  a" not in stream.getvalue()


def test_catalogue_says_what_it_checks_shows_progress_and_fails_with_status_1(capsys, monkeypatch):
    """A small catalogue with a deliberately wrong ∂E/∂ŷ for mse: the loss and its net fail."""
    import manualbp.losses as losses

    wrong = losses.Loss("mse", losses.mse.fn, lambda y_hat, y: 2 * (y_hat - y))
    monkeypatch.setitem(losses.LOSSES, "mse", wrong)
    monkeypatch.setattr(cli, "ACTIVATIONS", {"tanh": mbp.ACTIVATIONS["tanh"]})
    monkeypatch.setattr(cli, "LOSSES", {"mse": wrong})
    monkeypatch.setattr(cli, "HIDDEN_ACTIVATIONS", ("tanh",))
    monkeypatch.setattr(cli, "OUTPUT_LOSS_PAIRS", (("identity", "mse"),))
    status, out, err = run(["verify"], capsys)
    assert status == 1
    assert err.splitlines()[0].startswith("manualbp verify: 3 subjects: 1 activations and 1 losses")
    assert [line.split()[:3] for line in err.splitlines()[1:]] == [
        ["verify", "1/3", "ok"],
        ["verify", "2/3", "FAIL"],
        ["verify", "3/3", "FAIL"],
    ]
    assert "FAILED: 1 of 3 subjects" in out


@pytest.mark.slow
def test_the_whole_catalogue_passes(capsys):
    status, out, err = run(["verify"], capsys)
    n = len(mbp.ACTIVATIONS) + len(mbp.LOSSES)
    n += len(mbp.activations.HIDDEN_ACTIVATIONS) * len(mbp.losses.OUTPUT_LOSS_PAIRS)
    assert status == 0, out
    assert err.splitlines()[0].startswith(f"manualbp verify: {n} subjects")
    assert len([line for line in err.splitlines() if line.startswith("verify ")]) == n
    assert f"PASSED: {n} of {n} subjects" in out
    checks = int(re.search(r"of \d+ subjects, (\d+) checks", out).group(1))
    assert (n, checks) in catalogue_sizes(README.read_text(encoding="utf-8")), "README's count"


# --- the README's softplus example, as written there ---------------------------------------


def _readme_softplus():
    """The README's my_softplus.py, its command, and the output it shows."""
    text = README.read_text()
    code = re.search(r"```python\n(import jax.numpy as jnp\n.*?my_softplus.*?)```", text, re.S)
    command = re.search(r"```bash\n(manualbp verify --sizes 4,6,6,3 .*?)\n```", text)
    outputs = re.findall(r"```text\n(.*?)```", text, re.S)
    return code.group(1), command.group(1).split()[1:], outputs


@pytest.mark.slow  # two verifies of a new net; test_verify's plugged-in test covers the path
def test_the_readme_softplus_example_fails_then_passes_as_shown(in_tmp, capsys):
    code, argv, (failed_shown, passed_shown) = _readme_softplus()
    (in_tmp / "my_softplus.py").write_text(code)
    status, out, err = run(argv, capsys)
    assert status == 1, err
    failed_line = failed_shown.splitlines()[0]
    assert failed_line in out
    net_report = out[out.index(failed_line) :]
    shown_rows = [row for row in failed_shown.splitlines() if row.startswith("FAIL ")]
    assert len(shown_rows) == net_report.count("\nFAIL ") > 0
    for row in shown_rows:
        check, eq, layer = re.match(r"FAIL\s+(.*?)\s+(\(\d\)\s+)?(\d+)\s+\d", row).groups()
        eq = re.escape(eq) if eq else ""
        assert re.search(rf"FAIL\s+{re.escape(check)}\s+{eq}{layer}\s", net_report), row

    fixed = code.replace("1 / (1 + jnp.exp(z))", "1 / (1 + jnp.exp(-z))")
    assert fixed != code
    (in_tmp / "my_softplus_fixed.py").write_text(fixed)
    argv = [a.replace("my_softplus:", "my_softplus_fixed:") for a in argv]
    status, out, _ = run(argv, capsys)
    assert status == 0
    for line in passed_shown.splitlines():
        assert line in out
