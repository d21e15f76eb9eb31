"""Synthetic anomalies made in map space from normal maps: the validation set's recipes.

Fung et al. 2023 (arXiv 2310.10461) select anomaly detectors without labelled faults by
injecting synthetic anomalies into held-out normal images. Each recipe here turns one normal
map into an anomalous one and says where it changed it:

- ``noise_band``: a horizontal band of raised amplitude, the HDMAP fault prior (a damaged
  tooth brightens 1-3 rows over part of the columns; ``hdmap_ad.data.synth``, step 5);
- ``cutpaste``: a patch of another normal map (the donor), brightened, pasted at another
  place (Li et al. 2021, CutPaste);
- ``perlin``: a Perlin-noise mask whose pixels get a texture of raised amplitude (Zavrtanik et
  al. 2021, DRAEM's anomaly source, with the map's own values as the texture's base).

Every recipe has a **strength** (contrast), drawn per anomaly from the validation set's
range: the size of the change in units of the map's mean level (a band adds ``strength x
level``; a pasted patch is the donor's times ``1 + strength``; the Perlin texture multiplies
by up to ``1 + strength``). Anomalies that are too obvious rank methods by what they see
easily, not by what real faults need, so the validation set records each anomaly's strength
and measured contrast (``contrast``: mean absolute change inside the mask over the level).

A recipe is pure numpy: ``make(image, donor, strength, options, rng) -> (anomalous, mask)``
on float32 ``(H, W)`` or ``(H, W, C)`` maps, values >= 0 (channels change together).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from hdmap_ad.errors import InputError
from hdmap_ad.options import check_bounds

#: Range fields are ``(low, high)`` pairs, inclusive; ``min``/``max`` bound both ends.
Range = tuple[float, float]


@dataclass(frozen=True)
class NoiseBandOptions:
    rows: tuple[int, int] = field(default=(1, 3), metadata={
        "min": 1, "max": 64, "doc": "band height in rows (HDMAP faults: 1-3)"})
    width: Range = field(default=(0.1, 0.8), metadata={
        "min": 0.01, "max": 1.0, "doc": "band length as a share of the map's columns"})
    position: Range = field(default=(0.0, 1.0), metadata={
        "min": 0.0, "max": 1.0, "doc": "band's top row as a share of the rows it may start on"})


@dataclass(frozen=True)
class CutPasteOptions:
    height: Range = field(default=(0.1, 0.4), metadata={
        "min": 0.01, "max": 1.0, "doc": "patch height as a share of the map's rows"})
    width: Range = field(default=(0.05, 0.3), metadata={
        "min": 0.01, "max": 1.0, "doc": "patch width as a share of the map's columns"})


@dataclass(frozen=True)
class PerlinOptions:
    cell: tuple[int, int] = field(default=(4, 16), metadata={
        "min": 2, "max": 256, "doc": "mask noise lattice cell in pixels (per axis, drawn)"})
    threshold: float = field(default=0.5, metadata={
        "gt": 0.0, "max": 0.95, "doc": "mask where the noise (scaled to [-1, 1]) exceeds this"})
    texture_cell: int = field(default=3, metadata={
        "min": 2, "max": 64, "doc": "texture noise lattice cell in pixels"})


class Recipe:
    """One way of making a synthetic anomaly (see the module docstring)."""

    name: ClassVar[str]
    Options: ClassVar[type]
    summary: ClassVar[str] = ""
    #: whether the recipe reads a donor map (another held-out reference)
    uses_donor: ClassVar[bool] = False

    def make(self, image: np.ndarray, donor: np.ndarray, strength: float, options: Any,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(anomalous float32 like image, mask (H, W) bool)``; ``mask`` is never empty."""
        raise NotImplementedError


def level(image: np.ndarray) -> float:
    """The map's mean level (the unit of strength); a black map counts as level 1e-6."""
    return max(float(np.mean(image)), 1e-6)


def contrast(image: np.ndarray, anomalous: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change inside ``mask`` over the map's level (what a strength made)."""
    diff = np.abs(anomalous.astype(np.float64) - image.astype(np.float64))
    if diff.ndim == 3:
        diff = diff.mean(axis=-1)
    return float(diff[mask].mean() / level(image))


def _draw(rng: np.random.Generator, bounds: Range) -> float:
    lo, hi = bounds
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _span(total: int, share: float) -> int:
    return int(min(total, max(1, round(share * total))))


def _add(image: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``image + delta`` (``delta`` ``(H, W)``, broadcast over channels), clipped at 0."""
    if image.ndim == 3:
        delta = delta[..., None]
    return np.maximum(image + delta, 0.0).astype(np.float32)


class NoiseBand(Recipe):
    name = "noise_band"
    Options = NoiseBandOptions
    summary = "a horizontal band of raised amplitude (the HDMAP fault prior)"

    def make(self, image, donor, strength, options, rng):
        h, w = image.shape[:2]
        rows = int(min(h, rng.integers(options.rows[0], options.rows[1] + 1)))
        cols = _span(w, _draw(rng, options.width))
        r0 = int(round(_draw(rng, options.position) * (h - rows)))
        c0 = int(rng.integers(0, w - cols + 1))
        # the brightest row first, its neighbours 0.5-0.9 of it (as synth's fault rows)
        weights = np.concatenate([[1.0], rng.uniform(0.5, 0.9, rows - 1)])
        rng.shuffle(weights)
        delta = np.zeros((h, w), dtype=np.float64)
        delta[r0 : r0 + rows, c0 : c0 + cols] = weights[:, None]
        mask = delta > 0
        return _add(image, strength * level(image) * delta), mask


class CutPaste(Recipe):
    name = "cutpaste"
    Options = CutPasteOptions
    summary = "a patch of another normal map, brightened, pasted elsewhere (CutPaste)"
    uses_donor = True

    def make(self, image, donor, strength, options, rng):
        h, w = image.shape[:2]
        ph, pw = _span(h, _draw(rng, options.height)), _span(w, _draw(rng, options.width))
        sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        out = image.astype(np.float32, copy=True)
        patch = donor[sy : sy + ph, sx : sx + pw] * (1.0 + strength)
        out[ty : ty + ph, tx : tx + pw] = patch
        mask = np.zeros((h, w), dtype=bool)
        mask[ty : ty + ph, tx : tx + pw] = True
        return np.maximum(out, 0.0).astype(np.float32), mask


def perlin_noise(shape: tuple[int, int], cell: tuple[int, int],
                 rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise ``(H, W)`` float64 on a lattice of ``cell`` pixels (rows,
    columns), any map size (the lattice overhangs the map), roughly in [-1, 1]."""
    h, w = shape
    gy, gx = math.ceil(h / cell[0]) + 1, math.ceil(w / cell[1]) + 1
    angles = rng.uniform(0.0, 2 * math.pi, (gy + 1, gx + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = (np.arange(h) + 0.5) / cell[0]
    x = (np.arange(w) + 0.5) / cell[1]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    y0, x0 = np.floor(yy).astype(int), np.floor(xx).astype(int)
    fy, fx = yy - y0, xx - x0

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grad[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = dot(0, 0) * (1 - ux) + dot(0, 1) * ux
    bottom = dot(1, 0) * (1 - ux) + dot(1, 1) * ux
    return (top * (1 - uy) + bottom * uy) * math.sqrt(2)


class Perlin(Recipe):
    name = "perlin"
    Options = PerlinOptions
    summary = "a Perlin-noise mask whose pixels get a texture of raised amplitude (DRAEM)"

    #: new noise draws before the mask falls back to the noise's top pixels
    TRIES = 8
    #: smallest mask, as a share of the map's pixels
    MIN_AREA = 0.01

    def make(self, image, donor, strength, options, rng):
        h, w = image.shape[:2]
        need = max(1, math.ceil(self.MIN_AREA * h * w))
        for _ in range(self.TRIES):
            cell = (int(rng.integers(options.cell[0], options.cell[1] + 1)),
                    int(rng.integers(options.cell[0], options.cell[1] + 1)))
            noise = perlin_noise((h, w), cell, rng)
            noise /= max(float(np.abs(noise).max()), 1e-12)
            mask = noise > options.threshold
            if mask.sum() >= need:
                break
        else:  # a flat draw: the noise's highest pixels
            mask = noise >= np.sort(noise.ravel())[-need]
        texture = perlin_noise((h, w), (options.texture_cell, options.texture_cell), rng)
        texture = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-12)
        gain = np.where(mask, strength * texture, 0.0)
        if image.ndim == 3:
            gain = gain[..., None]
        return np.maximum(image * (1.0 + gain), 0.0).astype(np.float32), mask


RECIPES: dict[str, Recipe] = {r.name: r for r in (NoiseBand(), CutPaste(), Perlin())}


def get_recipe(name: str, where: str) -> Recipe:
    """The registered recipe called ``name``; an unknown one is an ``InputError``."""
    try:
        return RECIPES[name]
    except KeyError:
        raise InputError(f"{where}: unknown recipe {name!r}; registered: "
                         f"{sorted(RECIPES)}") from None


def _scalar(value: Any, kind: type, where: str) -> float | int:
    ok = (isinstance(value, int) if kind is int else isinstance(value, (int, float)))
    if isinstance(value, bool) or not ok:
        raise InputError(f"{where}: {value!r} is not {'an integer' if kind is int else 'a number'}")
    if kind is float and not math.isfinite(value):
        raise InputError(f"{where}: {value!r} is not a finite number")
    return kind(value)


def _field_kind(f: dataclasses.Field) -> tuple[bool, type]:
    """``(is a range, element type)`` of an options field (from its default)."""
    default = f.default
    if isinstance(default, tuple):
        return True, type(default[0])
    return False, type(default)


def parse_range(value: Any, kind: type, f: dataclasses.Field, where: str) -> tuple:
    """A ``[low, high]`` list (or one number: low = high) as a checked ``(low, high)``."""
    if not isinstance(value, (list, tuple)):
        value = [value, value]
    if len(value) != 2:
        raise InputError(f"{where}: expected [low, high], got {list(value)!r}")
    lo, hi = (_scalar(v, kind, where) for v in value)
    for v in (lo, hi):
        check_bounds(v, f.metadata, where)
    if lo > hi:
        raise InputError(f"{where}: low {lo!r} is above high {hi!r}")
    return (lo, hi)


def build_recipe_options(cls: type, data: dict[str, Any], where: str) -> Any:
    """Recipe options dataclass ``cls`` from params ``data``, naming ``where.<key>``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}: unknown option; this recipe takes "
                         f"{sorted(names)}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        is_range, kind = _field_kind(f)
        key = f"{where}.{f.name}"
        if is_range:
            values[f.name] = parse_range(data[f.name], kind, f, key)
        else:
            v = _scalar(data[f.name], kind, key)
            check_bounds(v, f.metadata, key)
            values[f.name] = v
    return cls(**values)


def recipe_options_schema(cls: type) -> dict[str, dict[str, Any]]:
    """JSON schema (draft 7) properties of a recipe's options: numbers or ``[low, high]``."""
    props = {}
    for f in dataclasses.fields(cls):
        is_range, kind = _field_kind(f)
        item: dict[str, Any] = {"type": "integer" if kind is int else "number"}
        for key, schema_key in (("min", "minimum"), ("gt", "exclusiveMinimum"),
                                ("max", "maximum")):
            if key in f.metadata:
                item[schema_key] = f.metadata[key]
        prop = ({"oneOf": [item, {"type": "array", "minItems": 2, "maxItems": 2,
                                  "items": item}]} if is_range else dict(item))
        if f.metadata.get("doc"):
            prop["description"] = f.metadata["doc"] + (" ([low, high], drawn per anomaly)"
                                                        if is_range else "")
        props[f.name] = prop
    return props
