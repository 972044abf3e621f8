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
from manualbp.tools import cli, console, experiment, train_cli, verify_cli
from manualbp.tools import runs as runs_module

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
        (MemoryError(), 1),
        (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8e9 bytes.\nmore"), 1),
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


def _refuse_writes_below(monkeypatch, module, folder: Path) -> None:
    """The simulated twin of a read-only folder: ``open`` in ``module`` and ``Path.mkdir``
    fail with EACCES below ``folder``, as they do for a user without write permission,
    so the case runs (and can fail) as root too."""
    real_open, real_mkdir = open, Path.mkdir

    def denied(path):
        return Path(path).absolute().is_relative_to(folder)

    def fake_open(path, *args, **kwargs):
        if denied(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def fake_mkdir(self, *args, **kwargs):
        if denied(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(module, "open", fake_open, raising=False)
    monkeypatch.setattr(Path, "mkdir", fake_mkdir)


@pytest.mark.parametrize(
    "where", ["directory", "below a file", "missing folder", "read-only", "read-only, simulated"]
)
def test_json_path_that_cannot_be_written_is_refused_before_verifying(
    tmp_path, capsys, monkeypatch, where
):
    if where == "read-only" and _root():
        pytest.skip("root writes into read-only folders; the simulated twin runs instead")
    (tmp_path / "file").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if where == "read-only, simulated":
        _refuse_writes_below(monkeypatch, console, locked)
    path = {
        "directory": tmp_path,
        "below a file": tmp_path / "file" / "report.json",
        "missing folder": tmp_path / "nowhere" / "report.json",
        "read-only": locked / "report.json",
        "read-only, simulated": locked / "report.json",
    }[where]

    def never(*args, **kwargs):
        raise AssertionError("verify ran before the --json path was checked")

    monkeypatch.setattr("manualbp.verification.verify", never)
    status, _, err = run(["verify", "--sizes", "2,3,2", "--json", str(path)], capsys)
    assert status == 2
    assert_one_line_error(err, "--json")
    assert not (tmp_path / "nowhere").exists()


def test_an_output_path_over_the_name_limit_is_one_short_line(tmp_path, capsys):
    long = str(tmp_path / ("n" * 300) / "report.json")
    status, _, err = run(["verify", "--sizes", "2,3,2", "--json", long], capsys)
    assert status == 2
    assert_one_line_error(err, "--json", "File name too long")
    assert "n" * 100 not in err


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


@pytest.mark.parametrize("where", ["below a file", "read-only", "read-only, simulated"])
def test_an_unwritable_runs_dir_is_a_usage_error(tmp_path, capsys, monkeypatch, where):
    if where == "read-only" and _root():
        pytest.skip("root writes into read-only folders; the simulated twin runs instead")
    (tmp_path / "file").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if where == "read-only, simulated":
        _refuse_writes_below(monkeypatch, runs_module, locked)
    runs = tmp_path / "file" / "runs" if where == "below a file" else locked
    status, _, err = run([*TINY_TRAIN, "--runs-dir", str(runs)], capsys)
    assert status == 2
    assert_one_line_error(err, "--runs-dir")
    assert list(locked.iterdir()) == []


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
    runs = tmp_path / "runs"
    argv = [*TINY_TRAIN, "--runs-dir", str(runs), "--no-progress"]
    argv += ["--grad", "both", "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert run(argv, capsys)[0] == 0
    assert (tmp_path / "ckpt" / "manual" / "checkpoint.npz").exists()
    before = run_folders(runs)
    status, out, err = run(argv, capsys)
    # A no-op run: no new run folder, and it says so once (not once per gradient path).
    assert status == 0 and run_folders(runs) == before
    assert (out + err).count("nothing to train") == 1 and "no run folder made" in err
    status, _, err = run([*argv, "--epochs", "3"], capsys)
    assert status == 0
    for grad in ("manual", "autodiff"):
        assert f"{grad}: resumed from the checkpoint" in err and "after epoch 2 of 3" in err
    last = run_folders(runs)[-1]
    last = [json.loads(line) for line in (last / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in last] == [3, 3]


@pytest.mark.parametrize("progress", ["--progress", "--no-progress"])
def test_a_refused_resume_never_first_says_it_resumes(tmp_path, capsys, progress):
    argv = [*TINY_TRAIN, "--runs-dir", str(tmp_path / "runs"), progress, "--grad", "manual"]
    argv += ["--checkpoint-dir", str(tmp_path / "ckpt")]
    assert run(argv, capsys)[0] == 0
    status, _, err = run([*argv, "--epochs", "3", "--hidden", "relu"], capsys)
    assert status == 2
    assert_one_line_error(err, "checkpoint")
    assert "resuming" not in err and "resumed" not in err


# --- list flags and help ---------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [["3,4,2"], ["3", "4", "2"], ["3,4", "2"]])
def test_sizes_take_commas_or_spaces_in_verify_and_train(sizes):
    verify = argparse.ArgumentParser()
    verify_cli.add_arguments(verify)
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
    monkeypatch.setattr(verify_cli, "ACTIVATIONS", {"tanh": mbp.ACTIVATIONS["tanh"]})
    monkeypatch.setattr(verify_cli, "LOSSES", {"mse": wrong})
    monkeypatch.setattr(verify_cli, "HIDDEN_ACTIVATIONS", ("tanh",))
    monkeypatch.setattr(verify_cli, "OUTPUT_LOSS_PAIRS", (("identity", "mse"),))
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


# --- one command line: usage errors, --version, metavars, names, lists -----------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "--nope"],
        ["train", "--epochs"],
        ["bench", "--repeats", "x"],
        ["verify", "--sizes", ","],
    ],
)
def test_a_usage_error_is_one_line_and_a_hint_not_the_usage_block(argv, capsys):
    status, _, err = run(argv, capsys)
    prog = "manualbp" if argv == ["verify", "--nope"] else f"manualbp {argv[0]}"
    assert status == 2
    error, hint = err.splitlines()
    assert error.startswith(f"{prog}: error: ") and hint == f"{prog}: see {prog} --help"
    assert "usage:" not in err


def test_version(capsys):
    status, out, _ = run(["--version"], capsys)
    assert status == 0 and re.fullmatch(r"manualbp \S+.*\n", out)


def _options(argv, capsys) -> dict[str, str]:
    """{flag: metavar} from ``manualbp argv --help``."""
    status, out, _ = run([*argv, "--help"], capsys)
    assert status == 0
    return dict(re.findall(r"^  (--[\w-]+) ([A-Z]+)\b", out, re.M))


def test_one_metavar_style_and_one_name_per_idea_across_commands(capsys):
    commands = {name: _options([name], capsys) for name in ("verify", "train", "bench")}
    for name, options in commands.items():
        assert set(options.values()) <= {"INT", "FLOAT", "NAME", "PATH"}, (name, options)
    assert commands["verify"]["--batch-size"] == commands["train"]["--batch-size"] == "INT"
    assert "--batch" not in commands["verify"]  # the old name still works, unlisted
    verify = argparse.ArgumentParser()
    verify_cli.add_arguments(verify)
    assert verify.parse_args(["--batch", "3"]).batch_size == 3


@pytest.mark.parametrize("hidden", [["tanh,relu"], ["tanh", "relu"], ["tanh,", "relu"]])
def test_hidden_takes_commas_or_spaces_in_verify_and_train(hidden):
    verify = argparse.ArgumentParser()
    verify_cli.add_arguments(verify)
    assert verify.parse_args(["--hidden", *hidden]).hidden == ("tanh", "relu")
    train = experiment.parse_config(train_cli.TrainConfig, ["--hidden", *hidden])
    assert train.hidden == ("tanh", "relu")


# --- train is as strong as verify: plug-ins, lists, hidden activations only -------------------

MY_TANH = """
import jax.numpy as jnp
import manualbp as mbp

my_tanh = mbp.Activation("my_tanh", jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2)
"""


def test_a_derivation_verified_from_the_cli_trains_from_the_cli(in_tmp, capsys):
    (in_tmp / "mine_for_train.py").write_text(MY_TANH)
    net = ["--sizes", "2,5,4,2", "--hidden", "mine_for_train:my_tanh,relu"]
    status, out, _ = run(["verify", *net, "--loss", "cross_entropy", "--output", "softmax"], capsys)
    assert status == 0, out
    argv = [*TINY_TRAIN[:-1], "1", "--grad", "manual", "--runs-dir", str(in_tmp), *net]
    status, out, err = run(argv, capsys)
    assert status == 0, err
    assert "hidden=(Activation(name='my_tanh'" in out or "my_tanh" in out


@pytest.mark.parametrize("command", ["verify", "train"])
def test_softmax_is_never_offered_as_a_hidden_activation(command, tmp_path, capsys):
    argv = ["verify", "--sizes", "2,3,2"]
    if command == "train":
        argv = [*TINY_TRAIN, "--runs-dir", str(tmp_path)]
    status, _, err = run([*argv, "--hidden", "softmax"], capsys)
    assert status == 2
    assert_one_line_error(err, "--hidden", "unknown activation 'softmax'")
    assert "softmax" not in err.split("expected one of")[1]


@pytest.mark.parametrize("command", ["verify", "train"])
def test_a_plugin_that_calls_sys_exit_on_import_is_named(command, in_tmp, capsys):
    (in_tmp / "exits.py").write_text("import sys\nsys.exit(3)\n")
    argv = ["verify", "--sizes", "2,3,2"] if command == "verify" else [*TINY_TRAIN]
    status, _, err = run([*argv, "--hidden", "exits:act"], capsys)
    assert status == 2
    assert_one_line_error(err, "cannot import 'exits'", "sys.exit(3)")
    assert run_folders(in_tmp / "runs") == []


# --- every input gets one line and a pinned status before any work ---------------------------

GIB = 2**30


@pytest.mark.parametrize(
    "argv, phrases",
    [
        (["--seed", "18446744073709551616"], ["--seed", "2**63-1"]),
        (["--sizes", "2,100000000000000000000,2"], ["--n/--sizes/--batch-size", "GiB"]),
        (["--sizes", "2", str(2**31), "2"], ["--n/--sizes/--batch-size", "GiB"]),
        (["--n", "1000000000"], ["--n/--sizes/--batch-size", "GiB"]),
        (["--sizes", ","], ["--sizes", "expected at least one value"]),
        (["--sizes", "2"], ["--sizes", "at least two layers"]),
        (["--sizes", "2,0,2"], ["--sizes", "every width of at least 1"]),
        (["--n", "-5"], ["--n", "at least 2, got -5"]),
        (["--lr", "-0.05"], ["--lr", "positive", "-0.05"]),
        (["--lr", "nan"], ["--lr", "positive"]),
        (["--noise", "-1"], ["--noise"]),
        (["--test-fraction", "1.5"], ["--test-fraction"]),
        (["--check-every", "-1"], ["--check-every"]),
        (["--dataset", "sine", "--output", "softmax", "--loss", "cross_entropy"],
         ["--output softmax --loss cross_entropy", "regression", "not a class label"]),
        (["--run-name", "a/b"], ["--run-name", "'a/b'"]),
        (["--checkpoint-dir", "x" * 300], ["--checkpoint-dir", "300 characters", "allows"]),
        (["--runs-dir", "r" * 300], ["--runs-dir", "300 characters"]),
    ],
)  # fmt: skip
def test_train_refuses_each_bad_input_in_one_line_before_any_work(
    argv, phrases, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("manualbp.tools.limits.available", lambda: (8 * GIB, "as if 8 GiB"))
    monkeypatch.chdir(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("work started before the flags were checked")

    monkeypatch.setattr(train_cli, "load_dataset", never)
    base = ["train", "--runs-dir", str(tmp_path / "runs")]
    status, _, err = run([*base, *argv], capsys)
    assert status == 2
    assert_one_line_error(err, *phrases)
    assert len(err.splitlines()) <= 2 and str(tmp_path) not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv, phrases",
    [
        (["--seed", "18446744073709551616"], ["--seed"]),
        (["--seed", "-9223372036854775809"], ["--seed"]),
        (["--sizes", "2,100000000000000000000,2"], ["--sizes/--batch-size", "GiB"]),
        (["--batch-size", "300000000"], ["--sizes/--batch-size", "GiB"]),
        (["--batch", "0"], ["--batch-size", "positive batch size"]),
        (["--extensions", "--fd"], ["--extensions", "--fd does not apply"]),
        (["--extensions", "--dtype", "bfloat16"], ["--extensions", "float32 or float64"]),
    ],
)
def test_verify_refuses_each_bad_input_in_one_line_before_any_work(
    argv, phrases, capsys, monkeypatch
):
    monkeypatch.setattr("manualbp.tools.limits.available", lambda: (8 * GIB, "as if 8 GiB"))

    def never(*args, **kwargs):
        raise AssertionError("verify ran before the flags were checked")

    monkeypatch.setattr("manualbp.verification.verify", never)
    monkeypatch.setattr("manualbp.verification.verify_extensions", never)
    status, _, err = run(["verify", *argv], capsys)
    assert status == 2
    assert_one_line_error(err, *phrases)


def test_an_os_error_names_the_file_not_the_whole_path(capsys):
    def too_long():
        raise OSError(36, "File name too long", "/very/" + "deep/" * 100 + "y" * 300)

    assert console.guarded("manualbp train", too_long) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "File name too long" in err and "deep/" not in err


@pytest.mark.parametrize(
    "cause, status",
    [
        (OSError(28, "No space left on device"), 1),
        (OSError(27, "File too large"), 1),
        (OSError(30, "Read-only file system"), 2),
    ],
)
def test_a_checkpoint_that_cannot_be_written_for_space_is_a_failed_run(cause, status, capsys):
    from manualbp.training.checkpoint import CheckpointWriteError

    def save():
        raise CheckpointWriteError("checkpoint_dir: could not write the checkpoint") from cause

    assert console.guarded("manualbp train", save) == status
    assert capsys.readouterr().err.count("\n") == 1


def test_a_file_size_limit_mid_run_exits_1_as_documented(tmp_path):
    """`ulimit -f` for real: the checkpoint save fails with EFBIG; one line, status 1."""
    import subprocess

    argv = [sys.executable, "-m", "manualbp.tools.cli", *TINY_TRAIN, "--grad", "manual"]
    argv += ["--sizes", "2,200,200,2", "--runs-dir", str(tmp_path / "runs")]
    argv += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress"]
    # 64 kB: config.json fits, a 2-200-200-2 checkpoint (~330 kB) does not.
    done = subprocess.run(
        ["bash", "-c", 'ulimit -f 64 && exec "$@"', "ulimit", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 1, done.stderr
    assert_one_line_error(done.stderr, "the run failed", "File too large")


# --- what training prints: the loss gap explained, the gradient checks ------------------------


def test_train_explains_the_loss_gap_and_reports_its_gradient_checks(tmp_path, capsys):
    argv = [*TINY_TRAIN, "--runs-dir", str(tmp_path), "--run-name", "r", "--check-every", "1"]
    status, out, _ = run(argv, capsys)
    assert status == 0
    assert "max |manual - autodiff| training loss over epochs" in out
    assert "gradient checks: 4 of 4 passed" in out  # 2 epochs × 2 paths
    summary = json.loads((tmp_path / "train" / "r" / "summary.json").read_text())
    assert summary["gradient_checks"]["checked"] == summary["gradient_checks"]["passed"] == 4
    gap = {"max_loss_gap": 0.0267}
    lines = train_cli.explain(gap, train_cli.TrainConfig(epochs=20), steps_per_epoch=1875)
    assert "not a wrong gradient" in lines[1] and "37500 steps" in lines[1]
    assert "--check-every" in lines[1] and "--dtype float64" in lines[1]


# --- verify --extensions: progress, and the net flags honoured ----------------------------------


def test_extensions_show_progress_and_honour_the_net_flags(capsys, monkeypatch):
    monkeypatch.setattr(verify_cli, "HIDDEN_ACTIVATIONS", ("tanh",))
    monkeypatch.setattr(
        verify_cli, "OUTPUT_LOSS_PAIRS", (("identity", "mse"), ("softmax", "cross_entropy"))
    )
    status, out, err = run(["verify", "--extensions"], capsys)
    assert status == 0, out
    assert err.splitlines()[0].startswith("manualbp verify --extensions: 2 nets")
    assert [line.split()[:4] for line in err.splitlines()[1:]] == [
        ["verify", "--extensions", "1/2", "ok"],
        ["verify", "--extensions", "2/2", "ok"],
    ]
    argv = ["verify", "--extensions", "--sizes", "3,4,2", "--hidden", "relu", "--batch-size", "5"]
    status, out, err = run(argv, capsys)
    assert status == 0 and "relu → identity + mse" in out and "PASSED: 1 of 1" in out


# --- Ctrl-C: one line and 130 in every phase, from the installed command's launcher -----------

LAUNCHER = [sys.executable, "-m", "manualbp_cli"]
ROOT = Path(__file__).resolve().parent.parent


def _interrupt(argv, when) -> tuple[int, str]:
    """Start ``manualbp argv``, send SIGINT once ``when(a stdout line)`` holds (None: soon).

    Returns (exit status, stderr).
    """
    import signal
    import subprocess
    import time

    process = subprocess.Popen(
        [*LAUNCHER, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if when is None:
        time.sleep(0.3)  # inside `import manualbp`, which loads JAX: seconds
    else:
        for line in process.stdout:
            if when(line):
                break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def test_ctrl_c_while_starting_is_one_line_and_130():
    status, err = _interrupt(["verify", "--sizes", "2,3,2"], None)
    assert status == 130 and err == "manualbp: interrupted while starting\n"


def test_ctrl_c_while_compiling_is_one_line_and_130_never_a_crash(tmp_path):
    """Without the launcher this ended with SIGSEGV (-11) in 3 of 4 tries: the interpreter's
    teardown ran under XLA's compiler threads."""
    argv = ["train", "--dataset", "moons", "--sizes", "2,64,64,64,2", "--epochs", "3"]
    argv += ["--hidden", "tanh,relu,gelu", "--runs-dir", str(tmp_path)]
    status, err = _interrupt(argv, lambda line: "run folder" in line)  # compiling now
    assert status == 130, err
    assert err.strip().splitlines()[-1] == "manualbp train: interrupted"
    assert "Traceback" not in err
    assert run_folders(tmp_path) == []  # the folder held only its config


def test_a_jax_setting_jax_cannot_parse_is_one_line_and_2():
    import subprocess

    done = subprocess.run(
        [*LAUNCHER, "verify"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_DEFAULT_PRNG_IMPL": "bogus"},
    )
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "JAX cannot start", "jax_default_prng_impl")
