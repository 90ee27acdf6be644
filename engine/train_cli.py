"""CLI for training: `otl fit`, `otl evaluate`, `otl predict` (registered by engine.cli)."""
from __future__ import annotations

def _alphas(text: str):
    if text.strip() in ("auto", "reference"):
        return text.strip()
    try:
        return tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise ValueError(f"--alphas {text!r}: expected auto, reference or comma-separated numbers, "
                         "e.g. 1e3,3e3,1e4") from None


def cmd_fit(a) -> dict:
    from engine.train import FitConfig, fit

    cfg = FitConfig(engine=a.engine, features=a.features, data=a.data, n_components=a.n_components,
                    encode=a.encode, alphas=_alphas(a.alphas), select=a.select, folds=a.folds,
                    refit_validation=not a.no_refit_validation, projection=a.projection, seed=a.seed,
                    fit_intercept=not a.no_intercept, matrix_dtype=a.matrix_dtype, camera_bits=a.camera_bits,
                    test_fraction=a.test_fraction, validation_fraction=a.validation_fraction,
                    batch_size=a.batch_size, workers=a.workers, threads=a.threads, strict=a.strict,
                    progress=False if a.quiet else None, out=a.out)
    _, res = fit(cfg)
    if not a.json:
        acc = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
        sel = res["selection"] or {}
        how = {"loo": "exact leave-one-out on train", "holdout": f"holdout on {res['validation_source']}"}.get(
            sel.get("method"), sel.get("method", "given") + " on train")
        rows = f"{res['n_train']} train" + (f" + {res['n_validation']} validation"
                                            if res["n_final"] > res["n_train"] else "")
        print(f"trained on {res['n_final']} images ({rows}), {len(res['classes'])} classes, "
              f"{res['n_components'] or 'no'} optical components")
        r = res["recipe"]
        print(f"  recipe: {r['model']} {r['cut']} pool {r['pool']} resize {r['resize']} {r['precision']} -> "
              f"encoder {r['encoder']} -> projection {r['projection']}")
        print(f"  alpha {res['alpha']:.4g} chosen by {how}"
              + (f" ({len(sel['alphas'])} alphas, {sel['n_scored']} rows scored)" if sel else ""))
        for w in sel.get("warnings", []):
            print(f"  warning: {w}")
        print(f"  validation accuracy {acc(res['validation_accuracy'])}, test accuracy {acc(res['test_accuracy'])}"
              f" on {res['n_test']} images")
        print(f"  solver: {res['solver']}")
        print("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in res["timings"].items()))
        if a.out:
            print(f"  model: {a.out}")
    return res


def cmd_evaluate(a) -> dict:
    from engine.train import evaluate

    res = evaluate(a.model, a.data, engine=a.engine, batch_size=a.batch_size, workers=a.workers,
                   threads=a.threads, seed=a.seed, test_fraction=a.test_fraction, strict=a.strict,
                   progress=False if a.quiet else None, split=a.split, check=not a.no_split_check)
    if not a.json:
        print(f"{res['split']} accuracy {100 * res['accuracy']:.2f} % on {res['n']} images "
              f"({res['engine']['model']} {res['engine']['cut']} {res['engine']['precision']})")
    return res


def cmd_predict(a) -> dict:
    from engine.train import predict_files

    rows = predict_files(a.model, a.images, engine=a.engine, threads=a.threads)
    if not a.json:
        for r in rows:
            print(f"{r['image']}\t{r['class']}\t{r['score']:.3f}")
    return {"predictions": rows}


def register(sub, engine_args, data_args, common) -> None:
    f = sub.add_parser("fit", help="train a classifier without backprop (one streaming pass)")
    f.add_argument("--engine", default=None, help="engine build folder (`otl engines --out`)")
    f.add_argument("--features", default=None, help="a feature store (`otl featurize --out`) instead of an engine")
    data_args(f)
    f.add_argument("--threads", type=int, default=None)
    common(f)
    f.add_argument("--n-components", type=int, default=4000, help="optical random features (default 4000)")
    f.add_argument("--encode", default=None, help="sign | threshold:T | threshold:median | thresholds:Q | none (with --projection none); "
                        "default: threshold:median, or a bit store's own encoder (the reference: sign)")
    f.add_argument("--alphas", default="auto",
                   help="ridge alphas: auto (default: 25 values, 1e-6..1e2 x tr(G)/k, widened when the best is "
                        "on an edge) | reference (the reference's 15 values, 1e3..9e5) | comma-separated numbers")
    f.add_argument("--select", default="auto", choices=["auto", "loo", "kfold", "holdout"],
                   help="how alpha is chosen: auto (default: holdout on validation data when there is some, else "
                        "exact leave-one-out while the rows fit in memory, else K-fold) | loo | kfold | holdout "
                        "(validation/, or --validation-fraction of train, 0.1 if not given)")
    f.add_argument("--folds", type=int, default=5, help="K for --select kfold (default 5)")
    f.add_argument("--no-refit-validation", action="store_true",
                   help="fit the final model on train only (default: train + validation rows)")
    f.add_argument("--projection", default="sim", help="sim (our simulation) | lightonml (OPU or its simulator) | none")
    f.add_argument("--matrix-dtype", default="int8",
                   help="sim: storage of R: int8 (default: a Gaussian on a sigma/16 grid, exact int32 GEMM on "
                        "0/1 inputs) | bfloat16 | float16 | float32")
    f.add_argument("--camera-bits", type=int, default=None, help="sim: quantize outputs like an 8-bit camera")
    f.add_argument("--no-intercept", action="store_true")
    f.add_argument("--out", default=None, help="model file to write (.npz)")
    f.set_defaults(func=cmd_fit)

    e = sub.add_parser("evaluate", help="accuracy of a saved model on a dataset split")
    e.add_argument("--model", required=True)
    e.add_argument("--engine", default=None, help="engine folder (default: the one recorded in the model)")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"])
    data_args(e)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--no-split-check", action="store_true",
                   help="score other data than the fit's held-out split (a new test set)")
    common(e)
    # The fit's recorded data folder, seed and fractions unless given.
    e.set_defaults(seed=None, test_fraction=None)
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files with a saved model")
    p.add_argument("--model", required=True)
    p.add_argument("--engine", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("images", nargs="+")
    common(p)
    p.set_defaults(func=cmd_predict)
