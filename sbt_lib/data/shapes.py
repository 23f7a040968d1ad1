"""The built-in ``shapes`` data set: synthetic images rendered from known factors, for linear probes.

Each image is a flat-coloured shape on a grey textured background; its global factors (shape, colour, position,
size) and local ones (texture, frequency, orientation) are known exactly, so probes can ask which tokens carry
which kind of information.
"""

from __future__ import annotations

import numpy as np

from .datasets import ImageDataset


SHAPE_FACTORS = {"global": ["shape", "colour", "position", "size"],
                 "local": ["texture", "frequency", "orientation"]}
FACTOR_CLASSES = {
    "shape": ["circle", "square", "triangle", "diamond"],
    "colour": ["red", "yellow", "green", "cyan", "blue", "magenta"],
    "position": ["top-left", "top", "top-right", "left", "centre", "right",
                 "bottom-left", "bottom", "bottom-right"],
    "size": ["small", "medium", "large"],
    "texture": ["stripes", "checker", "dots", "noise"],
    "frequency": ["low", "mid", "high"],
    "orientation": ["0", "45", "90", "135"],  # degrees
}
COLOURS = np.array([[0.95, 0.10, 0.10], [0.95, 0.90, 0.10], [0.10, 0.80, 0.10],
                    [0.10, 0.85, 0.90], [0.15, 0.25, 0.95], [0.90, 0.10, 0.90]], np.float32)
SIZES = (0.10, 0.15, 0.20)  # shape "radius" as a fraction of the image side (+-8% jitter)
CYCLES = (2.0, 4.0, 6.0)  # texture periods per image side, across the pattern axis
MARGIN = 0.2  # shape centres lie in [MARGIN, 1 - MARGIN] of the image, cut 3x3
NOISE_GRID = 16  # value-noise lattice size per image


def sample_shape_factors(n: int, rng) -> dict[str, np.ndarray]:
    """Seeded factors for ``n`` shapes images; each factor exactly balanced (+-1)."""
    rng = np.random.default_rng(rng)
    return {k: rng.permutation(np.arange(n) % len(v)) for k, v in FACTOR_CLASSES.items()}


def render_shapes(factors: dict, image_size: int, rng, chunk: int = 1024) -> np.ndarray:
    """Render shapes images (uint8 Nx3xHxW) for the given factor indices.

    Nuisances (position jitter, size jitter, texture phase, grey levels, noise) come
    from ``rng`` (seed or Generator) and do not depend on the factor values, so the
    same seed with one factor changed gives the same image with only that changed.
    """
    rng = np.random.default_rng(rng)
    f = {k: np.asarray(v, np.int64) for k, v in factors.items()}
    n = len(f["shape"])
    nuisance = {  # drawn in a fixed order with fixed shapes
        "jitter": rng.uniform(-0.4, 0.4, (n, 2)).astype(np.float32),
        "scale": rng.uniform(0.92, 1.08, n).astype(np.float32),
        "phase": rng.random((n, 2)).astype(np.float32),
        "grey": rng.uniform(0.2, 0.45, n).astype(np.float32),
        "contrast": rng.uniform(0.2, 0.35, n).astype(np.float32),
        "tint": rng.uniform(-0.04, 0.04, (n, 3)).astype(np.float32),
        "noise": rng.random((n, NOISE_GRID, NOISE_GRID)).astype(np.float32),
    }
    out = np.empty((n, 3, image_size, image_size), np.uint8)
    for lo in range(0, n, chunk):
        part = slice(lo, lo + chunk)
        rgb = _render_chunk({k: v[part] for k, v in f.items()},
                            {k: v[part] for k, v in nuisance.items()}, image_size)
        out[part] = np.round(rgb * 255).astype(np.uint8).transpose(0, 3, 1, 2)
    return out


def make_shapes(n: int, split: str, image_size: int, rng: np.random.Generator) -> ImageDataset:
    """``n`` shapes images with their factors; target = the ``shape`` factor."""
    factors = sample_shape_factors(n, rng)
    images = render_shapes(factors, image_size, rng)
    return ImageDataset(images, factors["shape"], FACTOR_CLASSES["shape"], "shapes", split,
                        factors=factors)


def _render_chunk(f: dict, nz: dict, size: int) -> np.ndarray:
    """Float NxHxWx3 in [0, 1]: grey texture, then the shape composited on top."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres, image units
    y, x = coords[None, :, None], coords[None, None, :]
    background = _texture(f, nz, x - 0.5, y - 0.5, size)[..., None]  # N x H x W x 1
    background = nz["grey"][:, None, None, None] + nz["contrast"][:, None, None, None] * background
    background = background + nz["tint"][:, None, None, :]

    radius = np.asarray(SIZES, np.float32)[f["size"]] * nz["scale"]
    cell = (1 - 2 * MARGIN) / 3
    row, col = np.divmod(f["position"], 3)
    cy = MARGIN + (row + 0.5 + nz["jitter"][:, 0]) * cell
    cx = MARGIN + (col + 0.5 + nz["jitter"][:, 1]) * cell
    r = radius[:, None, None]
    px, py = np.broadcast_arrays((x - cx[:, None, None]) / r, (y - cy[:, None, None]) / r)
    sdf = np.empty(px.shape, np.float32)  # signed distance, in units of the radius
    for k, sd in enumerate(_SHAPE_SDFS):
        m = f["shape"] == k
        sdf[m] = sd(px[m], py[m])
    alpha = np.clip(0.5 - sdf * r * size, 0, 1)[..., None]  # 1-pixel smooth edge
    return np.clip(background * (1 - alpha) + COLOURS[f["colour"]][:, None, None] * alpha, 0, 1)


# Signed distance functions of unit-radius shapes (areas all ~pi), y pointing down.
_SHAPE_SDFS = (
    lambda x, y: np.hypot(x, y) - 1,                                  # circle
    lambda x, y: np.maximum(abs(x), abs(y)) - 0.886,                  # square
    lambda x, y: np.maximum.reduce([y, 0.866 * x - 0.5 * y,           # triangle,
                                    -0.866 * x - 0.5 * y]) - 0.778,   # apex up
    lambda x, y: (abs(x) + abs(y) - 1.253) / np.sqrt(2),              # diamond
)


def _texture(f: dict, nz: dict, x, y, size: int) -> np.ndarray:
    """Texture value NxHxW in [0, 1], in coordinates rotated by the orientation factor.

    Checker, dots and noise repeat half as often along the second axis, so that
    every orientation (0/45/90/135) gives a visibly different pattern.
    """
    theta = np.deg2rad(45 * f["orientation"]).astype(np.float32)[:, None, None]
    cycles = np.asarray(CYCLES, np.float32)[f["frequency"]][:, None, None]
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    a = cycles * u + nz["phase"][:, 0, None, None]  # pattern coordinates: 1 unit = 1 period
    b = cycles / 2 * v + nz["phase"][:, 1, None, None]
    to_px = size / cycles  # pixels per period along a

    out = np.empty(a.shape, np.float32)
    kind = f["texture"]
    m = kind == 0  # stripes
    out[m] = 0.5 + 0.5 * np.sin(2 * np.pi * a[m])
    m = kind == 1  # checker, edges smoothed over one pixel
    am, bm, px = a[m], b[m], to_px[m]
    parity = (np.floor(am) + np.floor(bm)) % 2
    edge = np.minimum(abs(am - np.round(am)), 2 * abs(bm - np.round(bm))) * px
    out[m] = 0.5 + (parity - 0.5) * np.clip(2 * edge, 0, 1)
    m = kind == 2  # dots on a rectangular lattice
    am, bm, px = a[m], b[m], to_px[m]
    dist = np.hypot(am - np.floor(am) - 0.5, 2 * (bm - np.floor(bm) - 0.5)) * px
    out[m] = np.clip(0.3 * px - dist + 0.5, 0, 1)
    m = kind == 3  # smooth value noise, stretched to the full [0, 1] range
    noise = _value_noise(a[m], b[m], nz["noise"][m])
    low, high = noise.min(axis=(1, 2), keepdims=True), noise.max(axis=(1, 2), keepdims=True)
    out[m] = (noise - low) / np.maximum(high - low, 1e-6)
    return out


def _value_noise(a, b, grid) -> np.ndarray:
    """Smoothly interpolated random lattice values (per-image ``grid``) at (a, b)."""
    a, b = a + NOISE_GRID / 2, b + NOISE_GRID / 2  # |a|, |b| < 6 by construction
    ia, ib = np.floor(a).astype(np.int64), np.floor(b).astype(np.int64)
    ta, tb = a - ia, b - ib
    ta, tb = ta * ta * (3 - 2 * ta), tb * tb * (3 - 2 * tb)  # smoothstep
    n = np.arange(len(grid))[:, None, None]
    g = lambda da, db: grid[n, ia + da, ib + db]  # noqa: E731
    top = g(0, 0) * (1 - tb) + g(0, 1) * tb
    bottom = g(1, 0) * (1 - tb) + g(1, 1) * tb
    return top * (1 - ta) + bottom * ta
