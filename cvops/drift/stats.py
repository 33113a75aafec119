"""Data and prediction drift: cheap per-image statistics and two-sample tests.

A :class:`Profile` holds what was seen over a set of images: numeric feature
columns (image statistics from :func:`image_stats`, prediction statistics from
:func:`prediction_stats`), the counts of predicted classes and, optionally, an
embedding per image. :func:`compare` tests a window of production traffic
against a reference profile (usually built on the validation split) and says
which features moved.

The statistics
--------------

* **KS** (:func:`ks`): the two-sample Kolmogorov-Smirnov statistic, the largest
  gap between the two empirical CDFs, with its p-value (``scipy.stats.ks_2samp``).
  Distribution free, but with large windows it finds any difference, however
  small, "significant".
* **PSI** (:func:`psi`): the population stability index
  ``sum((q - p) * ln(q / p))`` over bins cut at the reference quantiles, ``p``
  the reference and ``q`` the window share of each bin, both floored at a small
  epsilon so that an empty bin costs a finite amount. It is an effect size that
  does not grow with the sample: under no drift it is about
  ``(bins - 1) * (1/n + 1/m)``; the usual reading is < 0.1 stable, 0.1-0.2 a
  moderate shift, > 0.2 a significant shift. A reference with only a few distinct
  values (counts, flags, constants) gets one bin per value plus the gaps between
  them, so that a value never seen in the reference counts as a shift.
* **Chi-squared** (:func:`chi2`): goodness of fit of the window's class counts to
  the reference proportions. Categories with an expected count under 5 are pooled
  so the chi-squared approximation holds, and the statistic is divided by
  ``1 + m / n`` (window / reference totals) because the reference proportions are
  themselves estimated from a sample; without that the test would fire far too
  often when the reference is not much larger than the window. Counts of objects
  are not independent draws when objects cluster within images, so treat the
  p-value as approximate on real data.
* **MMD** (:func:`mmd_test`): the unbiased estimate of the squared maximum mean
  discrepancy between two samples of embeddings under a Gaussian (RBF) kernel,
  whose bandwidth is the median pairwise distance of the pooled sample (the
  median heuristic). Its p-value comes from a permutation test: the pooled
  sample is split at random many times, and the p-value is the share of splits
  whose MMD^2 is at least the observed one.

:func:`compare` runs KS and PSI on every numeric feature, chi-squared on the
class mix and MMD on the embeddings, and Bonferroni-corrects the p-values over
the number of tests it ran. A numeric feature drifts only when its corrected KS
p-value is below ``p_value`` *and* its PSI is above ``psi_threshold``: the first
keeps chance fluctuations of small windows out, the second keeps trivial but
"significant" shifts of big windows out.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

SHARPNESS_MAX_SIDE = 256
PSI_EPS = 1e-4
MIN_EXPECTED = 5.0
NPZ_FORMAT = 1


# ---------------------------------------------------------------------------
# Per-image statistics
# ---------------------------------------------------------------------------


def image_stats(bgr: np.ndarray) -> dict[str, float]:
    """Cheap appearance statistics of one image.

    Args:
        bgr: An ``(H, W, 3)`` BGR image (as OpenCV reads it), an ``(H, W, 4)``
            BGRA image (alpha ignored) or an ``(H, W)`` gray image. ``uint8`` is
            expected; other dtypes are clipped to 0-255.

    Returns:
        ``brightness`` (mean gray level, 0-255), ``contrast`` (standard deviation
        of the gray levels), ``sharpness`` (variance of the Laplacian of the gray
        image downscaled so its longer side is at most 256 pixels, which makes it
        comparable across resolutions), ``saturation`` (mean HSV saturation,
        0-255; 0 for gray images), ``width``, ``height`` and ``aspect``
        (width / height).

    Raises:
        ValueError: If the array is not an image or is empty.
    """
    import cv2

    img = np.asarray(bgr)
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"image_stats: expected an (H, W[, C]) image, got shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 1:
            img = img[:, :, 0]
        elif channels == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        elif channels != 3:
            raise ValueError(f"image_stats: expected 1, 3 or 4 channels, got {channels}")
    h, w = img.shape[:2]
    if img.ndim == 3:
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        saturation = float(cv2.sumElems(hsv)[1]) / (h * w)  # the mean; cv2.mean over 3 channels is ~15x slower
    else:
        gray = np.ascontiguousarray(img)
        saturation = 0.0
    mean, std = cv2.meanStdDev(gray)
    scale = SHARPNESS_MAX_SIDE / max(h, w)
    small = gray
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    # the 3x3 Laplacian of 8-bit pixels is an integer in [-1020, 1020]: exact in int16, 3x faster than float64
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(small, cv2.CV_16S))
    return {
        "brightness": float(mean[0, 0]),
        "contrast": float(std[0, 0]),
        "sharpness": float(lap_std[0, 0] ** 2),
        "saturation": saturation,
        "width": float(w),
        "height": float(h),
        "aspect": float(w) / float(h),
    }


def prediction_stats(scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray, width: int, height: int,
                     low: float, mask_areas: np.ndarray | Sequence[float] | None = None) -> dict[str, Any]:
    """Statistics of a detector's output on one image.

    Args:
        scores: ``(n,)`` confidence of each predicted box.
        labels: ``(n,)`` class of each box (names or ids).
        boxes: ``(n, 4)`` boxes as absolute pixel ``x1, y1, x2, y2``.
        width: Image width in pixels.
        height: Image height in pixels.
        low: The score threshold below which a box is not counted as a detection.
        mask_areas: ``(n,)`` pixel count of each box's instance mask (in the
            ``width x height`` image), for a model that predicts masks; ``None``
            (default): a box-only model, and no mask statistics.

    Returns:
        ``num_boxes`` (boxes scoring at least ``low``), ``max_score`` (the highest
        score of any box, kept ones or not, 0 when there is none: a falling
        confidence shows even when nothing passes ``low``), ``mean_score`` (mean
        score of the kept boxes, 0 when none), ``empty`` (1.0 when no box scores
        at least ``low``, else 0.0), ``box_area_frac`` (list, area of each kept
        box clipped to the image over ``width * height``) and ``labels`` (list of
        the kept boxes' labels as strings). With ``mask_areas`` also, for the kept
        boxes, ``mask_area_frac`` (list, mask pixels over ``width * height``) and
        ``mask_fill`` (list, mask pixels over the box's area clipped to the image,
        in pixels; boxes with no area inside the image are left out). A predicted
        mask may reach past its box, so a fill can exceed 1.

    Raises:
        ValueError: If the arrays disagree in length, the size is not positive or
            a mask area is negative or not finite.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not (len(scores) == len(labels) == len(boxes)):
        raise ValueError(f"prediction_stats: {len(scores)} scores, {len(labels)} labels, {len(boxes)} boxes")
    if width <= 0 or height <= 0:
        raise ValueError(f"prediction_stats: image size must be positive, got {width}x{height}")
    keep = scores >= low
    kept = boxes[keep]
    x1 = np.clip(kept[:, 0], 0, width)
    x2 = np.clip(kept[:, 2], 0, width)
    y1 = np.clip(kept[:, 1], 0, height)
    y2 = np.clip(kept[:, 3], 0, height)
    pixels = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = pixels / float(width * height)
    n_kept = int(keep.sum())
    out: dict[str, Any] = {
        "num_boxes": n_kept,
        "max_score": float(scores.max()) if len(scores) else 0.0,
        "mean_score": float(scores[keep].mean()) if n_kept else 0.0,
        "empty": 0.0 if n_kept else 1.0,
        "box_area_frac": area.tolist(),
        "labels": [str(x) for x in labels[keep].tolist()],
    }
    if mask_areas is not None:
        masks = np.asarray(mask_areas, dtype=np.float64).reshape(-1)
        if len(masks) != len(scores):
            raise ValueError(f"prediction_stats: {len(masks)} mask areas for {len(scores)} boxes")
        if not np.isfinite(masks).all() or (masks < 0).any():
            raise ValueError(f"prediction_stats: mask areas must be finite pixel counts >= 0, got {masks.tolist()}")
        m = masks[keep]
        out["mask_area_frac"] = (m / float(width * height)).tolist()
        # a box squashed to nothing by the image border has no fill; leave it out rather than divide by 0
        out["mask_fill"] = (m[pixels > 0] / pixels[pixels > 0]).tolist()
    return out


# ---------------------------------------------------------------------------
# Two-sample tests
# ---------------------------------------------------------------------------


def _finite(x: np.ndarray | Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError(f"{what}: no finite values")
    return a


def ks(ref: np.ndarray | Sequence[float], cur: np.ndarray | Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test.

    Args:
        ref: Reference sample (non-finite values are dropped).
        cur: Current sample (non-finite values are dropped).

    Returns:
        ``(statistic, p_value)``: the largest distance between the two empirical
        CDFs and the probability of one at least as large under no drift.

    Raises:
        ValueError: If a sample has no finite value.
    """
    from scipy import stats

    res = stats.ks_2samp(_finite(ref, "ks ref"), _finite(cur, "ks cur"))
    return float(res.statistic), float(res.pvalue)


def _bin_ids(ref: np.ndarray, x: np.ndarray, bins: int) -> tuple[np.ndarray, int]:
    """Bin index of each value of ``x`` under the bins drawn from ``ref``, and the number of bins."""
    values = np.unique(ref)
    if values.size <= bins and values.size < ref.size:
        # A discrete reference: bin 2i+1 holds value i exactly, bin 2i the gap just below it.
        pos = np.searchsorted(values, x, side="left")
        exact = (pos < values.size) & (values[np.minimum(pos, values.size - 1)] == x)
        return 2 * pos + exact, 2 * values.size + 1
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return np.searchsorted(edges, x, side="right"), edges.size + 1


def psi(ref: np.ndarray | Sequence[float], cur: np.ndarray | Sequence[float], bins: int = 10) -> float:
    """Population stability index of ``cur`` against ``ref``.

    Bins are cut at the reference quantiles (equal reference mass per bin; bins
    that collapse on tied values are merged). A reference with at most ``bins``
    distinct values gets one bin per value and one per gap between values. Bin
    shares are floored at ``1e-4`` so an empty bin gives a large but finite term.

    Args:
        ref: Reference sample (non-finite values are dropped).
        cur: Current sample (non-finite values are dropped).
        bins: Number of quantile bins.

    Returns:
        ``sum((q - p) * ln(q / p))`` over the bins; 0 for identical distributions.

    Raises:
        ValueError: If a sample has no finite value or ``bins < 2``.
    """
    if bins < 2:
        raise ValueError(f"psi: bins={bins} must be at least 2")
    r = _finite(ref, "psi ref")
    c = _finite(cur, "psi cur")
    r_ids, k = _bin_ids(r, r, bins)
    c_ids, _ = _bin_ids(r, c, bins)
    p = np.maximum(np.bincount(r_ids, minlength=k) / r.size, PSI_EPS)
    q = np.maximum(np.bincount(c_ids, minlength=k) / c.size, PSI_EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def _categorical_psi(ref: np.ndarray, cur: np.ndarray) -> float:
    p = np.maximum(ref / max(ref.sum(), 1.0), PSI_EPS)
    q = np.maximum(cur / max(cur.sum(), 1.0), PSI_EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def chi2(ref_counts: Mapping[str, int | float], cur_counts: Mapping[str, int | float]) -> tuple[float, float]:
    """Chi-squared test of the window's category counts against the reference mix.

    Expected window counts are the window total times the reference proportions
    (with half a pseudo-count per category, so a category the reference never
    saw has a small but non-zero expectation). Categories with an expected count
    under 5 are pooled into one bucket, merged further into the smallest other
    bucket while that is still under 5. The statistic is divided by
    ``1 + m / n`` (window total over reference total) to account for the
    sampling error of the reference proportions.

    Args:
        ref_counts: Category -> count in the reference.
        cur_counts: Category -> count in the window. Categories missing on
            either side count 0 there.

    Returns:
        ``(statistic, p_value)``; ``(0.0, 1.0)`` when either side is empty or
        fewer than two buckets remain after pooling.

    Raises:
        ValueError: On a negative count.
    """
    cats = sorted(set(ref_counts) | set(cur_counts), key=str)
    r = np.array([float(ref_counts.get(c, 0)) for c in cats])
    o = np.array([float(cur_counts.get(c, 0)) for c in cats])
    if (r < 0).any() or (o < 0).any():
        raise ValueError("chi2: counts must be non-negative")
    n, m = r.sum(), o.sum()
    if n <= 0 or m <= 0 or len(cats) < 2:
        return 0.0, 1.0
    e = m * (r + 0.5) / (n + 0.5 * len(cats))
    small = e < MIN_EXPECTED
    buckets_e = list(e[~small])
    buckets_o = list(o[~small])
    if small.any():
        pooled_e, pooled_o = float(e[small].sum()), float(o[small].sum())
        while pooled_e < MIN_EXPECTED and buckets_e:
            j = int(np.argmin(buckets_e))
            pooled_e += buckets_e.pop(j)
            pooled_o += buckets_o.pop(j)
        buckets_e.append(pooled_e)
        buckets_o.append(pooled_o)
    if len(buckets_e) < 2:
        return 0.0, 1.0
    be, bo = np.array(buckets_e), np.array(buckets_o)
    statistic = float(np.sum((bo - be) ** 2 / be) / (1.0 + m / n))
    from scipy import stats

    return statistic, float(stats.chi2.sf(statistic, len(be) - 1))


def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"mmd_test: {what} must be (n, d), got shape {a.shape}")
    return a


def mmd_test(X: np.ndarray, Y: np.ndarray, permutations: int = 200, seed: int = 0,
             max_n: int = 500) -> tuple[float, float]:
    """Kernel two-sample test: unbiased MMD^2 with an RBF kernel and a permutation p-value.

    The kernel is ``exp(-||x - y||^2 / (2 s^2))`` with ``s`` the median pairwise
    distance of the pooled sample. With ``K0`` the pooled kernel matrix with a
    zero diagonal and ``a`` the 0/1 indicator of the first group, the within and
    between sums are ``a'K0a``, ``1'K0 1 - 2 a'K0 1 + a'K0a`` and
    ``a'K0 1 - a'K0a``, so every permutation costs one row of ``A @ K0``: all of
    them are one matrix product.

    Args:
        X: ``(n, d)`` first sample (a 1-D array is one feature).
        Y: ``(m, d)`` second sample.
        permutations: Number of random splits for the p-value; the smallest
            p-value it can give is ``1 / (permutations + 1)``; 0 skips the test
            and gives a NaN p-value.
        seed: Seeds the subsampling and the permutations.
        max_n: Each sample is subsampled (without replacement) to at most this many rows.

    Returns:
        ``(mmd2, p_value)``; ``(0.0, 1.0)`` when a sample has fewer than 2 rows
        or all points coincide.

    Raises:
        ValueError: If the shapes do not match.
    """
    X, Y = _as_2d(X, "X"), _as_2d(Y, "Y")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"mmd_test: X has {X.shape[1]} features, Y has {Y.shape[1]}")
    rng = np.random.default_rng(seed)
    if len(X) > max_n:
        X = X[rng.choice(len(X), max_n, replace=False)]
    if len(Y) > max_n:
        Y = Y[rng.choice(len(Y), max_n, replace=False)]
    n, m = len(X), len(Y)
    if n < 2 or m < 2:
        return 0.0, 1.0
    Z = np.vstack([X, Y])
    Z = Z - Z.mean(axis=0)  # better conditioned distances; does not change them
    sq = np.einsum("ij,ij->i", Z, Z)
    D = sq[:, None] + sq[None, :] - 2.0 * (Z @ Z.T)
    np.maximum(D, 0.0, out=D)
    np.fill_diagonal(D, 0.0)
    upper = D[np.triu_indices(len(Z), 1)]
    bandwidth2 = float(np.median(upper))
    if bandwidth2 <= 0.0:
        positive = upper[upper > 0]
        if positive.size == 0:
            return 0.0, 1.0
        bandwidth2 = float(positive.mean())
    K = np.exp(D * (-0.5 / bandwidth2))
    np.fill_diagonal(K, 0.0)
    row = K.sum(axis=1)
    total = float(row.sum())
    cxx, cyy, cxy = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1)), 2.0 / (n * m)

    def mmd2(A: np.ndarray) -> np.ndarray:
        within = np.einsum("ij,ij->i", A @ K, A)
        s = A @ row
        return within * cxx + (total - 2.0 * s + within) * cyy - (s - within) * cxy

    observed = float(mmd2(np.concatenate([np.ones(n), np.zeros(m)])[None, :])[0])
    if permutations <= 0:
        return observed, float("nan")
    exceed = 0
    tol = 1e-12 * max(1.0, abs(observed))
    chunk = max(1, min(permutations, 2_000_000 // len(Z)))
    done = 0
    while done < permutations:
        b = min(chunk, permutations - done)
        A = (rng.random((b, len(Z))).argsort(axis=1) < n).astype(np.float64)
        exceed += int(np.count_nonzero(mmd2(A) >= observed - tol))
        done += b
    return observed, (exceed + 1) / (permutations + 1)


# ---------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (numbers.Real, np.bool_)) and not isinstance(v, (str, bytes))


def _is_numeric_seq(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        return v.ndim >= 1 and (np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_)
    return isinstance(v, (list, tuple)) and all(_is_number(x) for x in v)


@dataclass
class Profile:
    """What was seen over a set of images.

    Attributes:
        features: Name -> 1-D float column. Scalar per-image values give one value
            per image (NaN where an image lacked it); list-valued ones (such as
            ``box_area_frac``) are pooled over all images, one value per object.
        classes: Predicted label -> count over all images.
        embeddings: ``(n, d)`` one embedding per image, or ``None``.
        num_images: Number of images; inferred when ``None``.
    """

    features: dict[str, np.ndarray] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    num_images: int | None = None

    def __post_init__(self) -> None:
        self.features = {str(k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in self.features.items()}
        self.classes = {str(k): int(v) for k, v in self.classes.items()}
        if self.embeddings is not None:
            emb = np.asarray(self.embeddings)
            if emb.ndim != 2:
                raise ValueError(f"Profile: embeddings must be (n, d), got shape {emb.shape}")
            self.embeddings = emb

    @property
    def n(self) -> int:
        """Number of images profiled."""
        if self.num_images is not None:
            return int(self.num_images)
        if self.embeddings is not None:
            return len(self.embeddings)
        return max((len(v) for v in self.features.values()), default=0)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], embeddings: np.ndarray | None = None) -> Profile:
        """Build a profile from one record per image.

        Args:
            records: Flat dicts of per-image values, e.g. ``{**image_stats(img),
                **prediction_stats(...)}``. Numbers (and bools) become per-image
                columns; lists of numbers are pooled into per-object columns;
                ``labels`` (a list of class names) is counted into
                :attr:`classes`; anything else (strings, ``None``) is ignored.
            embeddings: Optional ``(len(records), d)`` embeddings, row i for record i.

        Returns:
            The profile.

        Raises:
            ValueError: If the embeddings do not have one row per record.
        """
        if embeddings is not None:
            embeddings = np.asarray(embeddings)
            if embeddings.ndim != 2 or len(embeddings) != len(records):
                raise ValueError(f"Profile.from_records: embeddings of shape {embeddings.shape} "
                                 f"for {len(records)} records")
        kinds: dict[str, str] = {}
        classes: Counter[str] = Counter()
        for rec in records:
            for key, value in rec.items():
                if key == "labels":
                    if value is not None:
                        classes.update(str(x) for x in value)
                elif _is_numeric_seq(value):
                    kinds[key] = "pooled"
                elif _is_number(value):
                    kinds.setdefault(key, "scalar")
        features: dict[str, np.ndarray] = {}
        for key, kind in kinds.items():
            if kind == "scalar":
                features[key] = np.array([float(r[key]) if _is_number(r.get(key)) else np.nan for r in records])
            else:
                parts = [np.asarray(r[key], dtype=np.float64).reshape(-1) for r in records
                         if key in r and (_is_numeric_seq(r[key]) or _is_number(r[key]))]
                features[key] = np.concatenate(parts) if parts else np.zeros(0)
        return cls(features=features, classes=dict(classes), embeddings=embeddings, num_images=len(records))

    def to_npz(self, path: str | Path) -> None:
        """Write the profile to ``path`` (a compressed ``.npz``, at exactly that path)."""
        arrays: dict[str, np.ndarray] = {
            "format": np.array(NPZ_FORMAT),
            "num_images": np.array(self.n),
            "class_names": np.array(list(self.classes), dtype=np.str_),
            "class_counts": np.array(list(self.classes.values()), dtype=np.int64),
            "feature_names": np.array(list(self.features), dtype=np.str_),
        }
        for i, values in enumerate(self.features.values()):
            arrays[f"feature_{i}"] = values
        if self.embeddings is not None:
            arrays["embeddings"] = self.embeddings
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def from_npz(cls, path: str | Path) -> Profile:
        """Read a profile written by :meth:`to_npz`."""
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != NPZ_FORMAT:
                raise ValueError(f"{path}: profile format {int(z['format'])}, expected {NPZ_FORMAT}")
            names = [str(s) for s in z["feature_names"]]
            features = {name: z[f"feature_{i}"] for i, name in enumerate(names)}
            classes = {str(k): int(v) for k, v in zip(z["class_names"], z["class_counts"])}
            embeddings = z["embeddings"] if "embeddings" in z.files else None
            return cls(features=features, classes=classes, embeddings=embeddings, num_images=int(z["num_images"]))


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------


@dataclass
class FeatureResult:
    """The outcome of one drift test.

    Attributes:
        name: Feature name; ``"classes"`` for the class mix, ``"embeddings"`` for MMD.
        test: ``"ks"``, ``"chi2"``, ``"mmd"``, or ``"skipped"`` (see ``note``).
        statistic: KS distance, scaled chi-squared statistic or MMD^2.
        p_value: The test's own p-value.
        psi: Population stability index (class proportions for ``chi2``; ``None`` for MMD).
        drifted: Whether this feature counts as drifted.
        ref_mean: Mean in the reference (numeric features only).
        cur_mean: Mean in the window (numeric features only).
        p_adjusted: ``p_value`` Bonferroni-corrected over the tests run.
        note: Why a feature was skipped.
    """

    name: str
    test: str
    statistic: float
    p_value: float
    psi: float | None
    drifted: bool
    ref_mean: float | None = None
    cur_mean: float | None = None
    p_adjusted: float = 1.0
    note: str = ""


@dataclass
class DriftReport:
    """The result of :func:`compare`.

    Attributes:
        features: One result per feature (skipped ones included, marked ``"skipped"``).
        drift_detected: Whether any feature drifted.
        drift_features: Names of the drifted features.
        num_tests: Number of tests run (the Bonferroni factor).
        n_reference: Images in the reference.
        n_window: Images in the window.
        p_value: Significance level used.
        psi_threshold: PSI threshold used.
    """

    features: list[FeatureResult]
    drift_detected: bool
    drift_features: list[str]
    num_tests: int = 0
    n_reference: int = 0
    n_window: int = 0
    p_value: float = 0.01
    psi_threshold: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN becomes ``None``)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v

        return {
            "drift_detected": self.drift_detected,
            "drift_features": list(self.drift_features),
            "num_tests": self.num_tests,
            "n_reference": self.n_reference,
            "n_window": self.n_window,
            "p_value": self.p_value,
            "psi_threshold": self.psi_threshold,
            "features": [{k: clean(v) for k, v in asdict(f).items()} for f in self.features],
        }


def compare(reference: Profile, window: Profile, p_value: float = 0.01, psi_threshold: float = 0.2,
            permutations: int = 200, seed: int = 0) -> DriftReport:
    """Test a window of traffic against a reference profile.

    Every numeric feature present in both profiles gets KS and PSI and drifts when
    its Bonferroni-corrected KS p-value is below ``p_value`` and its PSI above
    ``psi_threshold``. Features with fewer than 2 finite values on a side, or one
    and the same value everywhere in both, are skipped and do not count as tests.
    The class mix gets :func:`chi2` when both sides have labels, the embeddings
    :func:`mmd_test` when both sides have them; each drifts when its corrected
    p-value is below ``p_value``.

    A permutation p-value is never below ``1 / (permutations + 1)``, so the MMD
    test runs at least ``ceil(2 * num_tests / p_value)`` permutations, enough for
    its corrected p-value to be able to go below ``p_value``.

    Args:
        reference: The reference profile.
        window: The profile of the window under test.
        p_value: Family-wise significance level.
        psi_threshold: PSI a numeric feature must exceed to drift.
        permutations: Permutations for the MMD test (raised as said above).
        seed: Seeds the MMD test.

    Returns:
        The :class:`DriftReport`.
    """
    results: list[FeatureResult] = []
    numeric: list[tuple[FeatureResult, bool]] = []

    def skipped(name: str, note: str) -> None:
        results.append(FeatureResult(name, "skipped", 0.0, 1.0, None, False, note=note))

    for name, ref_col in reference.features.items():
        if name not in window.features:
            skipped(name, "not in the window")
            continue
        r = ref_col[np.isfinite(ref_col)]
        c = window.features[name][np.isfinite(window.features[name])]
        if r.size < 2 or c.size < 2:
            skipped(name, "fewer than 2 values")
            continue
        if r.min() == r.max() == c.min() == c.max():
            skipped(name, "constant")
            continue
        stat, p = ks(r, c)
        res = FeatureResult(name, "ks", stat, p, psi(r, c), False, float(r.mean()), float(c.mean()))
        results.append(res)
        numeric.append((res, True))
    for name in window.features:
        if name not in reference.features:
            skipped(name, "not in the reference")

    if sum(reference.classes.values()) > 0 and sum(window.classes.values()) > 0:
        stat, p = chi2(reference.classes, window.classes)
        cats = sorted(set(reference.classes) | set(window.classes))
        cpsi = _categorical_psi(np.array([reference.classes.get(k, 0) for k in cats], dtype=np.float64),
                                np.array([window.classes.get(k, 0) for k in cats], dtype=np.float64))
        res = FeatureResult("classes", "chi2", stat, p, cpsi, False)
        results.append(res)
        numeric.append((res, False))

    run_mmd = (reference.embeddings is not None and window.embeddings is not None
               and len(reference.embeddings) >= 2 and len(window.embeddings) >= 2)
    num_tests = len(numeric) + int(run_mmd)
    if run_mmd:
        perms = max(int(permutations), math.ceil(2 * num_tests / p_value))
        stat, p = mmd_test(reference.embeddings, window.embeddings, permutations=perms, seed=seed)
        res = FeatureResult("embeddings", "mmd", stat, p, None, False)
        results.append(res)
        numeric.append((res, False))

    for res, needs_psi in numeric:
        res.p_adjusted = min(1.0, res.p_value * num_tests)
        res.drifted = res.p_adjusted < p_value and (not needs_psi or (res.psi or 0.0) > psi_threshold)
    drifted = [r.name for r in results if r.drifted]
    return DriftReport(features=results, drift_detected=bool(drifted), drift_features=drifted,
                       num_tests=num_tests, n_reference=reference.n, n_window=window.n,
                       p_value=p_value, psi_threshold=psi_threshold)
