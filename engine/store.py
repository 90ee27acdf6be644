"""Feature store: featurize once, fit many projections and alphas.

A folder with, per split, `<split>.features.bin` (raw rows; training reads them sequentially,
`raw()` maps them) and `<split>.labels.npy`, plus a manifest naming the build that made them (its
key), the format and the encoder.
Formats: `bits` (binarized and bit-packed, k/8 bytes a row: what training consumes), `float16`
and `float32` (raw features, for other encoders or inspection). The folder is written under a
temporary name beside it, under a lock on the target, and swapped in when complete: a half-written
store is never read, and a failed or killed run leaves the previous store as it was.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.artifacts import (ArtifactError, file_entry, inside, read_manifest, staged_folder, target_lock,
                             verify_hashes, write_manifest)
from kernels.xp import to_host

FORMATS = ("bits", "float16", "float32")
THRESHOLDS_FILE = "encoder.thresholds.npy"


def check_request(fmt: str, encoder):
    """The parsed encoder, once `fmt` and it are known to make a store (checked before any work)."""
    from kernels.encode import parse_encoder

    if fmt not in FORMATS:
        raise ValueError(f"unknown feature store format {fmt!r}; expected one of {', '.join(FORMATS)}")
    enc = parse_encoder(encoder)
    if fmt == "bits" and not enc.binary:
        raise ValueError("encoder 'none' makes floats, not bits: write --format float16 or float32 instead")
    return enc


def write_store(path, featurizer, splits: dict, fmt: str = "bits", encoder=None,
                classes: list[str] | None = None, source: dict | None = None, seed: int = 0,
                scan_skipped: list[str] | None = None) -> dict:
    """Featurize each dataset in `splits` ({"train": ds, ...}) into a store at `path`.

    A bits store is encoded on the way; an encoder with fitted thresholds (threshold:median,
    thresholds:Q) learns them from the first rows of train, put in a seeded random order when
    train is larger than the sample (encode.with_sample_first), and saves them in the store.
    Float stores keep the raw features: any encoder can be fitted on them later. The manifest's
    skipped_images counts what the folder scan (`scan_skipped`) and each split's pass dropped.
    """
    from engine.data import skipped_images
    from kernels.encode import DEFAULT_SPEC

    enc = check_request(fmt, DEFAULT_SPEC if encoder is None else encoder)
    fit_encoder = fmt == "bits" and enc.needs_fit and not enc.fitted
    if fit_encoder and splits.get("train") is None:
        raise ValueError(f"encoder {enc.spec} learns its thresholds on the train split, and there is none")
    path = Path(path)
    with target_lock(path, "otl featurize is writing"), staged_folder(path, "otl-feature-store") as tmp:
        split_info, n_features, dropped = {}, None, [scan_skipped or []]
        for name, ds in splits.items():
            if ds is not None:
                fit_here = name == "train" and fit_encoder
                split_info[name], width, skipped = _write_split(tmp, name, ds, featurizer, enc, fmt, fit_here, seed)
                dropped.append(skipped)
                n_features = width if width is not None else n_features  # an empty split has no rows to tell
        files = {f"{name}.{part}": file_entry(tmp / f"{name}.{part}", tmp)
                 for name in split_info for part in ("features.bin", "labels.npy")}
        if fmt == "bits" and enc.thresholds_ is not None:
            np.save(tmp / THRESHOLDS_FILE, enc.thresholds_)
            files[THRESHOLDS_FILE] = file_entry(tmp / THRESHOLDS_FILE, tmp)
        manifest = {
            "kind": "otl-feature-store", "format": fmt, "encoder": enc.to_dict() if fmt == "bits" else None,
            "encoder_stats": enc.stats_ if fmt == "bits" else None, "n_features": n_features,
            "row_bytes": _row_bytes(fmt, n_features), "splits": split_info, "classes": classes,
            "build": featurizer.build.describe() if featurizer.build is not None else None,
            "source": source, "files": files, "skipped_images": skipped_images(*dropped),
        }
        write_manifest(tmp, manifest)
    return manifest


def _write_split(tmp: Path, name: str, ds, featurizer, enc, fmt: str, fit_encoder: bool, seed: int):
    """One split's rows and labels into `tmp`; fits the encoder on the first rows when asked.
    Returns ({"rows": n}, features per row as stored: bits for a bits store, the images the pass
    skipped as "path: why")."""
    from kernels.encode import fit_on_first_rows, packbits, with_sample_first

    if fit_encoder:
        ds = with_sample_first(ds, getattr(featurizer.build, "n_features", None), seed)
    stream = featurizer.featurize(ds, desc=f"featurize {name}")
    if fit_encoder:
        stream = fit_on_first_rows(enc, stream)
    rows, labels, n_features = 0, [], None
    with open(tmp / f"{name}.features.bin", "wb") as f:
        for feats, y in stream:
            feats = to_host(feats)
            n_features = feats.shape[1] * (enc.bits_per_feature() if fmt == "bits" else 1)
            block = to_host(packbits(enc(feats))) if fmt == "bits" else feats.astype(fmt, copy=False)
            f.write(np.ascontiguousarray(block).tobytes())
            labels.append(np.asarray(y, dtype=np.int64))
            rows += len(y)
    np.save(tmp / f"{name}.labels.npy", np.concatenate(labels) if labels else np.zeros(0, np.int64))
    return {"rows": rows}, n_features, list(getattr(ds, "skipped", []))  # bench fakes have none


def _row_bytes(fmt: str, k: int | None) -> int | None:
    if k is None:
        return None
    return (k + 7) // 8 if fmt == "bits" else k * np.dtype(fmt).itemsize



class FeatureStore:
    """Read side: features per split (sequential reads, or a memory map), labels, batch iteration.

    build_key: refuse a store made by another build. verify: check every file's sha256 on open (a
    same-size corrupt file would otherwise train silently); it reads the store once, about 1 ms a
    megabyte, little next to a fit's passes over it."""

    def __init__(self, path, build_key: str | None = None, verify: bool = True):
        self.root = Path(path)
        self.manifest = read_manifest(self.root, "feature store")
        if self.manifest.get("kind") != "otl-feature-store":
            raise ArtifactError(f"{self.root} is not a feature store (manifest kind {self.manifest.get('kind')!r})")
        for split in self.manifest.get("splits", {}):  # its file names are made from the split's name
            inside(self.root, f"{split}.features.bin", f"feature store {self.root} (split {split!r})")
        if verify:
            verify_hashes(self.root, self.manifest)
        made_by = self.build_info
        if build_key is not None and made_by.get("key") != build_key:
            raise ArtifactError(
                f"feature store {self.root} was made by build {made_by.get('build_dir')} (key {str(made_by.get('key'))[:12]}), "
                f"not by the build asked for (key {build_key[:12]}); featurize again with that build"
            )
        self.format = self.manifest["format"]
        self.n_features = self.manifest["n_features"]
        self.classes = self.manifest.get("classes")

    @property
    def build_info(self) -> dict:
        """The describe() of the build that made the features ({} for features from elsewhere);
        stores written before the rename call it "engine"."""
        return self.manifest.get("build") or self.manifest.get("engine") or {}

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def rows(self, split: str) -> int:
        if split not in self.manifest["splits"]:
            raise ArtifactError(f"split {split!r} is not in feature store {self.root}; it has {', '.join(self.splits)}")
        return int(self.manifest["splits"][split]["rows"])

    def raw(self, split: str) -> np.ndarray:
        """The stored rows, memory-mapped: (n, k/8) uint8 for bits, (n, k) float otherwise."""
        n, width, dtype = self.rows(split), self.raw_width, self.raw_dtype
        if n == 0:
            return np.zeros((0, width), dtype)
        return np.memmap(self.root / f"{split}.features.bin", dtype=dtype, mode="r", shape=(n, width))

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.root / f"{split}.labels.npy")

    def encoder(self, requested=None):
        """The encoder a bits store was written with, thresholds loaded; `requested` (a spec) must
        be that one: bits cannot be re-encoded."""
        from kernels.encode import Encoder, parse_encoder

        if self.format != "bits":
            raise ArtifactError(f"store {self.root} holds {self.format} features, not bits: it has no encoder; "
                                "choose one with --encode")
        enc = Encoder.from_dict(self.manifest["encoder"])
        if requested is not None and parse_encoder(requested) != enc:
            raise ArtifactError(
                f"store {self.root} holds bits encoded with {enc.spec}, not {parse_encoder(requested).spec}: bits "
                "cannot be re-encoded. Write a float store (`otl featurize --format float16`) to try other encoders")
        if enc.needs_fit:
            enc.set_thresholds(np.load(self.root / THRESHOLDS_FILE), self.manifest.get("encoder_stats"))
        return enc

    def sample(self, split: str = "train", capacity: int | None = None, seed: int = 0):
        """A uniform sample of a float store's rows (encode.FeatureSample), to fit an encoder on."""
        from kernels.encode import FeatureSample, sample_capacity

        if self.format == "bits":
            raise ArtifactError(f"store {self.root} holds bits: encoder statistics need a float16/float32 store")
        sample = FeatureSample(capacity or sample_capacity(self.n_features), seed=seed)
        for _, block in self._read_blocks(split, 4096):
            sample.add(block)
        return sample

    def iter_batches(self, split: str, batch_size: int = 1024, encoder=None):
        """Yields (X, y): X is (B, k) uint8 bits for a bits store (already encoded: `encoder` must be
        None or the store's own), else float32 features, encoded when a (fitted) encoder is given."""
        from kernels.encode import parse_encoder, unpackbits

        y = self.labels(split)
        if self.format == "bits" and encoder is not None:
            self.encoder(encoder)  # raises unless it is the store's own
        enc = parse_encoder(encoder) if (encoder is not None and self.format != "bits") else None
        for i, block in self._read_blocks(split, batch_size):
            if self.format == "bits":
                block = unpackbits(block, self.n_features)
            else:
                block = block.astype(np.float32)
                if enc is not None:
                    block = enc(block)
            yield block, y[i:i + batch_size]

    def _read_blocks(self, split: str, batch_size: int):
        """Sequential reads into fresh buffers: unlike a memory map, pages already consumed do not
        stay mapped into the process, so a pass over the store runs in O(batch) memory."""
        n, width, dtype = self.rows(split), self.raw_width, self.raw_dtype
        with open(self.root / f"{split}.features.bin", "rb") as f:
            for i in range(0, n, batch_size):
                rows = min(batch_size, n - i)
                block = np.fromfile(f, dtype=dtype, count=rows * width).reshape(rows, width)
                yield i, block

    @property
    def raw_width(self) -> int:
        """Stored values a row: bytes of packed bits, or features."""
        return self.manifest["row_bytes"] if self.format == "bits" else self.n_features

    @property
    def raw_dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.format == "bits" else np.dtype(self.format)

    def describe(self) -> dict:
        return {"path": str(self.root), **{k: self.manifest[k] for k in ("format", "n_features", "splits")},
                "encoder": self.manifest["encoder"], "build": self.build_info.get("key")}
