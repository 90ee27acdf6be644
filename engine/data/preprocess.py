"""Decoding and preprocessing: any image file -> RGB PIL image -> float32 (3, H, W), as torchvision does it.

    load_rgb(path)      decode, EXIF orientation applied, any PIL mode -> RGB (to_rgb)
    Preprocess(...)(im) the backbone's own resize / center crop / normalize
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from engine.data.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("crop", "squash")


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to resize_size, center crop crop_size, scale to [0, 1], normalize.

    resize="squash" is the reference's Resize((crop_size, crop_size)) instead: the whole image,
    aspect ratio not kept, no crop (resize_size is then unused).
    """

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # "bilinear" | "bicubic"
    resize: str = "crop"  # "crop" (torchvision's weights transforms) | "squash" (the reference)

    def __post_init__(self):
        object.__setattr__(self, "resize_size", int(self.resize_size))
        object.__setattr__(self, "crop_size", int(self.crop_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not (self.resize_size > 0 and self.crop_size > 0):
            raise DataError(f"Preprocess sizes must be positive, got resize_size={self.resize_size}, "
                            f"crop_size={self.crop_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise DataError(f"Preprocess needs 3 means and 3 positive stds (RGB), got mean={self.mean}, "
                            f"std={self.std}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise DataError(f"Preprocess interpolation {self.interpolation!r} is not supported; "
                            "expected 'bilinear' or 'bicubic'")
        if self.resize not in RESIZE_MODES:
            raise DataError(f"resize {self.resize!r} is not supported; expected one of {', '.join(RESIZE_MODES)} "
                            "(crop: shorter side + center crop, torchvision's; squash: the whole image to a square, the reference's)")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["resize"] == "crop":  # the default is left out, so engine keys from before it stay valid
            del d["resize"]
        return {**d, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        names = {f.name for f in fields(cls)}
        if set(d) - names or {"resize_size", "crop_size"} - set(d):
            raise DataError(f"Preprocess.from_dict got keys {sorted(d)}; expected {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_weights_transforms(cls, t) -> Preprocess:
        """From a torchvision weights' `.transforms()` (an ImageClassification preset)."""
        try:
            crop, resize, mean, std = t.crop_size, t.resize_size, t.mean, t.std
            interpolation = getattr(t.interpolation, "value", t.interpolation)
        except AttributeError as e:
            raise DataError(f"cannot read preprocessing from {type(t).__name__} ({e}); expected a torchvision "
                            "ImageClassification preset, e.g. Weights.IMAGENET1K_V1.transforms()") from None
        if getattr(t, "antialias", True) is False:
            raise DataError(f"{type(t).__name__} resizes with antialias=False; only antialiased resizing "
                            "(torchvision's default for weights) is reproduced")
        first = lambda v: int(v[0] if isinstance(v, (list, tuple)) else v)  # noqa: E731
        return cls(first(resize), first(crop), tuple(mean), tuple(std), str(interpolation))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> float32 (3, crop_size, crop_size); same values as torchvision's preset."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        mode = InterpolationMode(self.interpolation)
        if self.resize == "squash":
            image = F.resize(to_rgb(image), [self.crop_size, self.crop_size], mode, antialias=True)
        else:
            image = F.center_crop(F.resize(to_rgb(image), [self.resize_size], mode, antialias=True), [self.crop_size])
        # Same float32 operations in the same order as torchvision: x / 255, then (x - mean) / std,
        # in place on a (3, H, W) copy (7x faster than broadcasting over the (H, W, 3) view).
        x = np.asarray(image).transpose(2, 0, 1).astype(np.float32, order="C")
        x /= np.float32(255)
        x -= np.asarray(self.mean, np.float32)[:, None, None]
        x /= np.asarray(self.std, np.float32)[:, None, None]
        return x


IMAGENET_DEFAULT = Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB.

    Transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited on white, what
    viewers show; dropping alpha would expose whatever colour sits under transparent pixels.
    Integer grayscale (I;16*, I) is read as 16-bit data and scaled by 255/65535 (not clipped);
    float grayscale (F) is taken as [0, 1] when its maximum is <= 1, else as [0, 255].
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        a = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if mode != "F" else (255.0 if a.max(initial=0.0) <= 1.0 else 1.0)
        return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to an RGB PIL image, EXIF orientation applied. Raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'is a folder' if path.is_dir() else 'does not exist'}; expected an image file")
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes); expected an image - remove or replace it")
        with Image.open(path) as im:
            im.load()  # decode now, so truncated or corrupt files fail here
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # a broken EXIF block should not cost the pixels
                pass
            return to_rgb(im)
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, struct.error, ... on bad files
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e}); expected a readable "
                        f"image file - re-save or remove it (it is skipped unless --strict is given)") from e
