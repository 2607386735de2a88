"""Image-set metrics on the scene evaluator, our offline stand-ins for FID and semantic fidelity.

FID needs Inception weights that cannot be fetched here; the Frechet distance between Gaussian
fits of the evaluator's pooled features measures the same thing in a space trained on this
world. Evaluator fidelity asks whether a reconstruction still *says* the same thing as its
original: same objects, shapes, colours and places, as the evaluator reads them. Diversity asks
whether images of one prompt still differ from each other (collapse shows there).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator

import numpy as np
import torch

from selftok.data.dataset import to_uint8
from selftok.data.scenes import SHAPES
from selftok.eval.evaluator import ParsedObject, SceneEvaluator, accuracy, match


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussian fits of two feature sets [N, D] (float64 throughout).
    tr sqrt(S_a S_b) is computed as tr sqrt(S_a^1/2 S_b S_a^1/2), which is symmetric PSD, so
    eigh is exact where scipy's sqrtm on the non-symmetric product can go complex."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets [N>=2, D] of one width, got {list(a.shape)} and {list(b.shape)}")
    x, y = a.double().numpy(), b.double().numpy()
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = _sqrt_psd(cov_x)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cov_y @ root), 0.0, None)).sum()
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x) + np.trace(cov_y) - 2.0 * cross)


def diversity(codes: torch.Tensor, features: torch.Tensor, images: torch.Tensor, group_size: int) -> dict[str, float]:
    """Within groups: distinct code sequences, the spread of evaluator features, and the per-pixel
    variance of the images (0-1 scale). Collapse shows here; the pixel spread also shows a group of
    near-copies whose codes differ and whose off-distribution features still scatter."""
    groups = codes.view(-1, group_size, codes.shape[1])
    distinct = sum(len({tuple(row.tolist()) for row in group}) for group in groups) / codes.shape[0]
    spread = features.view(-1, group_size, features.shape[1]).var(dim=1, correction=0).sum(-1).mean()
    pixels = (to_uint8(images).float() / 255).view(-1, group_size, *images.shape[1:]).var(dim=1, correction=0).mean()
    return {"distinct_codes": distinct, "feature_spread": float(spread), "pixel_spread": float(pixels)}


def frechet_evaluator_distance(evaluator: SceneEvaluator, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """Frechet distance between two image sets on the evaluator's pooled features (lower is closer)."""
    return frechet_distance(evaluator.features(images_a), evaluator.features(images_b))


def _check_pairs(originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals {list(originals.shape)} and reconstructions {list(reconstructions.shape)} differ")
    if len(originals) == 0:
        raise ValueError("need at least one image pair")


def reconstruction_agreement(
    evaluator: SceneEvaluator, originals: torch.Tensor, reconstructions: torch.Tensor, tolerance: float = 0.1
) -> dict[str, float]:
    """How far reconstructions keep what the evaluator reads in their originals. Each original
    object is matched to the nearest reconstructed one within ``tolerance`` x image side:

    - ``evaluator_fidelity``: share of images parsed to the same scene (same count, every object
      matched with the same shape and colour);
    - ``position_agreement``, ``shape_agreement``, ``color_agreement``: shares of original
      objects found in place, and found with the same shape / colour. Shape agreement is what
      PSNR hides: a disc where a square was costs a few edge pixels."""
    _check_pairs(originals, reconstructions)
    scores = accuracy(evaluator.parse(originals), evaluator.parse(reconstructions), tolerance * evaluator.config.image_size)
    return {
        "evaluator_fidelity": scores["scene_accuracy"],
        "position_agreement": scores["position_accuracy"],
        "shape_agreement": scores["shape_accuracy"],
        "color_agreement": scores["color_accuracy"],
    }


MISSING = "missing"  # the shape read back where a reconstruction has no object in the original's place


def read_back(
    evaluator: SceneEvaluator, originals: torch.Tensor, reconstructions: torch.Tensor, tolerance: float = 0.1
) -> Iterator[tuple[ParsedObject, str]]:
    """Each object the evaluator finds in an original, with the shape it reads in its place in the
    reconstruction (matched as in ``reconstruction_agreement``; ``MISSING`` when nothing is there)."""
    _check_pairs(originals, reconstructions)
    radius = tolerance * evaluator.config.image_size
    for truth, parsed in zip(evaluator.parse(originals), evaluator.parse(reconstructions), strict=True):
        partner = dict(match(truth, parsed, radius))
        for i, obj in enumerate(truth):
            yield obj, parsed[partner[i]].shape if i in partner else MISSING


def shape_confusion(
    evaluator: SceneEvaluator, originals: torch.Tensor, reconstructions: torch.Tensor, tolerance: float = 0.1
) -> dict[str, Counter[str]]:
    """For each original shape, what ``read_back`` finds in its place: which outlines the tokens
    lose, and to what. Shapes absent from the originals are left out."""
    confusion: dict[str, Counter[str]] = {}
    for obj, read in read_back(evaluator, originals, reconstructions, tolerance):
        confusion.setdefault(obj.shape, Counter())[read] += 1
    return {shape: confusion[shape] for shape in SHAPES if shape in confusion}


def grouped_shape_agreement(
    evaluator: SceneEvaluator,
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    group: Callable[[ParsedObject], str],
    tolerance: float = 0.1,
) -> dict[str, float]:
    """Shape agreement per ``group(original object)``, over the objects ``read_back`` returns."""
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for obj, read in read_back(evaluator, originals, reconstructions, tolerance):
        totals[group(obj)] += 1
        hits[group(obj)] += read == obj.shape
    return {name: hits[name] / totals[name] for name in sorted(totals)}


def is_held_out(holdout: Collection[str]) -> Callable[[ParsedObject], bool]:
    """Whether an object's "colour shape" pair is one of ``holdout`` (case-insensitive)."""
    held = {pair.lower() for pair in holdout}
    return lambda obj: f"{obj.color} {obj.shape}" in held


def holdout_shape_agreement(
    evaluator: SceneEvaluator,
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    holdout: Collection[str],
    tolerance: float = 0.1,
) -> dict[str, float]:
    """Shape agreement over the original objects whose "colour shape" pair is in ``holdout``
    (``heldout_pairs``) and over the rest (``seen_pairs``); a group with no objects is left out.
    Held-out pairs never appear in the train split, so a tokenizer or VAE trained there has never
    drawn them: this separates what it learned from what it has to generalise to."""
    held = is_held_out(holdout)
    return grouped_shape_agreement(
        evaluator, originals, reconstructions, lambda obj: "heldout_pairs" if held(obj) else "seen_pairs", tolerance
    )


def shape_agreement_by_shape(
    evaluator: SceneEvaluator, originals: torch.Tensor, reconstructions: torch.Tensor, tolerance: float = 0.1
) -> dict[str, float]:
    """Shape agreement split by the original object's shape: the diagonal of ``shape_confusion``
    over its rows. A star drawn as a pentagon counts against stars only."""
    confusion = shape_confusion(evaluator, originals, reconstructions, tolerance)
    return {shape: read[shape] / read.total() for shape, read in confusion.items()}


def evaluator_fidelity(
    evaluator: SceneEvaluator, originals: torch.Tensor, reconstructions: torch.Tensor, tolerance: float = 0.1
) -> float:
    """Share of images whose reconstruction parses to the same objects as the original."""
    return reconstruction_agreement(evaluator, originals, reconstructions, tolerance)["evaluator_fidelity"]
