"""Bad input, space files and flags alike: exit status 2, exactly one line on stderr starting with
``error:``, no traceback, and nothing written to the tracking store or the results folder. Most run
``tuner.run.main`` in this process; a few run the real command in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.conftest import run_cli
from tuner.driver import adopt_started_flags, check_inputs
from tuner.run import main, parse_args

SPACE = """description: a small digits space
dataset: digits
model: convnet
fixed: {depth: 1, width: 8, fc: "16"}
search:
  lr: {loguniform: [1.0e-3, 1.0e-2]}
num_samples: 2
scheduler: {max_epochs: 1}
"""
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "search: *i\n"


def with_fixed(text: str) -> str:
    return SPACE.replace('fixed: {depth: 1, width: 8, fc: "16"}', f'fixed: {{depth: 1, width: 8, fc: "16", {text}}}')


def lr_fixed(value: str) -> str:
    """lr fixed at ``value``, the kernel size searched instead."""
    return with_fixed(f"lr: {value}").replace("lr: {loguniform: [1.0e-3, 1.0e-2]}", "kernel_size: {choice: [3, 5]}")


def with_search(text: str) -> str:
    return SPACE.replace("  lr: {loguniform: [1.0e-3, 1.0e-2]}\n", f"  lr: {{loguniform: [1.0e-3, 1.0e-2]}}\n  {text}\n")


# (case, space file text or None for the default space, extra flags, what the one line says)
SPACE_CASES = [
    ("num_samples .nan", SPACE.replace("num_samples: 2", "num_samples: .nan"), [], "num_samples: nan is not a finite"),
    ("num_samples 1e400", SPACE.replace("num_samples: 2", "num_samples: 1e400"), [], "is not a finite number"),
    ("num_samples 0", SPACE.replace("num_samples: 2", "num_samples: 0"), [], "num_samples must be >= 1"),
    ("val_fraction 1", SPACE + "val_fraction: 1\n", [], "val_fraction must be in (0, 1)"),
    ("val_fraction .nan", SPACE + "val_fraction: .nan\n", [], "is not a finite number"),
    ("cpu .nan", SPACE + "resources: {cpu: .nan}\n", [], "resources.cpu: nan is not a finite"),
    ("cpu 0", SPACE + "resources: {cpu: 0}\n", [], "cpu must be > 0"),
    ("gpu -1", SPACE + "resources: {gpu: -1}\n", [], "gpu must be >= 0"),
    ("gpu .inf", SPACE + "resources: {gpu: .inf}\n", [], "resources.gpu: inf is not a finite"),
    ("max_epochs .nan", SPACE.replace("{max_epochs: 1}", "{max_epochs: .nan}"), [], "scheduler.max_epochs"),
    ("brackets 0", SPACE.replace("{max_epochs: 1}", "{max_epochs: 1, brackets: 0}"), [], "brackets must be in [1, 8]"),
    ("startup_trials -1", SPACE + "searcher: {startup_trials: -1}\n", [], "startup_trials must be >= 0"),
    ("searcher stopped", SPACE + "searcher: {stopped: ignored}\n", [], "searcher.stopped: 'ignored' is not allowed"),
    ("searcher liar", SPACE + "searcher: {constant_liar: 1}\n", [], "searcher.constant_liar: 1 is not allowed"),
    ("searcher key", SPACE + "searcher: {group: true}\n", [], "searcher.group: unknown key"),
    ("searcher sampler", SPACE + "searcher: {sampler: cmaes}\n", [], "searcher.sampler: 'cmaes' is not allowed"),
    ("scheduler quorum", SPACE.replace("{max_epochs: 1}", "{max_epochs: 1, quorum: 2}"), [],
     "scheduler.quorum: 2 is not allowed"),
    ("lr 0", lr_fixed("0"), [], "fixed.lr: 0 is out of range: lr must be > 0"),
    ("lr -0.1", lr_fixed("-0.1"), [], "lr must be > 0"),
    ("batch_size 1", with_fixed("batch_size: 1"), [], "batch_size must be >= 2"),
    ("batch_size 0", with_fixed("batch_size: 0"), [], "batch_size must be >= 2"),
    ("dropout 1", with_fixed("dropout: 1.0"), [], "dropout must be in [0, 1)"),
    ("conv_dropout -0.1", with_fixed("conv_dropout: -0.1"), [], "conv_dropout must be in [0, 1)"),
    ("weight_decay < 0", with_fixed("weight_decay: -0.01"), [], "weight_decay must be >= 0"),
    ("momentum 1.5", with_fixed("momentum: 1.5"), [], "momentum must be in [0, 1]"),
    ("label_smoothing 1", with_fixed("label_smoothing: 1.0"), [], "label_smoothing must be in [0, 1)"),
    ("ema 1", with_fixed("ema: 1.0"), [], "ema must be in [0, 1)"),
    ("patience -1", with_fixed("patience: -1"), [], "patience must be >= 0"),
    ("grad_clip -1", with_fixed("grad_clip: -1.0"), [], "grad_clip must be >= 0"),
    ("warmup_epochs -1", with_fixed("warmup_epochs: -1.0"), [], "warmup_epochs must be >= 0"),
    ("lr_gamma 0", with_fixed("lr_gamma: 0.0"), [], "lr_gamma must be > 0"),
    ("eval_batch_size -1", with_fixed("eval_batch_size: -1"), [], "eval_batch_size must be >= 0"),
    ("fixed lr .nan", lr_fixed(".nan"), [], "fixed.lr: nan is not a finite number"),
    ("fixed lr empty", lr_fixed(""), [], "fixed.lr: has no value"),
    ("fixed lr null", lr_fixed("null"), [], "fixed.lr: has no value"),
    ("depth 0", SPACE.replace("depth: 1", "depth: 0"), [], "depth must be >= 1"),
    ("width 0", SPACE.replace("width: 8", "width: 0"), [], "width must be >= 1"),
    ("NaN bound", SPACE.replace("[1.0e-3, 1.0e-2]", "[.nan, 1.0e-2]"), [], "search.lr: nan is not a finite"),
    ("inf bound", SPACE.replace("[1.0e-3, 1.0e-2]", "[1.0e-3, .inf]"), [], "search.lr: inf is not a finite"),
    ("lr bound 0", SPACE.replace("{loguniform: [1.0e-3, 1.0e-2]}", "{uniform: [0, 0.1]}"), [], "lr must be > 0"),
    ("dropout up to 1", with_search("dropout: {uniform: [0.0, 1.0]}"), [], "search.dropout: 1.0 is out of range"),
    ("batch choice 1", with_search("batch_size: {choice: [1, 32]}"), [], "search.batch_size.choice: 1 is out"),
    ("width int from 0", with_search("kernel_size: {int: [0, 3]}"), [], "kernel_size must be >= 1"),
    ("quniform off q", with_search("dropout: {quniform: [0.05, 0.45, 0.1]}"), [],
     "quniform needs low and high that are multiples of q (0.1), got 0.05"),
    ("qint off q", with_search("batch_size: {qint: [30, 256, 32]}"), [], "multiples of q (32), got 30"),
    ("activation typo", with_search("activation: {choice: [relu, gelo]}"), [],
     "search.activation.choice: 'gelo' is not allowed; use one of: relu, gelu"),
    ("qloguniform", SPACE.replace("{loguniform: [1.0e-3, 1.0e-2]}", "{qloguniform: [1.0e-3, 1.0e-1, 1.0e-3]}"), [],
     "Optuna's samplers cannot quantize a log scale"),
    ("start point", SPACE + "start:\n  - {lr: -1.0}\n", [], "start[0].lr: -1.0 is out of range"),
    ("start point in part", with_search("kernel_size: {choice: [3, 5]}") + "start:\n  - {lr: 0.001}\n", [],
     "start[0]: gives no value of kernel_size; a start point gives every searched key"),
    ("reference .nan", SPACE + "reference:\n  - {test_accuracy: .nan}\n", [], "test_accuracy: nan is not a finite"),
    ("alias", SPACE + "extra: &x 1\n", [], "anchors and aliases (&name, *name) are not allowed"),
    ("alias bomb", BOMB, [], "anchors and aliases"),
    ("nested too deeply", "[" * 50_000 + "]" * 50_000, [], "nested too deeply"),
    ("not UTF-8", SPACE.replace("small", "sm\xe4ll").encode("latin-1"), [], "not UTF-8 text"),
    ("over 1 MB", SPACE + "#" * (1 << 20) + "\n", [], "too large for a space file"),
]
FLAG_CASES = [
    ("--set batch_size=nan", None, ["--set", "batch_size=nan"], "--set batch_size: 'nan' is not a finite number"),
    ("--set width=1e400", None, ["--set", "width=1e400"], "--set width: '1e400' is not a finite number"),
    ("--set lr=-1", None, ["--set", "lr=-1"], "lr must be > 0"),
    ("--set dropout=1", None, ["--set", "dropout=1"], "dropout must be in [0, 1)"),
    ("--set alias", None, ["--set", "fc=*a"], "--set fc:"),
    ("--set lr=", None, ["--set", "lr="], "--set lr: has no value"),
    ("--set fc=64", None, ["--set", "fc=64"], "64 is not a str (write it as text: '64')"),
    ("--set downsample=maxpol", None, ["--set", "downsample=maxpol"], "--set downsample: 'maxpol' is not allowed"),
    ("--grid --num-samples", None, ["--grid", "--num-samples", "3"], "--grid runs each of the 24 combinations"),
    ("--analyze --log-top-k 0", None, ["--analyze", "--log-top-k", "0"], "--analyze reports on the best trial's"),
    ("--gpus-per-trial -0.5", None, ["--gpus-per-trial", "-0.5"], "--gpus-per-trial -0.5 is out of range"),
    ("--gpus-per-trial nan", None, ["--gpus-per-trial", "nan"], "--gpus-per-trial nan is not a finite number"),
    ("--cpus-per-trial 0", None, ["--cpus-per-trial", "0"], "cpus_per_trial must be > 0"),
    ("--cpus-per-trial inf", None, ["--cpus-per-trial", "inf"], "is not a finite number"),
    ("--max-failures -1", None, ["--max-failures", "-1"], "max_failures must be >= 0"),
    ("--seed -1", None, ["--seed", "-1"], "seed must be in [0, 4294967295]"),
    ("--seed 2**32", None, ["--seed", str(2 ** 32)], "seed must be in [0, 4294967295]"),
    ("--log-top-k -1", None, ["--log-top-k", "-1"], "log_top_k must be >= 0"),
    ("--max-concurrent 0", None, ["--max-concurrent", "0"], "max_concurrent must be >= 1"),
    ("--num-samples 0", None, ["--num-samples", "0"], "num_samples must be >= 1"),
    ("--max-epochs 0", None, ["--max-epochs", "0"], "max_epochs must be >= 1"),
    ("--name ../../x", None, ["--name", "../../x"], "--name '../../x' is not allowed"),
    ("--name /abs", None, ["--name", "/tmp/p"], "--name '/tmp/p' is not allowed"),
    ("--name .", None, ["--name", "."], "--name '.' is not allowed"),
    ("--name quote", None, ["--name", "a'b"], "is not allowed: use 1 to 128 letters"),
    ("--experiment ../x", None, ["--experiment", "../x"], "--experiment '../x' is not allowed"),
    ("--experiment quote", None, ["--experiment", "it's"], "--experiment \"it's\" is not allowed"),
    ("--resume without --name", None, ["--resume"], "--resume needs --name"),
]


def check_one_line(code: int, err: str, expected: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert "Traceback" not in err


def args_for(tmp_path, text, flags: list[str]) -> list[str]:
    space = "quickstart"
    if text is not None:
        space = str(tmp_path / "space.yaml")
        (tmp_path / "space.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    name = [] if "--name" in flags or "--resume" in flags else ["--name", "t"]
    return ["--space", space, "--storage-path", str(tmp_path / "rr"), "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}", *name, *flags]


def nothing_written(tmp_path) -> None:
    assert not (tmp_path / "rr").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlflow").exists() and not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize("case,text,flags,expected", SPACE_CASES + FLAG_CASES,
                         ids=[c[0] for c in SPACE_CASES + FLAG_CASES])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, case, text, flags, expected):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = main(args_for(tmp_path, text, flags))
    check_one_line(code, capsys.readouterr().err, expected)
    nothing_written(tmp_path)


def test_an_unwritable_storage_path_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    args = args_for(tmp_path, None, [])
    args[args.index("--storage-path") + 1] = str(tmp_path / "a-file" / "rr")
    check_one_line(main(args), capsys.readouterr().err, "cannot be created")
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("problem", ["group-writable", "world-writable", "another user's"])
def test_a_storage_folder_others_can_write_is_refused(tmp_path, monkeypatch, capsys, problem):
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "rr"
    storage.mkdir(mode=0o755)
    if problem == "another user's":
        if os.geteuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        os.chown(storage, 65534, 65534)
        expected = "belongs to another user"
    else:
        storage.chmod(0o775 if problem == "group-writable" else 0o777)
        expected = "is writable by other users"
    check_one_line(main(args_for(tmp_path, None, [])), capsys.readouterr().err, expected)
    assert list(storage.iterdir()) == [] and not (tmp_path / "mlflow.db").exists()


def test_a_resumed_search_whose_folder_others_can_write_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rr" / "t").mkdir(parents=True, mode=0o755)
    (tmp_path / "rr" / "t").chmod(0o777)
    code = main(args_for(tmp_path, None, ["--name", "t", "--resume"]))
    check_one_line(code, capsys.readouterr().err, "the search's folder")


def test_a_tracking_uri_that_is_not_a_uri_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(args_for(tmp_path, None, ["--tracking-uri", "http://[::1"]))
    check_one_line(code, capsys.readouterr().err, "tracking URI http://[::1 is not a URI")


def test_missing_test_files_are_told_before_the_search(tmp_path, monkeypatch, capsys, data_dir):
    """The test set is read after the trials end; a data dir without it is refused before they start."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for f in (data_dir / "cifar-10-subset" / "cifar-10-batches-py").iterdir():
        if f.name != "test_batch":
            (folder / f.name).symlink_to(f)
    space = SPACE.replace("dataset: digits", "dataset: cifar10")
    code = main(args_for(tmp_path, space, ["--data-dir", str(tmp_path / "data")]))
    check_one_line(code, capsys.readouterr().err, "with test_batch")
    nothing_written(tmp_path)


def test_a_space_file_whose_name_is_not_allowed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my space.yaml").write_text(SPACE)
    args = args_for(tmp_path, None, [])
    args[1] = str(tmp_path / "my space.yaml")
    check_one_line(main(args), capsys.readouterr().err, "'my space' is not allowed")
    nothing_written(tmp_path)


@pytest.mark.parametrize("text,flags,expected", [
    (BOMB, [], "anchors and aliases"),
    (None, ["--set", "width=1e400"], "is not a finite number"),
    (None, ["--gpus-per-trial", "-0.5"], "--gpus-per-trial -0.5 is out of range"),
], ids=["alias bomb", "width 1e400", "negative GPUs"])
def test_the_real_command_says_one_line(tmp_path, text, flags, expected):
    code, _, err = run_cli(*args_for(tmp_path, text, flags), cwd=tmp_path, timeout=120)
    check_one_line(code, err, expected)
    nothing_written(tmp_path)


def started(tmp_path, space=None, **flags) -> None:
    """A search ``t`` in tmp_path/rr that was started with these defining flags (its settings file), and
    with the space file ``space`` when given."""
    folder = tmp_path / "rr" / "t"
    folder.mkdir(parents=True)
    kept = {"space": space.stem, "space_file": str(space),
            "space_sha256": hashlib.sha256(space.read_bytes()).hexdigest()} if space else {}
    (folder / "search_settings.json").write_text(json.dumps({**kept, "flags": {
        "seed": 0, "num_samples": None, "max_epochs": None, "overrides": [], "grid": False, "smoke": False,
        "max_failures": 1, "max_concurrent": None, **flags}}))


def test_resume_takes_the_space_the_search_started_with(tmp_path):
    (tmp_path / "mine.yaml").write_text(SPACE)
    started(tmp_path, space=tmp_path / "mine.yaml", max_failures=3)
    args = parse_args(["--name", "t", "--resume", "--storage-path", str(tmp_path / "rr")])     # no --space
    space, _ = check_inputs(args)
    assert space.path == tmp_path / "mine.yaml" and args.max_failures == 3


def test_resume_without_space_when_its_file_is_gone_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.yaml").write_text(SPACE)              # named like a shipped space
    started(tmp_path, space=tmp_path / "quickstart.yaml")
    (tmp_path / "quickstart.yaml").unlink()
    code = main(["--name", "t", "--resume", "--storage-path", str(tmp_path / "rr")])
    check_one_line(code, capsys.readouterr().err, f"started with the space file {tmp_path}/quickstart.yaml, which is not")


def test_resume_with_an_edited_space_file_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE)
    started(tmp_path, space=tmp_path / "space.yaml")
    settings = (tmp_path / "rr" / "t" / "search_settings.json").read_text()
    edited = SPACE.replace("[1.0e-3, 1.0e-2]", "[1.0e-4, 1.0e-2]")         # the same keys, another range
    code = main(args_for(tmp_path, edited, ["--name", "t", "--resume"]))    # written over space.yaml
    check_one_line(code, capsys.readouterr().err, "search t was started with another text of its space")
    assert (tmp_path / "rr" / "t" / "search_settings.json").read_text() == settings     # nothing rewritten


def test_resume_in_another_experiment_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    started(tmp_path)
    settings = tmp_path / "rr" / "t" / "search_settings.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "experiment": "first"}))
    code = main(args_for(tmp_path, None, ["--name", "t", "--resume", "--experiment", "other"]))
    check_one_line(code, capsys.readouterr().err, "search t logs to experiment first; resume it with that")


def test_the_resume_command_names_a_storage_path_that_is_not_the_default(tmp_path, monkeypatch):
    from tuner.search import SearchOptions, resume_command

    monkeypatch.chdir(tmp_path)
    opts = lambda storage: SearchOptions("t", str(storage), 2, 1, 1, 0)    # noqa: E731
    assert resume_command(opts(tmp_path / "ray_results")) == "python -m tuner.run --resume --name t"
    assert resume_command(opts(tmp_path / "rr")).endswith(f"--name t --storage-path {tmp_path}/rr")


def test_a_grid_runs_each_combination_of_the_choices_once_even_under_smoke():
    from tuner.driver import budget

    args = parse_args(["--grid", "--smoke"])
    space, overrides = check_inputs(args)
    assert budget(args, space, overrides) == (24, 1, 1024)          # widths 3 x growths 2 x kernels 2 x norms 2
    args = parse_args(["--grid", "--set", "width=8"])
    space, overrides = check_inputs(args)
    assert budget(args, space, overrides) == (8, 20, None)          # width fixed: 2 x 2 x 2


def test_resume_takes_the_flags_the_search_started_with(tmp_path):
    started(tmp_path, seed=3, num_samples=4, overrides=["lr=0.01"], grid=True)
    args = parse_args(args_for(tmp_path, None, ["--name", "t", "--resume"]))
    adopt_started_flags(args)
    assert (args.seed, args.num_samples, args.max_epochs, args.overrides, args.grid) == (3, 4, None, ["lr=0.01"], True)
    fresh = parse_args(args_for(tmp_path, None, ["--name", "u"]))
    adopt_started_flags(fresh)
    assert fresh.seed == 0 and fresh.num_samples is None       # a new search: the defaults


@pytest.mark.parametrize("flags, expected", [
    (["--seed", "0"], "search t was started with --seed 3; resume it with the same or without --seed"),
    (["--set", "lr=0.1"], "was started with --set lr=0.01; resume it with the same or without --set"),
    (["--max-epochs", "5"], "search t was started without --max-epochs; resume it without --max-epochs"),
    (["--max-failures", "4"], "search t was started with --max-failures 1; resume it with the same or without"),
    (["--max-concurrent", "2"], "search t was started without --max-concurrent; resume it without --max-concurrent"),
])
def test_resume_with_other_defining_flags_is_refused(tmp_path, monkeypatch, capsys, flags, expected):
    monkeypatch.chdir(tmp_path)
    started(tmp_path, seed=3, overrides=["lr=0.01"])
    code = main(args_for(tmp_path, None, ["--name", "t", "--resume", *flags]))
    check_one_line(code, capsys.readouterr().err, expected)


def test_a_damaged_settings_file_is_one_line_on_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rr" / "t").mkdir(parents=True)
    (tmp_path / "rr" / "t" / "search_settings.json").write_text('{"flags": {"seed": 3')      # cut short
    check_one_line(main(args_for(tmp_path, None, ["--name", "t", "--resume"])), capsys.readouterr().err,
                   "search_settings.json cannot be read (JSONDecodeError)")


def test_a_flag_the_settings_file_lacks_stays_as_given(tmp_path):
    folder = tmp_path / "rr" / "t"
    folder.mkdir(parents=True)
    (folder / "search_settings.json").write_text(json.dumps({"flags": {"seed": 3}}))
    args = parse_args(args_for(tmp_path, None, ["--name", "t", "--resume", "--set", "lr=0.01"]))
    adopt_started_flags(args)
    assert args.seed == 3 and args.overrides == ["lr=0.01"] and args.grid is False


def test_a_search_that_stored_a_relative_sqlite_uri_resumes_with_it(tmp_path, monkeypatch):
    from tuner.driver import tracking_uri_for
    from tuner.search import SearchOptions

    monkeypatch.chdir(tmp_path)
    opts = SearchOptions("t", str(tmp_path / "rr"), 1, 1, 1, 0)
    (opts.outcome_dir / "search_settings.json").write_text(json.dumps({"tracking_uri": "sqlite:///m.db"}))
    args = parse_args(["--name", "t", "--resume", "--tracking-uri", "sqlite:///m.db"])
    assert tracking_uri_for(args, opts) == f"sqlite:///{tmp_path / 'm.db'}"
