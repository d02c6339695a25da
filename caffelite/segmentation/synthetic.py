"""A synthetic Cityscapes-like dataset: street scenes in perspective with real Cityscapes label ids.

Same folders and file names as Cityscapes (``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
and ``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``), so the real tools run unchanged.
Each scene has sky (23), buildings (11) with windows, vegetation (21), terrain (22), road (7) with lane
marks, sidewalks (8), poles (17) carrying traffic signs (20) and lights (19), cars (26), trucks (27),
persons (24), riders (25) on bicycles (33), sometimes the ego-vehicle hood (1) and a rectification border
(2, ignored). Colours, layout, sizes (in perspective), textures, lighting, a shadow and sensor noise vary, and
vehicle and sidewalk colours overlap the road's, so the task is learnable but not trivial. Persons and
signs/lights are sized for a stride-8 net at the quick run's 256x128 (typically 10-20 px wide, rarely under
6), and signs/lights have saturated sign colours or lit lamps on dark housings, so shape and colour set them
apart from the background they stand against.

Every image is a pure function of ``(seed, split, index)``; drawing is vectorised over bounding boxes.
"""

from __future__ import annotations

import os

import numpy as np

from ..io.files import save_png

__all__ = ["render_scene", "generate_dataset", "TRAIN_CITIES", "VAL_CITIES"]

TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt")
VAL_CITIES = ("frankfurt", "lindau", "munster")
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}


class _Canvas:
    """An RGB float image and a label map, painted by masks evaluated only inside bounding boxes."""

    def __init__(self, h, w, rng):
        self.h, self.w, self.rng = h, w, rng
        self.img = np.zeros((h, w, 3), np.float32)
        self.lab = np.zeros((h, w), np.uint8)
        self.tex = _smooth_noise(h, w, rng, 8) * 0.6 + _smooth_noise(h, w, rng, 48) * 0.4

    def paint(self, y0, y1, x0, x1, mask_fn, label, color, tex_amp=0.08):
        y0, y1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), self.h)
        x0, x1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), self.w)
        if y1 <= y0 or x1 <= x0:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        m = mask_fn(yy, xx) if mask_fn is not None else np.ones(yy.shape, bool)
        col = np.asarray(color, np.float32)
        if col.ndim == 1:
            col = col[None, None, :] * (1 + tex_amp * self.tex[y0:y1, x0:x1, None])
        self.img[y0:y1, x0:x1][m] = np.broadcast_to(col, m.shape + (3,))[m]
        self.lab[y0:y1, x0:x1][m] = label

    def rect(self, y0, y1, x0, x1, label, color, tex_amp=0.08):
        self.paint(y0, y1, x0, x1, None, label, color, tex_amp)

    def ellipse(self, cy, cx, ry, rx, label, color, tex_amp=0.08, inner=0.0):
        def m(yy, xx):
            r = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2
            return (r <= 1) & (r >= inner)
        self.paint(cy - ry, cy + ry + 1, cx - rx, cx + rx + 1, m, label, color, tex_amp)


def _smooth_noise(h, w, rng, cell):
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    from PIL import Image

    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    g = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(g, "F").resize((w, h), Image.BILINEAR))


def _rand_color(rng, base, jitter):
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-jitter, jitter, 3), 0, 255)


def _vehicle(cv, rng, yb, xc, wid, truck):
    hgt = wid * (rng.uniform(0.85, 1.1) if truck else rng.uniform(0.5, 0.65))
    body = _rand_color(rng, rng.choice([30, 90, 140, 200, 235], 3) if rng.random() < 0.6
                       else rng.uniform(20, 240, 3), 25)
    lab = 27 if truck else 26
    x0, x1, y0 = xc - wid / 2, xc + wid / 2, yb - hgt
    cv.rect(y0 + hgt * 0.25, yb - hgt * 0.12, x0, x1, lab, body)
    if truck:
        cv.rect(y0, y0 + hgt * 0.3, x0 + wid * 0.02, x1 - wid * 0.02, lab, body * 0.9)
        cv.rect(y0 + hgt * 0.1, y0 + hgt * 0.35, x0 + wid * 0.1, x1 - wid * 0.1, lab, (40, 50, 60))
    else:
        cw = wid * 0.7
        cv.paint(y0, y0 + hgt * 0.3, xc - cw / 2, xc + cw / 2,
                 lambda yy, xx: np.abs(xx - xc) <= cw / 2 - (y0 + hgt * 0.3 - yy) * 0.6, lab, body)
        cv.rect(y0 + hgt * 0.08, y0 + hgt * 0.28, xc - cw * 0.38, xc + cw * 0.38, lab, (35, 45, 60))
    for wx in (x0 + wid * 0.18, x1 - wid * 0.18):
        cv.ellipse(yb - hgt * 0.12, wx, hgt * 0.14, wid * 0.09, lab, (20, 20, 20), 0.02)
    for lx in (x0 + wid * 0.08, x1 - wid * 0.08):  # lights
        cv.rect(y0 + hgt * 0.45, y0 + hgt * 0.55, lx - wid * 0.04, lx + wid * 0.04, lab, (230, 200, 120))


def _person(cv, rng, yb, xc, hgt, rider=False):
    skin = _rand_color(rng, (200, 160, 130), 40)
    cloth = _rand_color(rng, rng.uniform(20, 230, 3), 20)
    lab = 25 if rider else 24
    w = hgt * rng.uniform(0.3, 0.36)
    if rider:  # a bicycle under the rider
        r = hgt * 0.22
        for wx in (xc - hgt * 0.3, xc + hgt * 0.3):
            cv.ellipse(yb - r, wx, r, r, 33, (25, 25, 25), 0.02, inner=0.3)
        cv.rect(yb - r * 1.4, yb - r * 0.9, xc - hgt * 0.3, xc + hgt * 0.3, 33, _rand_color(rng, (150, 40, 40), 80))
        yb = yb - r * 1.2
        hgt = hgt * 0.75
    if not rider:
        cv.rect(yb - hgt * 0.48, yb, xc - w * 0.4, xc + w * 0.4, lab, _rand_color(rng, (50, 50, 70), 30))
    cv.rect(yb - hgt * 0.82, yb - hgt * 0.45, xc - w / 2, xc + w / 2, lab, cloth)
    cv.ellipse(yb - hgt * 0.9, xc, hgt * 0.09, hgt * 0.075, lab, skin)


def _pole_sign(cv, rng, yb, x, hgt, s):
    """A grey pole of height ``hgt`` standing at (yb, x) carrying a sign or a traffic light of size ``s``."""
    pw = max(1.0, hgt * 0.025)
    cv.rect(yb - hgt, yb, x - pw, x + pw, 17, _rand_color(rng, (110, 110, 110), 30))
    top = yb - hgt
    kind = rng.integers(5)
    if kind >= 3:  # traffic light: dark housing (sometimes on a yellow backplate), one lit lamp of three
        if rng.random() < 0.4:
            cv.rect(top - s * 1.75, top + s * 0.55, x - s * 0.6, x + s * 0.6, 19, _rand_color(rng, (225, 180, 40), 20))
        cv.rect(top - s * 1.6, top + s * 0.4, x - s * 0.45, x + s * 0.45, 19, _rand_color(rng, (30, 30, 25), 10))
        lit = rng.integers(3)
        for k, col in enumerate([(235, 40, 30), (245, 190, 30), (40, 225, 90)]):
            c = col if k == lit else (70, 70, 60)
            cv.ellipse(top - s * 1.3 + k * s * 0.6, x, s * 0.24, s * 0.24, 19, c, 0.02)
    elif kind == 0:  # round prohibition sign: red ring, white disc
        cv.ellipse(top - s * 0.5, x, s * 0.6, s * 0.6, 20, _rand_color(rng, (205, 30, 30), 15))
        cv.ellipse(top - s * 0.5, x, s * 0.4, s * 0.4, 20, _rand_color(rng, (235, 235, 235), 10))
    elif kind == 1:  # blue mandatory sign (round) or direction sign (square) with a white mark
        col = _rand_color(rng, (30, 70, 190), 15)
        if rng.random() < 0.5:
            cv.ellipse(top - s * 0.5, x, s * 0.6, s * 0.6, 20, col)
        else:
            cv.rect(top - s * 1.1, top + s * 0.1, x - s * 0.6, x + s * 0.6, 20, col)
        cv.rect(top - s * 0.6, top - s * 0.4, x - s * 0.35, x + s * 0.35, 20, (235, 235, 235), 0.02)
    else:  # warning sign: white triangle with a red (or yellow) border
        cy = top - s * 0.5
        for k, (frac, col) in enumerate(((1.0, (200, 30, 30) if rng.random() < 0.7 else (240, 200, 40)),
                                         (0.62, (240, 240, 235)))):
            r = s * 0.7 * frac

            def tri(yy, xx, r=r, cy=cy):
                return (np.abs(xx - x) <= (yy - (cy - r)) * 0.6) & (yy <= cy + r * 0.75)
            cv.paint(cy - r, cy + r, x - r, x + r, tri, 20, _rand_color(rng, col, 10) if k == 0 else col)


def render_scene(width: int, height: int, rng: np.random.Generator):
    """One scene: (RGB uint8 H×W×3, labelIds uint8 H×W)."""
    h, w = height, width
    cv = _Canvas(h, w, rng)
    hy = h * rng.uniform(0.36, 0.5)
    vx = w * rng.uniform(0.35, 0.65)
    top, bottom = _rand_color(rng, rng.choice([(70, 120, 200), (150, 160, 170)]), 30), None
    bottom = np.clip(top + rng.uniform(30, 70), 0, 255)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    cv.img[:] = top * (1 - t) + bottom * t
    cv.lab[:] = 23
    # buildings and trees along the horizon
    x = -w * 0.05
    while x < w:
        bw = w * rng.uniform(0.08, 0.25)
        by = hy - h * rng.uniform(0.1, 0.4)
        if rng.random() < 0.25:
            cv.ellipse(hy - h * 0.08, x + bw / 2, h * rng.uniform(0.08, 0.18), bw * 0.6, 21,
                       _rand_color(rng, (70, 110, 50), 25), 0.3)
        else:
            col = _rand_color(rng, rng.choice([(150, 130, 110), (120, 120, 125), (190, 175, 150)]), 30)
            cv.rect(by, hy + h * 0.04, x, x + bw, 11, col, 0.15)
            px, py = max(4.0, bw / rng.integers(3, 7)), max(4.0, h * rng.uniform(0.03, 0.06))
            wc = col * rng.uniform(0.3, 0.6)
            cv.paint(by, hy, x, x + bw, lambda yy, xx, x0=x, y0=by, px=px, py=py:
                     (((xx - x0) % px) > px * 0.35) & (((yy - y0) % py) > py * 0.4), 11, wc, 0.05)
        x += bw
    # ground: sidewalk/terrain everywhere below the horizon, then the road wedge
    cv.rect(hy, h, 0, w, 8, _rand_color(rng, (150, 140, 135), 30), 0.12)
    xl, xr = w * rng.uniform(-0.4, 0.15), w * rng.uniform(0.85, 1.4)
    for edge, side in ((xl - w * rng.uniform(0.3, 0.8), -1), (xr + w * rng.uniform(0.3, 0.8), 1)):
        if rng.random() < 0.5:
            def terrain(yy, xx, e=edge, s=side):
                xe = vx + (e - vx) * (yy - hy) / (h - hy)
                return (xx - xe) * s > 0
            cv.paint(hy, h, 0, w, terrain, 22, _rand_color(rng, (110, 130, 70), 25), 0.25)

    def road(yy, xx):
        f = (yy - hy) / (h - hy)
        return (xx >= vx + (xl - vx) * f) & (xx <= vx + (xr - vx) * f)
    cv.paint(hy, h, 0, w, road, 7, _rand_color(rng, (85, 80, 85), 25), 0.1)
    period = rng.uniform(0.08, 0.15)

    def marks(yy, xx):
        f = (yy - hy) / (h - hy)
        xm = vx + ((xl + xr) / 2 - vx) * f
        return (np.abs(xx - xm) <= 0.006 * w * f + 0.5) & ((np.sqrt(np.maximum(f, 0)) % period) < period * 0.5)
    cv.paint(hy, h, 0, w, marks, 7, _rand_color(rng, (220, 220, 210), 15), 0.05)
    # objects, far to near so that near ones occlude. Persons and signs are kept at distances where they are
    # several output cells of a stride-8 segmentation net wide even at 256x128 (persons ~7-22 px wide,
    # signs ~10-30 px): smaller ones would be noise in the labels rather than something to learn.
    objs = []
    for _ in range(rng.integers(2, 6)):
        objs.append(("veh", rng.uniform(0.1, 1.0)))
    for _ in range(rng.integers(2, 6)):
        objs.append(("person", rng.uniform(0.45, 1.0)))
    for _ in range(rng.integers(2, 5)):
        objs.append(("pole", rng.uniform(0.3, 0.95)))
    objs.sort(key=lambda o: o[1])
    for kind, f in objs:
        yb = hy + f * (h - hy)
        left, right = vx + (xl - vx) * f, vx + (xr - vx) * f
        if kind == "veh":
            wid = w * 0.3 * f * rng.uniform(0.8, 1.2)
            xc = rng.uniform(left + wid / 2, max(left + wid / 2 + 1, right - wid / 2))
            _vehicle(cv, rng, yb, xc, wid, rng.random() < 0.25)
            continue
        side = rng.choice([-1, 1])
        edge = left if side < 0 else right
        # on the kerb beside the road, kept in the frame (a person may be crossing where the road is wide)
        xc = float(np.clip(edge + side * w * 0.06 * f * rng.uniform(0.3, 2.0), w * 0.03, w * 0.97))
        if kind == "pole":
            _pole_sign(cv, rng, yb, xc, h * 0.65 * f * rng.uniform(0.85, 1.15), h * 0.2 * f * rng.uniform(0.85, 1.2))
        else:
            _person(cv, rng, yb, xc, h * 0.6 * f * rng.uniform(0.85, 1.15), rider=rng.random() < 0.3)
    if rng.random() < 0.3:  # ego-vehicle hood
        cv.ellipse(h * 1.15, w / 2, h * 0.22, w * 0.6, 1, _rand_color(rng, (40, 40, 45), 20))
    if rng.random() < 0.2:  # rectification border (ignored in training)
        b = max(1, int(h * 0.02))
        cv.lab[-b:] = 2
        cv.img[-b:] = 0
    # lighting: gain, colour cast, a shadow half-plane, sensor noise
    img = cv.img * rng.uniform(0.65, 1.25) + rng.uniform(-15, 15, 3)
    a, c = rng.uniform(-1, 1), rng.uniform(0.2, 0.8)
    yy, xx = np.mgrid[0:h, 0:w]
    shadow = (xx / w - c) * 1.0 + a * (yy / h - 0.5) > 0
    img[shadow & (yy > hy)] *= rng.uniform(0.55, 0.9)
    img += rng.normal(0, rng.uniform(2, 9), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), cv.lab


def generate_dataset(out, num_train=20, num_val=5, size=(256, 128), seed=0, progress=False) -> dict:
    """Write the dataset under ``out``; returns {split: number of images}. ``size`` = (W, H)."""
    from PIL import Image

    width, height = int(size[0]), int(size[1])
    counts = {}
    for split, n, cities in (("train", num_train, TRAIN_CITIES), ("val", num_val, VAL_CITIES)):
        it = range(int(n))
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"synthetic {split}")
        for i in it:
            rng = np.random.default_rng([int(seed), _SPLIT_ID[split], i])
            img, lab = render_scene(width, height, rng)
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_{19 + i:06d}"
            di = os.path.join(out, "leftImg8bit", split, city)
            dl = os.path.join(out, "gtFine", split, city)
            os.makedirs(di, exist_ok=True)
            os.makedirs(dl, exist_ok=True)
            save_png(Image.fromarray(img, "RGB"), os.path.join(di, stem + "_leftImg8bit.png"))
            save_png(Image.fromarray(lab, "L"), os.path.join(dl, stem + "_gtFine_labelIds.png"))
        counts[split] = int(n)
    return counts
