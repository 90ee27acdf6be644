"""`otl fit`, `otl evaluate`, `otl predict`: parse -> config -> one API call -> print."""
from __future__ import annotations

import argparse

from engine.cli.args import build_folder_arg, data_args, integer, output_args, parse_alphas, progress, runner_args


def add_fit(sub) -> None:
    f = sub.add_parser("fit", help="train a classifier without backprop (one streaming pass)")
    build_folder_arg(f, "build folder (`otl engines --out`) that featurizes the images (default: none; "
                        "give --build or --features)")
    f.add_argument("--features", default=None,
        help="a feature store (`otl featurize --out`) instead of a build (default: none)")
    data_args(f)
    runner_args(f)
    output_args(f)
    f.add_argument("--n-components", type=integer(1), default=None,
                   help="optical random features, with --projection sim or lightonml (default 4000 there)")
    f.add_argument("--encode", default=None,
                   help="none (floats: only with --projection none) | sign | threshold:T | threshold:median | "
                        "thresholds:Q; default: none with --projection none, threshold:median with a projection, "
                        "or a bit store's own encoder (the reference: sign)")
    f.add_argument("--alphas", default="auto",
                   help="alphas: auto (default; ridge: 25 values, 1e-6..1e2 x tr(G)/k, widened when the best is "
                        "on an edge; logistic: 5 values, 1e-5..1e-1 x the rows' mean squared norm, widened "
                        "likewise) | reference (ridge: the reference's 15 values, 1e3..9e5) | comma-separated "
                        "numbers (ridge's unless --head logistic)")
    f.add_argument("--select", default="auto", choices=["auto", "loo", "kfold", "holdout"],
                   help="how alpha is chosen: auto (default: holdout on validation data when there is some, else "
                        "exact leave-one-out while the rows fit in memory, else K-fold; the logistic head: "
                        "holdout or K-fold) | loo | kfold | holdout (validation/, or --validation-fraction of train, 0.1 if "
                        "not given)")
    f.add_argument("--folds", type=integer(2), default=5,
                   help="K for --select kfold, and for the logistic head's choice of alpha (default 5)")
    f.add_argument("--head", default="auto", choices=["auto", "logistic", "ridge"],
                   help="the classifier: auto (default: both heads, the one with the better held-out accuracy "
                        "at its alpha is kept, ties to ridge; ridge alone when the training rows do not fit in "
                        "memory, with --select loo or given --alphas) | logistic (multinomial logistic "
                        "regression, L-BFGS, alpha by K-fold or holdout) | ridge (the reference's: normal "
                        "equations streamed, any number of rows)")
    f.add_argument("--no-refit-validation", action="store_true",
                   help="fit the final model on train only (default: train + validation rows)")
    f.add_argument("--projection", default="none",  # engine.train.DEFAULT_PROJECTION (not imported: CLI start-up)
                   help="none (default: ridge on the pooled features, the most accurate recipe measured on a "
                        "CPU) | sim (the optical random projection, our simulation) | lightonml (an OPU, or "
                        "lightonml's simulator); the reference: sim or lightonml with --encode sign")
    f.add_argument("--matrix-dtype", default="int8",
                   help="sim: storage of R: int8 (default: a Gaussian on a sigma/16 grid, exact int32 GEMM on "
                        "0/1 inputs) | bfloat16 | float16 | float32")
    f.add_argument("--camera-bits", type=int, choices=(8,), default=None,
                   help="sim: quantize outputs like an 8-bit camera (default: off)")
    f.add_argument("--no-intercept", action="store_true", help="fit without an intercept (default off: with one)")
    f.add_argument("--out", default=None, help="model file to write (.npz; default: not saved)")
    f.set_defaults(func=run_fit)


def run_fit(a: argparse.Namespace) -> dict:
    from engine.train import FitConfig, fit

    if a.n_components is not None and a.projection == "none":
        raise ValueError(f"--n-components {a.n_components} counts optical components, but the projection is none "
                         "(the default: ridge on the features themselves); add --projection sim (or lightonml) "
                         "to project, or drop --n-components")
    cfg = FitConfig(build=a.build, features=a.features, data=a.data, n_components=a.n_components or 4000,
                    encode=a.encode, alphas=parse_alphas(a.alphas), select=a.select, folds=a.folds, head=a.head,
                    refit_validation=not a.no_refit_validation, projection=a.projection, seed=a.seed,
                    fit_intercept=not a.no_intercept, matrix_dtype=a.matrix_dtype, camera_bits=a.camera_bits,
                    test_fraction=a.test_fraction, validation_fraction=a.validation_fraction,
                    batch_size=a.batch_size, workers=a.workers, threads=a.threads, strict=a.strict,
                    progress=progress(a), out=a.out)
    _, res = fit(cfg)
    if not a.json:
        _print_fit(res, a.out)
    return res


def _print_fit(res: dict, out) -> None:
    acc = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    sel = res["selection"] or {}
    how = {"loo": "exact leave-one-out on train", "holdout": f"holdout on {res['validation_source']}"}.get(
        sel.get("method"), sel.get("method", "given") + " on train")
    rows = f"{res['n_train']} train" + (f" + {res['n_validation']} validation" if res["n_final"] > res["n_train"] else "")
    print(f"trained on {res['n_final']} images ({rows}), {len(res['classes'])} classes, "
          + (f"{res['n_components']} optical components" if res["n_components"] else
             "the features themselves (no projection)") + f", {res['head']} head")
    r = res["recipe"]
    size = f" input {r['input_size']}" if r.get("input_size") else ""
    print(f"  recipe: {r['model']} {r['cut']}{size} pool {r['pool']} resize {r['resize']} {r['precision']} -> "
          f"encoder {r['encoder']} -> projection {r['projection']}")
    hs = res.get("head_scores")
    if hs:
        print(f"  head {res['head']}: held-out accuracy ridge {acc(hs['ridge'])}, logistic {acc(hs['logistic'])}")
    print(f"  alpha {res['alpha']:.4g} chosen by {how}"
          + (f" ({len(sel['alphas'])} alphas, {sel['n_scored']} rows scored)" if sel else ""))
    for w in sel.get("warnings", []):
        print(f"  warning: {w}")
    print(f"  validation accuracy {acc(res['validation_accuracy'])}, test accuracy {acc(res['test_accuracy'])}"
          f" on {res['n_test']} images")
    print(f"  solver: {res['solver']}")
    print("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in res["timings"].items()))
    if out:
        print(f"  model: {out}")


def add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="accuracy of a saved model on a dataset split")
    e.add_argument("--model", required=True, help="model file (`otl fit --out`)")
    build_folder_arg(e, "build folder (default: the one recorded in the model)")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"], help="default test")
    data_args(e)
    runner_args(e)
    e.add_argument("--no-split-check", action="store_true",
                   help="score other data than the fit's held-out split (a new test set; default off)")
    output_args(e)
    # The fit's recorded data folder, seed and test fraction unless given.
    e.set_defaults(seed=None, test_fraction=None, func=run_evaluate)
    for action in e._actions:
        if action.dest == "seed":
            action.help = "split seed (default: the fit's)"
        elif action.dest == "test_fraction":
            action.help = "held-out fraction (default: the fit's)"


def run_evaluate(a: argparse.Namespace) -> dict:
    from engine.evaluate import EvaluateConfig, evaluate

    res = evaluate(EvaluateConfig(model=a.model, data=a.data, build=a.build, split=a.split, seed=a.seed,
                                  test_fraction=a.test_fraction, check=not a.no_split_check, strict=a.strict,
                                  batch_size=a.batch_size, workers=a.workers, threads=a.threads,
                                  progress=progress(a)))
    if not a.json:
        b = res["build"]
        skipped = res["skipped_images"]["count"]
        print(f"{res['split']} accuracy {100 * res['accuracy']:.2f} % on {res['n']} images "
              f"({b['model']} {b['cut']} {b['precision']})" + (f", {skipped} skipped" if skipped else ""))
        _print_confusion(res)
    return res


def _print_confusion(res: dict) -> None:
    """Per-class accuracy, then the confusion matrix (rows: true class, columns: predicted)."""
    classes, matrix = res["confusion"]["classes"], res["confusion"]["matrix"]
    width = max(6, *(len(c) for c in classes))
    for c, pc in res["per_class"].items():
        acc = "-" if pc["accuracy"] is None else f"{100 * pc['accuracy']:.2f} %"
        print(f"  {c:<{width}}  {acc:>8} of {pc['n']}")
    print(f"  confusion (rows: true, columns: predicted)\n  {'':<{width}}  " + " ".join(f"{c[:6]:>6}" for c in classes))
    for c, row in zip(classes, matrix):
        print(f"  {c:<{width}}  " + " ".join(f"{v:>6}" for v in row))


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify image files and folders with a saved model")
    p.add_argument("--model", required=True, help="model file (`otl fit --out`)")
    build_folder_arg(p, "build folder (default: the one recorded in the model)")
    runner_args(p)
    p.add_argument("images", nargs="+",
                   help="image files and folders (a folder: its images, recursively; links followed only inside it)")
    p.add_argument("--strict", action="store_true",
                   help="fail on a missing or unreadable image instead of reporting it as an error row (default off)")
    p.add_argument("--batch-size", type=integer(1), default=32, help="images per batch, which bounds memory (default 32)")
    p.add_argument("--workers", type=integer(0), default=None,
                   help="image decoding workers (default: min(4, cores); 0: in this process)")
    output_args(p, seed=False)
    p.add_argument("--seed", type=integer(0), default=0, help=argparse.SUPPRESS)  # accepted for compatibility; unused
    p.epilog = ("Each row: image, class, score (the ridge score of the class) and margin (that score minus the "
                "runner-up's; near 0 the model hesitates); or image and error.")
    p.set_defaults(func=run_predict)


def run_predict(a: argparse.Namespace) -> dict:
    from engine.evaluate import PredictConfig, predict

    rows = predict(PredictConfig(model=a.model, images=a.images, build=a.build, strict=a.strict,
                                 batch_size=a.batch_size, workers=a.workers, threads=a.threads, progress=progress(a)))
    if not a.json:
        for r in rows:
            print(f"{r['image']}\terror: {r['error']}" if "error" in r
                  else f"{r['image']}\t{r['class']}\t{r['score']:.3f}\tmargin {r['margin']:.3f}")
    return {"predictions": rows, "errors": sum("error" in r for r in rows)}
