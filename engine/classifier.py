"""TransferClassifier: binarize -> optical random features -> streaming ridge (or the logistic head),
scikit-learn style.

    clf = TransferClassifier(n_components=4000).fit(X, y, X_val=Xv, y_val=yv)   # X: (n, F) features
    clf.predict(X_test); clf.score(X_test, y_test)

`fit_stream` takes iterables of (features, labels) batches so a dataset never has to fit in memory:
with the ridge head the only state that grows with the data is the (k, k) normal equations; the
logistic head (head="logistic", or "auto" while they fit) keeps the projected rows, within the
same budget as exact leave-one-out (engine/logistic_training.py). Fitted attributes end in
`_`. `state()` / `from_state()` give and take (JSON-able metadata, arrays), everything needed to
predict; engine/model_file.py writes them as one .npz file (no pickle).
"""
from __future__ import annotations

import numpy as np

from engine.model_file import classifier_from_state, classifier_state
from engine.timing import Timings
from kernels.xp import check_finite, get_array_module, to_host

# The reference's grid: mantissas 1, 3, 5, 7, 9 times 10^3 .. 10^5.
REFERENCE_ALPHAS = tuple(float(m * 10 ** e) for e in (3, 4, 5) for m in (1, 3, 5, 7, 9))
PROJECTIONS = ("sim", "lightonml", "none")

__all__ = ["REFERENCE_ALPHAS", "PROJECTIONS", "EncoderWarning", "make_projection", "TransferClassifier"]


class EncoderWarning(UserWarning):
    """An encoder that throws the features' information away (e.g. sign on non-negative features)."""


def make_projection(kind: str, n_components: int, seed: int, **options):
    from kernels.lightonml import LightOnOPU
    from kernels.projection import SimulatedOPU

    if kind not in PROJECTIONS:
        raise ValueError(f"unknown projection {kind!r}; expected one of {', '.join(PROJECTIONS)}")
    if kind != "none" and (not isinstance(n_components, (int, np.integer)) or n_components <= 0):
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    if kind == "sim":
        return SimulatedOPU(int(n_components), seed=seed, **options)
    if kind == "lightonml":
        return LightOnOPU(int(n_components), seed=seed)
    return None


class TransferClassifier:
    # Engine batches are small (32); a projection call streams the whole random matrix and a Gram
    # update makes several k x k passes whatever the row count, so rows are gathered into blocks.
    project_rows = 1024  # bits per projection call (bounded: rows x input features bytes)
    accumulate_rows = 4096  # projected rows per normal-equation update

    # Exact LOO keeps the projected training rows: up to this many, within this many bytes (or a
    # quarter of free RAM). Past it K-fold takes over; see docs/architecture.md for the costs.
    # (Class attributes, read by engine/ridge_training.py; set on an instance to change them.)
    loo_max_rows = 20_000
    loo_max_bytes = 2 << 30

    def __init__(self, n_components: int = 4000, encoder: str = "sign", alphas="auto",
                 projection: str = "sim", seed: int = 0, fit_intercept: bool = True, solver: str = "auto",
                 matrix_dtype: str = "int8", camera_bits: int | None = None, select: str = "auto",
                 folds: int = 5, refit_validation: bool = True, head: str = "ridge"):
        self.n_components, self.encoder, self.alphas = n_components, encoder, alphas
        self.head = head
        self.projection, self.seed, self.fit_intercept, self.solver = projection, seed, fit_intercept, solver
        self.matrix_dtype, self.camera_bits = matrix_dtype, camera_bits
        self.select, self.folds, self.refit_validation = select, folds, refit_validation
        self.timings_ = Timings()

    # ------------------------------------------------------------------ feature path
    def _setup(self):
        from kernels.encode import parse_encoder
        from engine.logistic_training import check_head
        from kernels.solvers import check_alphas

        check_head(self.head)
        self.alphas_ = None if isinstance(self.alphas, str) else check_alphas(self.alphas)
        self._grid_or_none()  # validates a string grid name
        if int(self.folds) < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds!r}")
        self.encoder_ = parse_encoder(self.encoder)
        if not self.encoder_.binary and self.projection != "none":
            raise ValueError(f"encoder 'none' passes float features on, but the {self.projection} projection "
                             "takes bits; use --projection none (ridge on the features) or a binary encoder")
        opts = {}
        if self.projection == "sim":
            opts = {"matrix_dtype": self.matrix_dtype, "camera_bits": self.camera_bits}
        self.projection_ = make_projection(self.projection, self.n_components, self.seed, **opts)

    def encode(self, X):
        """(n, F) float features -> (n, F * bits per feature) uint8 bits (float32 for encoder none)."""
        with self.timings_("encode"):
            check_finite(X, "featurization (engine output)")
            return self.encoder_(X)

    def _fit_encoder(self, batches, encoded: bool):
        """Batches, with a fitted encoder's thresholds learnt from their first rows on the way."""
        from kernels.encode import fit_on_first_rows

        if encoded or self.encoder_.fitted:
            return batches
        return fit_on_first_rows(self.encoder_, batches)

    def _check_bits(self, bits) -> None:
        """Warn when the encoder makes (almost) every feature constant: sign on non-negative features."""
        import warnings

        if not self.encoder_.binary or len(bits) < 8:
            return
        xp = get_array_module(bits)
        constant = float(xp.mean(xp.all(bits == bits[:1], axis=0)))
        if constant > 0.9:
            warnings.warn(
                f"encoder {self.encoder_.spec} gives the same bit to every training row on {constant:.0%} of the "
                "features (non-negative features, e.g. a pooled ReLU output, are all > 0): those bits carry no "
                "information. Use --encode threshold:median or thresholds:Q", EncoderWarning, stacklevel=3)

    def project(self, bits):
        """(n, F) bits -> (n, k) float32 optical features (bits as float32 when projection='none')."""
        if self.projection_ is None:
            return bits.astype(np.float32, copy=False)
        with self.timings_("project"):
            if getattr(self.projection_, "n_features_", None) is None:
                self.projection_.fit(bits.shape[1])
            Y = self.projection_.transform(bits)
            check_finite(Y, "projection")
        return Y

    def transform(self, X, encoded: bool = False):
        """(n, F) features (or 0/1 bits when encoded) -> (n, k) float32 projected features."""
        return self.project(X if encoded else self.encode(X))

    def project_stream(self, batches, encoded: bool = False, check: bool = False):
        """(features, labels) batches -> (projected, labels) blocks of >= project_rows rows.

        Bits are gathered before projecting: each projection call streams the whole random matrix
        through the GEMM, so 32-row engine batches would pay for it 32 times more often.
        check: warn once if the first block's bits are constant (see _check_bits).
        """
        bits = ((X if encoded else self.encode(X), y) for X, y in batches)
        for B, y in _rebatch(bits, self.project_rows):
            if check:
                self._check_bits(B)
                check = False
            yield self.project(B), y

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y, X_val=None, y_val=None, batch_size: int = 1024, encoded: bool = False):
        """Arrays in memory: X (n, F) float features (or bits), y (n,) class indices or names."""
        classes, y_idx = np.unique(np.asarray(y), return_inverse=True)
        val = None
        if X_val is not None:
            val = [(X_val[i:i + batch_size], _indices(classes, y_val[i:i + batch_size]))
                   for i in range(0, len(X_val), batch_size)]
        train = ((X[i:i + batch_size], y_idx[i:i + batch_size]) for i in range(0, len(X), batch_size))
        return self.fit_stream(train, classes=list(classes), validation=val, encoded=encoded)

    def fit_stream(self, batches, classes: list, validation=None, encoded: bool = False):
        """One pass over (features, labels) batches; labels are indices into `classes`.

        batches, validation: iterables of (X, y): X float (b, F) features, or 0/1 uint8 bits when
        `encoded`; y int (b,). Alpha is chosen as `select` says (engine/ridge_training.py):
        "holdout" on the `validation` batches, "loo" (exact leave-one-out) or "kfold" on the
        training rows themselves; "auto" is holdout when validation batches are given, else LOO
        while the rows fit in memory, else K-fold. A grid of one alpha skips the selection. The
        final model is then solved on every row: training plus validation when refit_validation.
        Raises ValueError for fewer than 2 classes or no training rows, SelectionError for
        select="holdout" without validation rows.

        head: "ridge" as above; "logistic" keeps the rows and chooses alpha by K-fold on them (or
        holdout, as above; "loo" is refused), MemoryError past the row budget; "auto" fits both
        and keeps the one with the better held-out accuracy at its chosen alpha (ties: ridge),
        ridge alone once the rows pass the budget, with select="loo", or with a given alpha grid
        (numbers or "reference" are ridge's). Ridge's K-fold (select="kfold") scores squared error
        only, so there auto has no ridge accuracy to compare and keeps the logistic head.
        """
        from engine.logistic_training import LogisticTrainer, RowsDoNotFit
        from engine.ridge_training import RidgeTrainer

        self._setup()
        t = self.timings_
        self.classes_ = list(classes)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least 2 classes to train a classifier, got {self.classes_}")
        has_val = validation is not None
        # auto: both heads, unless the grid given is ridge's (numbers or "reference") or --select loo
        lt = LogisticTrainer(self, has_val) if self.head == "logistic" or (
            self.head == "auto" and self.select != "loo" and self.alphas == "auto") else None
        trainer = RidgeTrainer(self, has_val) if self.head in ("ridge", "auto") else None
        batches = self._fit_encoder(batches, encoded)
        for Y, y in _rebatch(self.project_stream(batches, encoded, check=not encoded), self.accumulate_rows):
            y = _asint(y, Y)
            if trainer is not None:
                with t("solve"):
                    trainer.add(Y, y)
            if lt is not None:
                try:
                    lt.add(Y, y)
                except RowsDoNotFit as full:
                    if trainer is None:
                        raise MemoryError(
                            f"the logistic head keeps the training rows in memory: {full.n:,} rows of "
                            f"{Y.shape[1]:,} features ({full.nbytes / 2**30:.2f} GiB) passed its limit of "
                            f"{self.loo_max_rows or 0:,} rows or {lt.max_bytes / 2**30:.2f} GiB; use --head ridge "
                            "(streamed, any number of rows) or --head auto") from None
                    lt = None  # the ridge head has every row
        n = trainer.train.n if trainer is not None else lt.n
        if n == 0:
            raise ValueError("no training samples: the training split is empty")
        holdouts = [h for h in (trainer, lt) if h is not None and h.holdout]
        if holdouts:
            for Y, y in self.project_stream(validation, encoded):
                y = _asint(y, Y)
                for h in holdouts:
                    h.add_validation(Y, y)
        progress = getattr(self, "progress", None)
        sel_r = sel_l = None
        with t("select_alpha"):
            if trainer is not None:
                sel_r = trainer.select()
            if lt is not None:
                sel_l = lt.select(progress)
        self.head_scores_ = None
        if trainer is not None and lt is not None:
            self.head_scores_ = {"ridge": _best_accuracy(sel_r), "logistic": _best_accuracy(sel_l),
                                 "method": sel_l.method if sel_l is not None else None}
            scores = self.head_scores_
            keep_logistic = scores["ridge"] is None or (scores["logistic"] or 0.0) > scores["ridge"]
            trainer, lt = (None, lt) if keep_logistic else (trainer, None)
        if lt is not None:
            with t("solve"):
                self.coef_, self.intercept_, self.alpha_, self.solver_, self.n_final_ = lt.final(sel_l, progress)
            self.head_, self.selection_ = "logistic", sel_l
            self.n_train_, self.n_validation_ = lt.n, lt.n_validation
            return self._fitted(sel_l)
        self.head_, sel = "ridge", sel_r
        self.selection_ = sel
        self.alpha_ = sel.alpha if sel is not None else float(self._grid_or_none()[0])
        with t("solve"):
            self.coef_, self.intercept_, final = trainer.final_solve(self.alpha_)
        self.n_train_, self.n_validation_, self.n_final_ = trainer.train.n, trainer.n_validation, trainer.n_final
        self.solver_ = (f"select={sel.solver}; " if sel is not None else "") + f"final={final}"
        return self._fitted(sel)

    def _fitted(self, sel):
        """The attributes both heads set from their selection and weights."""
        self.validation_accuracy_ = None
        if sel is not None and sel.method == "holdout":
            self.validation_accuracy_ = _best_accuracy(sel)
            self.validation_scores_ = dict(zip(map(float, sel.alphas), map(float, sel.accuracy)))
        self.n_features_in_ = getattr(self.projection_, "n_features_", None) or self.coef_.shape[0]
        return self

    def _grid_or_none(self):
        """The given grid (an array), or None for the relative grid (alphas="auto")."""
        if isinstance(self.alphas, str):
            if self.alphas == "auto":
                return None
            if self.alphas == "reference":
                return np.asarray(REFERENCE_ALPHAS)
            raise ValueError(f"alphas {self.alphas!r}: expected 'auto', 'reference' or a list of numbers")
        return self.alphas_

    # ------------------------------------------------------------------ prediction
    def decision_function(self, X, encoded: bool = False):
        from kernels.ridge import predict_scores

        Y = self.transform(X, encoded)
        return predict_scores(Y, self.coef_, self.intercept_)

    def predict_indices(self, X, encoded: bool = False):
        xp = get_array_module(X)
        return xp.argmax(self.decision_function(X, encoded), axis=1)

    def predict_stream(self, batches, encoded: bool = False):
        """(features, labels) batches -> (predicted class indices, labels) blocks."""
        from kernels.ridge import predict_scores

        for Y, y in self.project_stream(batches, encoded):
            xp = get_array_module(Y)
            yield xp.argmax(predict_scores(Y, self.coef_, self.intercept_), axis=1), y

    def predict(self, X, encoded: bool = False):
        idx = to_host(self.predict_indices(X, encoded))
        return np.asarray(self.classes_, dtype=object)[idx]

    def score(self, X, y, encoded: bool = False) -> float:
        return float(np.mean(self.predict(X, encoded) == np.asarray(y, dtype=object)))

    # ------------------------------------------------------------------ persistence
    def state(self) -> tuple[dict, dict]:
        """(JSON-able metadata, arrays) holding everything needed to predict (engine/model_file.py)."""
        return classifier_state(self)

    @classmethod
    def from_state(cls, meta: dict, arrays: dict) -> "TransferClassifier":
        return classifier_from_state(cls, meta, arrays)


def _best_accuracy(sel):
    """The held-out accuracy at the chosen alpha, or None (no selection, or one by squared error)."""
    if sel is None or sel.accuracy is None:
        return None
    return float(sel.accuracy[sel.best])


def _rebatch(pairs, rows: int):
    """Concatenate (Y, y) batches into blocks of >= `rows` rows (the last may be smaller)."""
    buf, have = [], 0
    for Y, y in pairs:
        buf.append((Y, y))
        have += len(y)
        if have >= rows:
            yield _concat(buf)
            buf, have = [], 0
    if buf:
        yield _concat(buf)


def _concat(buf):
    if len(buf) == 1:
        return buf[0]
    xp = get_array_module(buf[0][0])
    return xp.concatenate([b[0] for b in buf]), xp.concatenate([xp.asarray(b[1]) for b in buf])


def _indices(classes, y):
    y = np.asarray(y)
    idx = np.searchsorted(classes, y)
    bad = (idx >= len(classes)) | (np.asarray(classes)[np.minimum(idx, len(classes) - 1)] != y)
    if bad.any():
        raise ValueError(f"classes {sorted(set(y[bad].tolist()))} were never seen in training "
                         f"(training classes: {list(classes)})")
    return idx


def _asint(y, like):
    xp = get_array_module(like)
    return xp.asarray(y, dtype=xp.int64)

