"""CLI for training: `otl fit`, `otl evaluate`, `otl predict` (registered by engine.cli)."""
from __future__ import annotations

from engine.classifier import REFERENCE_ALPHAS


def _alphas(text: str) -> tuple:
    try:
        return tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise ValueError(f"--alphas {text!r}: expected comma-separated numbers, e.g. 1e3,3e3,1e4") from None


def cmd_fit(a) -> dict:
    from engine.train import FitConfig, fit

    cfg = FitConfig(engine=a.engine, features=a.features, data=a.data, n_components=a.n_components,
                    encode=a.encode, alphas=_alphas(a.alphas), projection=a.projection, seed=a.seed,
                    fit_intercept=not a.no_intercept, matrix_dtype=a.matrix_dtype, camera_bits=a.camera_bits,
                    test_fraction=a.test_fraction, validation_fraction=a.validation_fraction or 0.1,
                    batch_size=a.batch_size, workers=a.workers, threads=a.threads, strict=a.strict,
                    progress=False if a.quiet else None, out=a.out)
    _, res = fit(cfg)
    if not a.json:
        acc = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
        print(f"trained on {res['n_train']} images, {len(res['classes'])} classes, "
              f"{res['n_components'] or 'no'} optical components, alpha {res['alpha']:g} "
              f"(chosen on {res['validation_source']})")
        print(f"  validation accuracy {acc(res['validation_accuracy'])}, test accuracy {acc(res['test_accuracy'])}")
        print(f"  solver: {res['solver']}")
        print("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in res["timings"].items()))
        if a.out:
            print(f"  model: {a.out}")
    return res


def cmd_evaluate(a) -> dict:
    from engine.train import evaluate

    res = evaluate(a.model, a.data, engine=a.engine, batch_size=a.batch_size, workers=a.workers,
                   threads=a.threads, seed=a.seed, test_fraction=a.test_fraction, strict=a.strict,
                   progress=False if a.quiet else None, split=a.split)
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
    f.add_argument("--encode", default=None, help="sign | threshold:T (default: sign, or a bit store's own)")
    f.add_argument("--alphas", default=",".join(f"{x:g}" for x in REFERENCE_ALPHAS),
                   help="ridge alphas, comma-separated (default: the reference's 15-value grid)")
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
    common(e)
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files with a saved model")
    p.add_argument("--model", required=True)
    p.add_argument("--engine", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("images", nargs="+")
    common(p)
    p.set_defaults(func=cmd_predict)
