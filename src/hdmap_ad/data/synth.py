"""Synthetic HDMAP: four domains of gearbox health data maps with known faults.

The real HDMAP set is private; this generator reproduces what is known about it
(``HDMAP_FACTS.md``) so the whole pipeline can run, and be tested, without it.

Layout written by :func:`write_domain` (one folder per domain)::

    <out_dir>/train/good/000000.tiff ...   normal maps, cold and warm mixed in random order
    <out_dir>/test/good/000000.tiff ...    first half (index < n/2) cold, second half warm
    <out_dir>/test/fault/000000.tiff ...   same step at n/2

Every map is a float32 ``(31, 95)`` single-page TIFF (rows and columns index gear meshing
points). Fault masks stay in memory (:func:`generate_domain_with_truth`).

Generative model
----------------
Each map is ``level * T(contrast * g) / mean(T(contrast * g))`` (so its image mean is exactly
``level``), scaled at the end by the training maximum:

1. **Texture** ``g`` (standardised per map): a sum of oriented ridge families
   (:class:`Stripe`: ``((1 + cos(2 pi (fx x + fy y) + phase)) / 2) ** sharpness``, random phase
   per map and stripe, stripe weight jittered by ``amp_jitter``), a smooth isotropic background
   (Gaussian-filtered noise, ``background``) and white pixel noise (``noise``). The noise share
   sets how directional the spectrum is: B is the most directional domain, then A, D, and C
   the least (its normal angular power entropy is the highest).
2. **Intensity** ``T``: the inverse Box-Cox transform with parameter ``tail``
   (``exp`` for 0, ``(1 + tail*u) ** (1/tail)`` otherwise): ``tail`` shapes the upper tail, i.e.
   how far a map's maximum lies above its mean. Values are non-negative by construction.
3. **Condition** (cold / warm, :class:`ConditionProfile`): warm maps have a higher level
   (warm/cold image mean ~1.41), a higher contrast (P95-P5 range ratio ~1.61) *and* a
   different structure: sharper horizontal ridges (more harmonics) and an extra diagonal
   family, so a normalised warm map is not a rescaled cold one. Per-map level and contrast
   jitter (``level_jitter``, ``contrast_jitter``) make a p90 threshold separate the conditions
   imperfectly in C and D. In test splits the condition steps at index n/2; train draws each
   map's condition at random (p = 0.5) and hides it.
4. **Training campaign**: the real train split is brighter than test/good, with a narrower
   spread but a heavier upper tail (its maximum is 1 by definition, while test/good maxima
   are 0.90-1.09). ``train_level_gain``, ``train_contrast_gain`` and ``train_tail`` model
   that. Train maps pass through a smooth cap at :data:`TRAIN_CEILING` (width
   :data:`CAP_WIDTH`), reached by a few percent of warm training maps, so the training
   maximum, hence the scale, is ~1.0 for any ``n_train >= 100`` instead of an extreme-value
   statistic that would drift with the split size.
5. **Faults** (:class:`FaultProfile`, test/fault only): a damaged tooth adds a thin, brighter,
   horizontal band at a random row: 1-3 rows high (row weights 1 / 0.5-0.9 / 0.4-0.8),
   10-80 columns wide, optionally broken into ``segments`` pieces separated by 2-6 px gaps,
   with a ``plateau`` and one or more sharp ``impacts`` (Gaussian bumps, 0.8-2 px wide), both
   in units of the map's level. Fault maps also differ globally (``level_gain``,
   ``contrast_gain``: e.g. B and D fault runs are darker, C's brighter) and carry extra
   isotropic band-pass texture (``fault_texture``, a ring of energy at |f| ~ 0.2 cycles/px)
   that makes their spectrum more isotropic without flattening it. Difficulty: A and B
   (strong bands) > D > C, whose cold bands are faint (plateau +0.3 level, about +0.05 scaled,
   ~1.3x the neighbours) and broken into 2-4 pieces, while warm C bands carry one strong
   impact (image max ~1.9).
6. **Scaling**: every split is divided by the maximum over the (capped) raw training maps, so
   train lies in [0, 1] and test maps can exceed 1 (C warm faults up to ~2.9).

All knobs live in :data:`DOMAIN_PROFILES` (frozen dataclasses): edit the numbers to
recalibrate difficulty; ``tests/test_synth.py`` pins the facts below.

Reproduced facts and tolerances (asserted by ``tests/test_synth.py`` at seed 0,
n_train=200, 200 + 200 test maps)
-----------------------------------------------------------------------------------------
- Split pixel means (train, test/good, test/fault) within +-0.03 of
  A .248/.217/.228, B .252/.223/.190, C .246/.228/.263, D .218/.197/.181;
  pooled pixel sd within +-0.02 of the facts table.
- Warm/cold ratio of mean image means (test/good) in [1.3, 1.55] (target 1.39-1.44);
  of mean per-map P95-P5 range in [1.4, 1.8] (target 1.61). The condition is a step at n/2:
  the jump across n/2 is > 0.7 of the warm-cold gap, each half drifts by < 0.35 of it.
- Train within [0, 1] with maximum 1 and a raw scale in [0.95, 1]; test maps exceed 1 (max of
  A faults > 1, C faults > 1.5) but B faults stay below 1 (facts: max .94).
- Domain C groups (good/cold, good/warm, fault/cold, fault/warm): mean image mean within
  +-0.02, mean image std within +-0.015, mean p95 within +-0.03 of the table; share of maps
  with max > 1 is 0 in both cold groups and >= 0.9 in fault/warm.
- Fault masks: 1-3 contiguous rows, span 10-80 columns, wider than high; >= 90 % of C cold
  bands have 2-4 pieces. A C cold band is faint: median band / neighbour-row ratio in
  [1.15, 1.6] and median difference in [0.02, 0.10] scaled units (facts: ~1.3x, +0.05).
- p90 gate (best single threshold, all test maps): >= 0.98 in A and B, 0.88-0.98 in C and D
  (facts: 100 / 100 / 94.3 / 92.5 %).
- Warm differs in structure: correlation of the mean power spectra of per-map standardised
  cold and warm test/good maps < 0.95, while a rescaled cold set gives > 0.999 and two
  halves of the cold set > 0.97.
- Angular power entropy (:func:`angular_power_entropy`): mean over normal maps orders
  C > A > B, and fault maps have a higher mean APE than normal maps in every domain.

Measured at full size (seed 0, 1000 / 1000 / 1000), target in brackets
--------------------------------------------------------------------
====== =========== =========== =========== ============ =========== ===========
domain train       test/good   test/fault  max good/flt p90 gate    APE nrm/flt
====== =========== =========== =========== ============ =========== ===========
A      .246 (.248) .217 (.217) .226 (.228) 1.18/1.28    1.000 (1)   .781/.878
B      .252 (.252) .223 (.223) .188 (.190) 0.90/0.93    .995 (1)    .717/.870
C      .246 (.246) .228 (.228) .262 (.263) 1.17/3.01    .960 (.943) .869/.904
D      .218 (.218) .198 (.197) .182 (.181) 0.98/1.52    .923 (.925) .817/.891
====== =========== =========== =========== ============ =========== ===========

Warm/cold image-mean ratio 1.39-1.41, P95-P5 range ratio 1.58-1.62 in all domains. C groups
(mean / std / max / p95, share max > 1): good/cold .191/.047/.45/.277, 0; good/warm
.266/.077/.72/.408, 1-3 %; fault/cold .214/.056/.52/.316, 0; fault/warm .311/.105/1.91/.479,
100 %. Difficulty, checked with a CNN PatchCore proxy (EfficientNet-Lite2 stride-8 + 16
features, 3x3 pooling, one bank of 16 cold + 16 warm test/good maps, max patch distance,
200 + 200 test maps): AUROC A .999, B 1.000, D .999, C .883 (cold .867, warm 1.000).

Known deviations: faults are synthetic bands, not gearbox physics; the train/test campaign
differences are gains, not a temperature process; the soft cap flattens the top pixel or two
of ~5-12 % of warm training maps; APE effect sizes of faults (Cohen's d 1.4-2.3) are below
the facts' 1.7-4.3; about 1 in 5000 C cold fault maps has max > 1 (facts: none of 500).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy.ndimage import gaussian_filter

from hdmap_ad.data.fingerprint import mark_generated
from hdmap_ad.errors import InputError
from hdmap_ad.io import atomic_path
from hdmap_ad.outputs import FOLDER, check_output, replacing_folder
from hdmap_ad.specs import SynthConfig

DOMAINS = ("A", "B", "C", "D")
SPLITS = ("train/good", "test/good", "test/fault")
MAP_SHAPE = (31, 95)
TRAIN_CEILING = 1.0  # the soft cap of raw training maps (scaled units)
CAP_WIDTH = 0.02  # knee width of that cap
APE_BINS = 36


@dataclass(frozen=True)
class Stripe:
    """One family of parallel ridges: ``((1 + cos(2*pi*(fx*x + fy*y) + phase)) / 2) ** sharpness``.

    Attributes:
        fx: Spatial frequency along the columns, cycles per column (0: horizontal stripes).
        fy: Spatial frequency along the rows, cycles per row.
        weight: Weight of the (standardised) family in the texture field.
        sharpness: Ridge exponent; 1 is a sinusoid, larger values give thinner bright lines
            (more harmonics).
    """

    fx: float
    fy: float
    weight: float
    sharpness: float = 1.0


@dataclass(frozen=True)
class ConditionProfile:
    """Normal maps of one operating condition (cold or warm) of a domain.

    Attributes:
        level: Median image mean of a normal test map, scaled units.
        contrast: Multiplier of the standardised texture inside the intensity transform
            (sets image std / mean).
        stripes: The ridge families of the condition.
    """

    level: float
    contrast: float
    stripes: tuple[Stripe, ...]


@dataclass(frozen=True)
class FaultProfile:
    """The fault band of one condition of a domain.

    Attributes:
        plateau: Band plateau added on the band rows, in units of the map's level.
        peak: Height of each sharp impact on the band, in units of the map's level.
        peak_jitter: Relative standard deviation of ``peak`` (clipped at +-2 sd).
        segments: Inclusive range of the number of pieces the band is broken into.
        impacts: Inclusive range of the number of impacts on the band.
        level_gain: Level factor of fault maps over normal maps of the same condition.
        contrast_gain: Contrast factor of fault maps over normal maps.
    """

    plateau: float
    peak: float
    peak_jitter: float
    segments: tuple[int, int]
    impacts: tuple[int, int]
    level_gain: float
    contrast_gain: float


@dataclass(frozen=True)
class DomainProfile:
    """Every knob of one domain. Edit :data:`DOMAIN_PROFILES` to recalibrate difficulty.

    Attributes:
        cold: Normal maps of the cold condition.
        warm: Normal maps of the warm condition.
        noise: Weight of white pixel noise in the texture (more: less directional, higher APE).
        background: Weight of the smooth isotropic background in the texture.
        background_sigma: Correlation length of the background, pixels.
        amp_jitter: Relative standard deviation of each stripe weight between maps.
        level_jitter: Standard deviation of the log level between maps (gate overlap).
        contrast_jitter: Relative standard deviation of the contrast between maps.
        tail: Box-Cox parameter of the intensity transform of test maps (0: log-normal;
            larger: lighter upper tail, lower maxima).
        train_level_gain: Level factor of the training campaign over test/good.
        train_contrast_gain: Contrast factor of the training campaign.
        train_tail: Box-Cox parameter of training maps.
        fault_texture: Weight of the isotropic band-pass texture added to fault maps.
        fault_cold: Fault band of cold maps.
        fault_warm: Fault band of warm maps.
    """

    cold: ConditionProfile
    warm: ConditionProfile
    noise: float
    background: float
    background_sigma: float
    amp_jitter: float
    level_jitter: float
    contrast_jitter: float
    tail: float
    train_level_gain: float
    train_contrast_gain: float
    train_tail: float
    fault_texture: float
    fault_cold: FaultProfile
    fault_warm: FaultProfile


DOMAIN_PROFILES: dict[str, DomainProfile] = {
    "A": DomainProfile(
        cold=ConditionProfile(
            level=0.180,
            contrast=0.36,
            stripes=(Stripe(0.0, 0.20, 1.0, 2.0), Stripe(0.06, 0.12, 0.5, 1.5)),
        ),
        warm=ConditionProfile(
            level=0.254,
            contrast=0.41,
            stripes=(
                Stripe(0.0, 0.20, 0.8, 3.0),
                Stripe(0.06, 0.12, 0.3, 1.5),
                Stripe(-0.09, 0.16, 0.7, 1.5),
            ),
        ),
        noise=1.25,
        background=0.3,
        background_sigma=6.0,
        amp_jitter=0.1,
        level_jitter=0.05,
        contrast_jitter=0.08,
        tail=0.3,
        train_level_gain=1.14,
        train_contrast_gain=0.72,
        train_tail=-0.1,
        fault_texture=1.7,
        fault_cold=FaultProfile(0.8, 1.0, 0.15, (1, 1), (1, 2), 1.02, 0.8),
        fault_warm=FaultProfile(0.8, 1.0, 0.15, (1, 1), (1, 2), 1.02, 0.8),
    ),
    "B": DomainProfile(
        cold=ConditionProfile(
            level=0.185,
            contrast=0.35,
            stripes=(Stripe(0.0, 0.20, 1.0, 2.0), Stripe(0.05, 0.15, 0.25, 1.5)),
        ),
        warm=ConditionProfile(
            level=0.261,
            contrast=0.40,
            stripes=(
                Stripe(0.0, 0.20, 0.7, 4.0),
                Stripe(0.05, 0.15, 0.15, 1.5),
                Stripe(-0.08, 0.20, 0.6, 1.5),
            ),
        ),
        noise=1.05,
        background=0.2,
        background_sigma=6.0,
        amp_jitter=0.1,
        level_jitter=0.03,
        contrast_jitter=0.05,
        tail=0.7,
        train_level_gain=1.13,
        train_contrast_gain=0.7,
        train_tail=-0.2,
        fault_texture=1.5,
        fault_cold=FaultProfile(0.7, 0.8, 0.15, (1, 1), (1, 2), 0.83, 0.85),
        fault_warm=FaultProfile(0.7, 0.8, 0.15, (1, 1), (1, 2), 0.83, 0.85),
    ),
    "C": DomainProfile(
        cold=ConditionProfile(
            level=0.188,
            contrast=0.24,
            stripes=(
                Stripe(0.0, 0.22, 0.7, 1.5),
                Stripe(0.07, 0.13, 0.5, 1.5),
                Stripe(-0.07, 0.13, 0.5, 1.5),
                Stripe(0.15, 0.05, 0.4, 1.0),
            ),
        ),
        warm=ConditionProfile(
            level=0.265,
            contrast=0.28,
            stripes=(
                Stripe(0.0, 0.22, 0.6, 1.5),
                Stripe(0.07, 0.13, 0.4, 1.5),
                Stripe(-0.10, 0.18, 0.6, 1.5),
                Stripe(0.15, 0.05, 0.4, 1.0),
            ),
        ),
        noise=1.2,
        background=0.6,
        background_sigma=5.0,
        amp_jitter=0.1,
        level_jitter=0.09,
        contrast_jitter=0.08,
        tail=-0.1,
        train_level_gain=1.08,
        train_contrast_gain=0.95,
        train_tail=-0.15,
        fault_texture=0.8,
        fault_cold=FaultProfile(0.3, 0.3, 0.3, (2, 4), (1, 2), 1.12, 1.05),
        fault_warm=FaultProfile(0.3, 5.0, 0.2, (1, 3), (1, 1), 1.15, 1.0),
    ),
    "D": DomainProfile(
        cold=ConditionProfile(
            level=0.163,
            contrast=0.35,
            stripes=(
                Stripe(0.0, 0.20, 1.0, 2.0),
                Stripe(0.06, 0.12, 0.6, 1.5),
                Stripe(-0.06, 0.12, 0.4, 1.5),
            ),
        ),
        warm=ConditionProfile(
            level=0.231,
            contrast=0.40,
            stripes=(
                Stripe(0.0, 0.20, 0.6, 3.0),
                Stripe(0.06, 0.12, 0.4, 1.5),
                Stripe(-0.10, 0.17, 0.7, 1.5),
            ),
        ),
        noise=1.25,
        background=0.45,
        background_sigma=6.0,
        amp_jitter=0.1,
        level_jitter=0.115,
        contrast_jitter=0.1,
        tail=0.6,
        train_level_gain=1.10,
        train_contrast_gain=0.78,
        train_tail=-0.1,
        fault_texture=1.6,
        fault_cold=FaultProfile(0.8, 1.7, 0.3, (1, 2), (1, 2), 0.90, 0.9),
        fault_warm=FaultProfile(0.8, 1.7, 0.3, (1, 2), (1, 2), 0.90, 0.9),
    ),
}


@dataclass(frozen=True)
class SynthDomain:
    """One generated domain with its hidden truth.

    Attributes:
        maps: ``"train/good"``, ``"test/good"``, ``"test/fault"`` -> ``(N, 31, 95)`` float32,
            scaled units.
        fault_masks: ``(N_fault, 31, 95)`` bool, True on the band of each test/fault map.
        train_warm: ``(N_train,)`` bool, the hidden condition of each training map.
        scale: The raw training maximum every split was divided by.
    """

    maps: dict[str, np.ndarray]
    fault_masks: np.ndarray
    train_warm: np.ndarray
    scale: float


def warm_half(n: int) -> np.ndarray:
    """Condition of test map ``i`` of ``n``: cold for ``i < n / 2``, warm after (a step).

    Args:
        n: Number of maps in the test split.

    Returns:
        ``(n,)`` bool, True for warm maps.
    """
    return 2 * np.arange(n) >= n


def generate_domain_with_truth(domain: str, cfg: SynthConfig) -> SynthDomain:
    """Generate one domain and its hidden truth (fault masks, training conditions).

    Pure and deterministic in ``(cfg.seed, domain)``; each split has its own random stream,
    so changing one split's size leaves the other splits' raw maps unchanged (the common
    scale follows the training split).

    Args:
        domain: One of :data:`DOMAINS`.
        cfg: Sizes and seed.

    Returns:
        The :class:`SynthDomain`: maps ``(N, 31, 95)`` float32 divided by the raw training
        maximum, fault masks ``(n_test_fault, 31, 95)`` bool, training conditions.

    Raises:
        InputError: ``domain`` is not one of :data:`DOMAINS`.
    """
    prof = _profile(domain)
    ss = np.random.SeedSequence([cfg.seed, ord(domain)])
    rng_train, rng_good, rng_fault = (np.random.default_rng(s) for s in ss.spawn(3))

    train_warm = rng_train.random(cfg.n_train) < 0.5
    train, _ = _normal_maps(
        rng_train,
        prof,
        train_warm,
        level_gain=np.full(cfg.n_train, prof.train_level_gain),
        contrast_gain=np.full(cfg.n_train, prof.train_contrast_gain),
        tail=prof.train_tail,
    )
    train = _soft_cap(train)

    warm_good = warm_half(cfg.n_test_good)
    good, _ = _normal_maps(
        rng_good,
        prof,
        warm_good,
        level_gain=np.ones(cfg.n_test_good),
        contrast_gain=np.ones(cfg.n_test_good),
        tail=prof.tail,
    )

    warm_fault = warm_half(cfg.n_test_fault)
    fps = [prof.fault_warm if w else prof.fault_cold for w in warm_fault]
    fault, levels = _normal_maps(
        rng_fault,
        prof,
        warm_fault,
        level_gain=np.array([fp.level_gain for fp in fps]),
        contrast_gain=np.array([fp.contrast_gain for fp in fps]),
        tail=prof.tail,
        fault_texture=prof.fault_texture,
    )
    masks = np.zeros((cfg.n_test_fault, *MAP_SHAPE), dtype=bool)
    for i, fp in enumerate(fps):
        masks[i] = _add_fault_band(rng_fault, fault[i], float(levels[i]), fp)

    scale = float(train.max()) if train.size else 1.0
    maps = {
        "train/good": (train / scale).astype(np.float32),
        "test/good": (good / scale).astype(np.float32),
        "test/fault": (fault / scale).astype(np.float32),
    }
    return SynthDomain(maps=maps, fault_masks=masks, train_warm=train_warm, scale=scale)


def generate_domain(domain: str, cfg: SynthConfig) -> dict[str, np.ndarray]:
    """Generate one domain's maps.

    Args:
        domain: One of :data:`DOMAINS`.
        cfg: Sizes and seed.

    Returns:
        ``"train/good"``, ``"test/good"``, ``"test/fault"`` -> ``(N, 31, 95)`` float32.
        Fault masks: :func:`generate_domain_with_truth`.
    """
    return generate_domain_with_truth(domain, cfg).maps


def write_domain(domain: str, cfg: SynthConfig, out_dir: str | Path, force: bool = False) -> None:
    """Write one domain as ``out_dir/{train/good,test/good,test/fault}/NNNNNN.tiff``.

    Files are float32 single-page TIFFs, byte-identical for the same ``(cfg, domain)``. The
    domain is written into a temporary folder beside ``out_dir`` (each file itself through
    :func:`hdmap_ad.io.atomic_path`) and renamed onto ``out_dir`` at the end, replacing an
    existing ``out_dir``: an interrupted run leaves the old domain (or none), never half of
    one. The folder is marked as made by hdmap-ad (:mod:`hdmap_ad.outputs`).

    Args:
        domain: One of :data:`DOMAINS`.
        cfg: Sizes and seed.
        out_dir: The domain folder, e.g. ``data/synthetic/domain_A``.
        force: Replace a non-empty ``out_dir`` that hdmap-ad did not make.

    Raises:
        InputError: ``domain`` is unknown, or ``out_dir`` is no place to write a domain (see
            :func:`hdmap_ad.outputs.check_output`: not a folder, a foreign non-empty folder
            without ``force``, the current folder).
    """
    check_output(out_dir, "--out", kind=FOLDER, force=force)
    maps = generate_domain(domain, cfg)
    with replacing_folder(out_dir) as tmp:
        for split, arr in maps.items():
            folder = tmp / split
            folder.mkdir(parents=True)
            for i, image in enumerate(arr):
                with atomic_path(folder / f"{i:06d}.tiff") as part:
                    tifffile.imwrite(part, image, photometric="minisblack")
        mark_generated(tmp)  # untouched generated data is not re-scanned as "changed"


def angular_power_entropy(maps: np.ndarray, bins: int = APE_BINS) -> np.ndarray:
    """Angular power entropy (APE) of maps: low when the energy lies in few directions.

    2-D FFT power, DC excluded and corners excluded (only ``0 < |f| <= 0.5`` cycles/px),
    summed over ``bins`` angle bins covering [0, pi), then the Shannon entropy of that
    distribution divided by ``log(bins)``.

    Args:
        maps: ``(N, H, W)`` or ``(H, W)`` maps.
        bins: Number of angle bins.

    Returns:
        ``(N,)`` float64 in [0, 1] (a scalar array for one map).
    """
    arr = np.asarray(maps, dtype=np.float64)
    single = arr.ndim == 2
    arr = arr[None] if single else arr
    h, w = arr.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    radius = np.hypot(fx, fy)
    angle = np.mod(np.arctan2(fy, fx), np.pi)
    keep = (radius > 0) & (radius <= 0.5)
    which = np.minimum((angle[keep] / np.pi * bins).astype(int), bins - 1)
    power = np.abs(np.fft.fft2(arr)) ** 2
    energy = np.zeros((arr.shape[0], bins))
    for k in range(bins):
        energy[:, k] = power[:, keep][:, which == k].sum(axis=1)
    p = energy / np.maximum(energy.sum(axis=1, keepdims=True), 1e-300)
    ent = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1) / np.log(bins)
    return ent[0] if single else ent


# --- internals -------------------------------------------------------------------------------


def _profile(domain: str) -> DomainProfile:
    try:
        return DOMAIN_PROFILES[domain]
    except KeyError:
        raise InputError(f"synthetic domain {domain!r}: expected one of {DOMAINS}") from None


def _standardise(field: np.ndarray) -> np.ndarray:
    """Zero mean, unit std per map over the last two axes."""
    field = field - field.mean(axis=(-2, -1), keepdims=True)
    return field / (field.std(axis=(-2, -1), keepdims=True) + 1e-12)


def _ring_noise(
    rng: np.random.Generator, n: int, f0: float = 0.2, bandwidth: float = 0.06
) -> np.ndarray:
    """Isotropic band-pass noise ``(n, 31, 95)``, unit std, energy on a ring ``|f| ~ f0``."""
    fy = np.fft.fftfreq(MAP_SHAPE[0])[:, None]
    fx = np.fft.rfftfreq(MAP_SHAPE[1])[None, :]
    gain = np.exp(-0.5 * ((np.hypot(fx, fy) - f0) / bandwidth) ** 2)
    spec = np.fft.rfft2(rng.standard_normal((n, *MAP_SHAPE))) * gain
    return _standardise(np.fft.irfft2(spec, s=MAP_SHAPE))


def _texture(
    rng: np.random.Generator,
    prof: DomainProfile,
    cond: ConditionProfile,
    n: int,
    fault_texture: float,
) -> np.ndarray:
    """Standardised texture field ``(n, 31, 95)`` of one condition (step 1 of the model)."""
    rows, cols = MAP_SHAPE
    y = np.arange(rows, dtype=np.float64)[:, None]
    x = np.arange(cols, dtype=np.float64)[None, :]
    field = np.zeros((n, rows, cols))
    for st in cond.stripes:
        phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, 1, 1))
        jitter = np.clip(1.0 + prof.amp_jitter * rng.standard_normal((n, 1, 1)), 0.3, 2.0)
        ridge = (1.0 + np.cos(2.0 * np.pi * (st.fx * x + st.fy * y) + phase)) / 2.0
        field += st.weight * jitter * _standardise(ridge**st.sharpness)
    sigma = prof.background_sigma
    smooth = gaussian_filter(rng.standard_normal((n, rows, cols)), (0, sigma, sigma), mode="wrap")
    field += prof.background * _standardise(smooth)
    field += prof.noise * rng.standard_normal((n, rows, cols))
    if fault_texture > 0:
        field += fault_texture * _ring_noise(rng, n)
    return _standardise(field)


def _intensity(u: np.ndarray, tail: float) -> np.ndarray:
    """Inverse Box-Cox: ``exp(u)`` for ``tail == 0``, else ``(1 + tail*u) ** (1/tail)``."""
    if tail == 0:
        return np.exp(u)
    return np.maximum(1.0 + tail * u, 0.05) ** (1.0 / tail)


def _soft_cap(
    v: np.ndarray, ceiling: float = TRAIN_CEILING, width: float = CAP_WIDTH
) -> np.ndarray:
    """Smooth minimum of ``v`` and ``ceiling``: identity well below, ``ceiling`` well above."""
    return ceiling - width * np.logaddexp(0.0, (ceiling - v) / width)


def _normal_maps(
    rng: np.random.Generator,
    prof: DomainProfile,
    warm: np.ndarray,
    level_gain: np.ndarray,
    contrast_gain: np.ndarray,
    tail: float,
    fault_texture: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw maps of given conditions (steps 1-3 of the model).

    Args:
        rng: Random stream of the split.
        prof: The domain's knobs.
        warm: ``(n,)`` bool condition of each map.
        level_gain: ``(n,)`` level factor per map.
        contrast_gain: ``(n,)`` contrast factor per map.
        tail: Box-Cox parameter of the intensity transform.
        fault_texture: Weight of the isotropic fault texture (0 for normal maps).

    Returns:
        Maps ``(n, 31, 95)`` float64 (image mean = level) and levels ``(n,)``.
    """
    n = warm.shape[0]
    out = np.empty((n, *MAP_SHAPE))
    levels = np.empty(n)
    for is_warm, cond in ((False, prof.cold), (True, prof.warm)):
        idx = np.flatnonzero(warm == is_warm)
        if idx.size == 0:
            continue
        g = _texture(rng, prof, cond, idx.size, fault_texture)
        z_level = np.clip(rng.standard_normal(idx.size), -2.5, 2.5)
        z_contrast = np.clip(rng.standard_normal(idx.size), -2.5, 2.5)
        level = cond.level * level_gain[idx] * np.exp(prof.level_jitter * z_level)
        contrast = cond.contrast * contrast_gain[idx] * (1.0 + prof.contrast_jitter * z_contrast)
        e = _intensity(contrast[:, None, None] * g, tail)
        out[idx] = level[:, None, None] * e / e.mean(axis=(1, 2), keepdims=True)
        levels[idx] = level
    return out, levels


def _segments(
    rng: np.random.Generator, c0: int, width: int, lo: int, hi: int
) -> list[tuple[int, int]]:
    """Split columns ``[c0, c0 + width)`` into ``lo..hi`` pieces (>= 3 px) with 2-6 px gaps.

    Returns:
        ``[(start, stop), ...]`` column ranges; the first starts at ``c0``, the last stops at
        ``c0 + width``. Fewer pieces than drawn when the band is too short for them.
    """
    n = min(int(rng.integers(lo, hi + 1)), max(1, (width + 2) // 5))
    if n == 1:
        return [(c0, c0 + width)]
    gaps = rng.integers(2, 7, size=n - 1)
    while width - gaps.sum() < 3 * n:  # shrink gaps until every piece gets 3 px
        gaps = np.maximum(gaps - 1, 2)
    free = int(width - gaps.sum() - 3 * n)
    lengths = 3 + np.floor(rng.dirichlet(np.ones(n)) * free).astype(int)
    lengths[-1] += int(width - gaps.sum() - lengths.sum())
    pieces = []
    start = c0
    for i in range(n):
        pieces.append((start, start + int(lengths[i])))
        start += int(lengths[i]) + (int(gaps[i]) if i < n - 1 else 0)
    return pieces


def _add_fault_band(
    rng: np.random.Generator, image: np.ndarray, level: float, fp: FaultProfile
) -> np.ndarray:
    """Add one fault band to ``image`` ``(31, 95)`` in place (step 5 of the model).

    Returns:
        ``(31, 95)`` bool mask: the band rows times the columns of its pieces.
    """
    rows, cols = MAP_SHAPE
    height = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    width = int(rng.integers(10, 81))
    r0 = int(rng.integers(1, rows - height))
    c0 = int(rng.integers(0, cols - width + 1))
    if height == 1:
        row_w = np.array([1.0])
    elif height == 2:
        row_w = np.array([1.0, rng.uniform(0.5, 0.9)])[:: int(rng.choice([-1, 1]))]
    else:
        row_w = np.array([rng.uniform(0.4, 0.8), 1.0, rng.uniform(0.4, 0.8)])

    x = np.arange(cols, dtype=np.float64)
    col_w = np.zeros(cols)
    in_band = np.zeros(cols, dtype=bool)
    for a, b in _segments(rng, c0, width, *fp.segments):
        inside = (x >= a) & (x < b)
        edge = np.clip(np.minimum(x - a + 1, b - x) / 2.0, 0.3, 1.0)  # soft 2 px ends
        col_w = np.where(inside, edge, col_w)
        in_band |= inside
    profile = fp.plateau * col_w
    n_impacts = int(rng.integers(fp.impacts[0], fp.impacts[1] + 1))
    z = np.clip(rng.standard_normal(n_impacts), -2.0, 2.0)
    heights = fp.peak * np.maximum(1.0 + fp.peak_jitter * z, 0.1)
    band_cols = np.flatnonzero(in_band)
    for h in heights:
        centre = float(rng.choice(band_cols)) + rng.uniform(-0.5, 0.5)
        spread = rng.uniform(0.8, 2.0)
        profile += h * np.exp(-0.5 * ((x - centre) / spread) ** 2) * in_band
    image[r0 : r0 + height] += level * row_w[:, None] * profile[None, :]
    mask = np.zeros(MAP_SHAPE, dtype=bool)
    mask[r0 : r0 + height, in_band] = True
    return mask
