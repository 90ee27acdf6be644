"""The CLI's contract with its user: numbers refused where they are parsed (flag, range, value;
exit 2), before any model is built."""
from __future__ import annotations

import json

import pytest

from engine import cli


@pytest.mark.parametrize("argv, message", [
    (["engines", "--input-size", "0"], "argument --input-size: expected an integer >= 32, got 0"),
    (["engines", "--input-size", "-5"], "argument --input-size: expected an integer >= 32, got -5"),
    (["engines", "--model", "densenet121", "--input-size", "7"],
     "argument --input-size: expected an integer >= 32, got 7"),
    (["cuts", "densenet121", "--input-size", "7"], "argument --input-size: expected an integer >= 32, got 7"),
    (["engines", "--seed", "-1"], "argument --seed: expected an integer in 0..4294967295, got -1"),
    (["evaluate", "--model", "m", "--seed", "-1"], "argument --seed: expected an integer in 0..4294967295, got -1"),
    (["fit", "--workers", "-1"], "argument --workers: expected an integer >= 0, got -1"),
    (["featurize", "--out", "s", "--threads", "-1"], "argument --threads: expected an integer >= 1, got -1"),
    (["fit", "--n-components", "0"], "argument --n-components: expected an integer >= 1, got 0"),
    (["fit", "--test-fraction", "1.5"], "argument --test-fraction: expected a number in [0, 1), got 1.5"),
    (["engines", "--batch-size", "x"], "argument --batch-size: expected an integer >= 1, got 'x'"),
    (["report", "--input-size", "8"], "argument --input-size: expected an integer >= 32, got 8"),
])
def test_numbers_are_checked_where_they_are_parsed(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"otl {argv[0]}: error: {message} (see `otl {argv[0]} --help`)"]
    assert cli.main([*argv, "--json"]) == 2
    out = json.loads(capsys.readouterr().out)  # the --json contract holds for usage errors too
    assert out == {"error": message, "command": argv[0]}


@pytest.mark.parametrize("field, value, message", [
    ("input_size", 0, "input_size: expected an integer >= 32, got 0"),
    ("seed", -1, "seed: expected an integer in 0..4294967295, got -1"),
    ("threads", -1, "threads: expected an integer >= 1, got -1"),
    ("batch_size", 0, "batch_size: expected an integer >= 1, got 0"),
])
def test_build_config_checks_the_same_numbers(tmp_path, field, value, message):
    from engine.build import BuildConfig, make_build
    from engine.checks import NumberError

    with pytest.raises(NumberError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_build(BuildConfig(model="resnet18", weights="random", out=str(tmp_path / "b"), **{field: value}))
    assert not (tmp_path / "b").exists()  # refused before anything was written


@pytest.mark.parametrize("field, value, message", [
    ("seed", -1, "seed: expected an integer in 0..4294967295, got -1"),
    ("workers", -1, "workers: expected an integer >= 0, got -1"),
    ("threads", -1, "threads: expected an integer >= 1, got -1"),
    ("folds", 1, "folds: expected an integer >= 2, got 1"),
    ("test_fraction", 1.0, r"test_fraction: expected a number in \[0, 1\), got 1.0"),
])
def test_fit_config_checks_the_same_numbers(field, value, message):
    from engine.checks import NumberError
    from engine.train import FitConfig, fit

    with pytest.raises(NumberError, match=message):
        fit(FitConfig(build="no-such-build", **{field: value}))  # refused before the build is opened


@pytest.mark.parametrize("command", ["featurize", "evaluate", "predict"])
@pytest.mark.parametrize("field, value, message", [
    ("seed", -1, "seed: expected an integer in 0..4294967295, got -1"),
    ("batch_size", 0, "batch_size: expected an integer >= 1, got 0"),
    ("workers", -2, "workers: expected an integer >= 0, got -2"),
    ("threads", 0, "threads: expected an integer >= 1, got 0"),
])
def test_run_configs_check_the_same_numbers(tmp_path, command, field, value, message):
    """featurize, evaluate and predict configs refuse what the CLI refuses, before opening anything."""
    from engine.checks import NumberError
    from engine.evaluate import EvaluateConfig, PredictConfig, evaluate, predict
    from engine.featurize import FeaturizeConfig, featurize

    if command == "predict" and field == "seed":
        pytest.skip("predict has no seed")
    run, cfg = {"featurize": (featurize, lambda **kw: FeaturizeConfig(out=str(tmp_path / "s"), build="none", **kw)),
                "evaluate": (evaluate, lambda **kw: EvaluateConfig(model="none.npz", **kw)),
                "predict": (predict, lambda **kw: PredictConfig(model="none.npz", images=["x.png"], **kw))}[command]
    with pytest.raises(NumberError, match=message):
        run(cfg(**{field: value}))


def test_ridge_memory_is_refused_before_any_row_is_projected(monkeypatch):
    """k = 40,000 components: ten 12.8 GB k x k float64 matrices (5 fold Grams, their total, the
    solve's four) cannot fit in 8 GiB; the refusal comes before the projection matrix is drawn."""
    import numpy as np

    from engine import ridge_training
    from engine.classifier import TransferClassifier

    monkeypatch.setattr(ridge_training, "_available_ram", lambda: 8 << 30)
    X, y = np.random.default_rng(0).random((40, 16), dtype=np.float32), np.arange(40) % 2
    clf = TransferClassifier(n_components=40_000, encoder="threshold:0.5")
    with pytest.raises(MemoryError, match=r"ridge on k = 40000 optical components needs about 11\d\.\d GiB "
                                          r"\(6 k x k float64 statistics.*more than the 8.0 GiB free; use fewer "
                                          r"--n-components \(at most about 10,36\d here\)"):
        clf.fit(X, y)
    assert clf.projection_.n_features_ is None  # nothing drawn, nothing projected
    TransferClassifier(n_components=64, encoder="threshold:0.5").fit(X, y)  # 64: well within 8 GiB


def test_the_ridge_estimate_covers_what_a_fit_allocates():
    """Every k x k float64 array the fit's statistics hold is in the estimate (5 folds + total)."""
    import numpy as np

    from kernels.ridge import ridge_memory_bytes
    from kernels.selection import FoldedNormalEquations

    k, rng = 50, np.random.default_rng(0)
    ne = FoldedNormalEquations(5, keep_raw_bytes=0)
    for _ in range(4):
        ne.update(rng.random((20, k), dtype=np.float32), np.sign(rng.standard_normal((20, 2))))
    held = sum(f.G.nbytes for f in ne._folds) + ne.total().G.nbytes
    solve = 4 * 8 * (k + 1) ** 2  # the centered Gram, the regularized copy, its factor, eigh's vectors
    assert held <= ridge_memory_bytes(k, 2, n_grams=6) - solve


def test_json_stdout_is_exactly_one_object_whatever_the_command_prints(monkeypatch, capfd):
    """torch.hub prints "Downloading: ..." on stdout; C libraries write to fd 1 directly or through
    stdio's buffer."""
    import ctypes
    import os
    import subprocess

    from engine.cli import build_commands

    def noisy(_args):
        print("Downloading: https://download.pytorch.org/models/x.pth")
        os.write(1, b"a C library writing to fd 1\n")
        ctypes.CDLL(None).printf(b"C stdio, still in its buffer when the command returns\n")
        subprocess.run(["echo", "a child process"], check=True)
        return {"ok": True}

    monkeypatch.setattr(build_commands, "run_cuts", noisy)
    assert cli.main(["cuts", "densenet121", "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["ok"] is True and out.count("\n") == 1
    assert "Downloading:" in err and "a C library" in err and "a child process" in err and "C stdio" in err


def test_quiet_hides_warnings_but_not_skipped_images(monkeypatch):
    import warnings

    from engine.cli import build_commands
    from engine.data.errors import DataWarning

    def warns(_args):
        warnings.warn("some library's deprecation", DeprecationWarning)
        warnings.warn("skipped 3 unreadable images", DataWarning)
        return {}

    monkeypatch.setattr(build_commands, "run_engines", warns)
    with warnings.catch_warnings(record=True) as shown:  # main's filters apply; the record is what is shown
        assert cli.main(["engines", "--quiet"]) == 0
    assert [(w.category, str(w.message)) for w in shown] == [(DataWarning, "skipped 3 unreadable images")]


@pytest.mark.parametrize("make, kind", [(lambda p: p.write_text("not a model\n"), "a text file"),
                                        (lambda p: p.mkdir(), "a directory")])
def test_a_model_that_is_not_an_npz_says_what_it_is(tmp_path, capsys, make, kind):
    model = tmp_path / "m.npz"
    make(model)
    assert cli.main(["predict", "--model", str(model), "a.jpg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"otl predict: error: ModelFileError: model file {model} is {kind}, not an otl model (.npz); "
                   "pass the file `otl fit --out MODEL.npz` wrote"]


def test_int8_tensors_without_amax_are_reported_once_per_build(tmp_path, caplog):
    """A build quantizes one trial model per refinement candidate: it used to log the tensors kept
    in fp32 for each of them (186 times with --refine-images 8)."""
    import dataclasses

    import torch

    from calibration import calibrate, refine_amax, write_qdq_models
    from engine.export import export_onnx

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
                                 torch.nn.ReLU(), torch.nn.Flatten(1)).eval()
    onnx_file = export_onnx(module, tmp_path / "m.onnx", 8)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    res = calibrate(module, [x], str(onnx_file), num_images=16, progress=False)
    kept = sorted(res.amax)[0]  # as --keep-fp32 does: a tensor without amax stays fp32
    res = dataclasses.replace(res, amax={t: a for t, a in res.amax.items() if t != kept})
    with caplog.at_level("WARNING", logger="calibration"):
        amax, rep = refine_amax(str(onnx_file), res, x.numpy(), threads=1, progress=False)
        write_qdq_models(str(onnx_file), dataclasses.replace(res, amax=amax), tmp_path)
    assert rep.trials > 1
    said = [r.getMessage() for r in caplog.records if "have no amax" in r.getMessage()]
    assert len(said) == 1 and kept in said[0]


def test_a_closed_stdout_ends_quietly():
    """`otl cuts resnet18 | head`: the reader goes away; no BrokenPipeError traceback, status 141."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    code = ("import sys; from engine.cli import build_commands, main; "
            "build_commands.run_cuts = lambda a: print('row\\n' * 100_000) or {}; sys.exit(main(['cuts', 'resnet18']))")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    p.stdout.close()  # the reader exits before the first line
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == ""


@pytest.mark.parametrize("where", ["parse", "command"])
def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys, where):
    from engine.cli import build_commands

    def interrupt(*_):
        raise KeyboardInterrupt

    if where == "parse":
        monkeypatch.setattr(cli, "build_parser", interrupt)
    else:
        monkeypatch.setattr(build_commands, "run_cuts", interrupt)
    assert cli.main(["cuts", "resnet18"]) == 130
    err = capsys.readouterr().err
    assert err == ("otl: interrupted\n" if where == "parse" else "otl cuts: error: interrupted\n")


def test_engines_offers_only_the_backends_it_can_build(capsys):
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    backend = next(a for a in sub.choices["engines"]._actions if a.dest == "backend")
    assert "torch" not in backend.help and "onnxruntime" in backend.help
    assert cli.main(["engines", "--backend", "torch"]) == 2
    assert "argument --backend: invalid choice: 'torch'" in capsys.readouterr().err


def test_fit_json_counts_the_test_images(tiny_engine, tmp_path, capsys):
    """n_test: the images the test accuracy was measured on (all of test/ here)."""
    from PIL import Image

    for split, n in (("train", 6), ("test", 3)):
        for c, color in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), tuple(v + 9 * i for v in color)).save(tmp_path / split / c / f"{i}.png")
    res, _ = tiny_engine
    assert cli.main(["fit", "--build", res["build_dir"], "--data", str(tmp_path), "--n-components", "64", "--projection", "sim",
                     "--alphas", "1e3", "--json", "--quiet", "--workers", "0", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_train"], out["n_test"]) == (12, 6) and out["test_accuracy"] is not None


def test_progress_goes_to_stderr_and_quiet_hides_it(tmp_path, capsys):
    """ONNX export, the ridge solve and reading a feature store draw bars on stderr, never stdout."""
    import numpy as np
    import torch

    from engine import train
    from engine.classifier import TransferClassifier
    from engine.export import export_onnx

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(1)).eval()
    export_onnx(module, tmp_path / "m.onnx", 8, progress=True)
    clf = TransferClassifier(n_components=32, encoder="threshold:0.5", alphas=[1.0, 10.0])
    clf.progress = True
    X = np.random.default_rng(0).random((20, 8), dtype=np.float32)
    clf.fit(X, np.arange(20) % 2)
    rows = list(train._counted(iter([(X[:12], np.zeros(12)), (X[12:], np.zeros(8))]), 20, "fit: train (store)", True))
    out, err = capsys.readouterr()
    assert out == "" and len(rows) == 2
    for shown in ("export onnx: 100%", "ridge: choose alpha: 100%", "ridge: solve: 100%", "fit: train (store): 100%"):
        assert shown in err
    clf.progress = False
    clf.fit(X, np.arange(20) % 2)
    assert capsys.readouterr() == ("", "")
