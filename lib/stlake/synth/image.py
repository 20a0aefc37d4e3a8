"""Procedural H&E-like slide images, rendered strip by strip in physical (µm) coordinates.

A :class:`Scene` is a piece of glass with tissue on it, described independently of any resolution:
a smooth tissue field (an irregular blob), four smooth tissue domains (``DOMAINS``), glandular lumens in
the "normal" domain, a list of nuclei (position, size, shape, stain) and periodic fine textures (stroma
fibres, mottling). A :class:`Renderer` draws the scene at a pixel size (µm/px) in horizontal strips, so an
image of any size is produced with bounded memory, and the same scene can be drawn at full resolution and
as a Space Ranger ``tissue_hires_image.png``.

Colours follow the Beer-Lambert stain model: optical density = background + c_H * H_d + c_E * E_d, where
c_H (haematoxylin: nuclei and a little cytoplasm) and c_E (eosin: stroma, cytoplasm) are per-pixel
concentrations and H_d, E_d the stain vectors of the pixel's domain. A 65,536-entry lookup table maps
(domain, quantised c_H, quantised c_E) to RGB. Pixel (row r, column c) has its centre at
``((c + 0.5) * mpp, (r + 0.5) * mpp)`` µm.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from scipy import ndimage

from stlake.synth.markers import draw_markers

DOMAINS = ("tumor", "stroma", "immune", "normal")
#: Target share of each domain among tissue of the capture area.
DOMAIN_FRACTIONS = (0.35, 0.30, 0.15, 0.20)

MID_UM = 1.0  # tissue / domain / stain maps are computed at about this pixel size, then upsampled
COARSE_CELLS = 160  # coarse grid cells across the longer side of a scene
TEXTURE_SIDE = 512  # periodic texture tile (cells)
TEXTURE_CELL_UM = 1.5
E_MAX, H_MAX = 1.6, 2.0  # stain concentrations mapped to 0..127
EDGE_UM = 3.0  # width of the soft tissue border
RAGGED_UM = 12.0  # amplitude of the fine irregularity of the tissue border
BACKGROUND_OD = np.array([0.055, 0.060, 0.045])  # glass: RGB ~ (241, 240, 244)
NOISE_SIGMA = 3.0  # grey levels
NOISE_ROWS, NOISE_COLS = 263, 1031  # period of the (tiled) pixel noise


@dataclass(frozen=True)
class DomainLook:
    """How one tissue domain looks."""

    eosin: tuple[float, float, float]  # OD (R, G, B) per unit of eosin
    eosin_level: float  # mean eosin concentration
    fibre: float  # contrast of the stroma fibre texture
    hema: tuple[float, float, float]  # OD per unit of haematoxylin
    hema_background: float  # haematoxylin outside nuclei (basophilic cytoplasm)
    nuclei_per_mm2: float
    radius_um: tuple[float, float]  # semi-major axis range
    aspect: tuple[float, float]  # semi-minor / semi-major
    stain: tuple[float, float]  # haematoxylin concentration of a nucleus


LOOKS = (
    DomainLook((0.17, 0.52, 0.20), 0.85, 0.25, (0.66, 0.80, 0.24), 0.14, 5000, (3.5, 6.0), (0.65, 1.0), (1.35, 1.85)),
    DomainLook((0.07, 0.64, 0.27), 1.10, 0.80, (0.55, 0.72, 0.30), 0.03, 1200, (5.0, 8.5), (0.18, 0.35), (1.05, 1.45)),
    DomainLook((0.12, 0.44, 0.20), 0.45, 0.15, (0.72, 0.80, 0.20), 0.10, 9000, (2.4, 3.4), (0.85, 1.0), (1.60, 1.95)),
    DomainLook((0.06, 0.55, 0.25), 0.80, 0.35, (0.58, 0.74, 0.30), 0.05, 3500, (3.2, 4.6), (0.75, 1.0), (1.00, 1.40)),
)


# ---------------------------------------------------------------- random fields

def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), max(sigma, 0.5), mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def periodic_noise(rng: np.random.Generator, side: int, sigma_long: float, sigma_short: float,
                   theta: float) -> np.ndarray:
    """Periodic (tileable) noise, smoothed sigma_long along direction ``theta`` and sigma_short across it."""
    white = rng.standard_normal((side, side))
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.fftfreq(side)[None, :]
    along = fx * np.cos(theta) + fy * np.sin(theta)
    across = -fx * np.sin(theta) + fy * np.cos(theta)
    response = np.exp(-2.0 * np.pi ** 2 * ((sigma_long * along) ** 2 + (sigma_short * across) ** 2))
    field = np.fft.ifft2(np.fft.fft2(white) * response).real
    return (field - field.mean()) / (field.std() + 1e-12)


# ---------------------------------------------------------------- scene

@dataclass
class Scene:
    """Tissue on glass, in µm, independent of any pixel size."""

    width_um: float
    height_um: float
    cell_um: float
    logits: np.ndarray  # (Hc, Wc, 4) float32 domain scores; the domain is the argmax
    tissue: np.ndarray  # (Hc, Wc, 2) float32: signed distance-like tissue field in µm (>0 inside), fibre mix
    lumen_cell_um: float
    lumen: np.ndarray  # (Hl, Wl) float32 0..1, 1 = empty lumen
    texture: np.ndarray  # (T, T, 3) float32 periodic: fibre 1, fibre 2, mottle
    nuclei: dict[str, np.ndarray]  # x, y, a, b (µm), angle (deg), level (0..255 = 0..H_MAX)
    fibre_theta: float = 0.0  # orientation of the first fibre texture (radians, image axes)

    @classmethod
    def build(cls, rng: np.random.Generator, width_um: float, height_um: float,
              capture: tuple[float, float, float, float], coverage: float = 0.6) -> Scene:
        """A random scene; ``capture`` = (x0, y0, x1, y1) µm, ``coverage`` = tissue share of the capture area."""
        cell = max(width_um, height_um) / COARSE_CELLS
        hc, wc = int(np.ceil(height_um / cell)) + 1, int(np.ceil(width_um / cell)) + 1
        yy, xx = np.mgrid[0:hc, 0:wc]
        x_um, y_um = (xx + 0.5) * cell, (yy + 0.5) * cell
        x0, y0, x1, y1 = capture
        extent = max(x1 - x0, y1 - y0, cell)
        inside = (x_um >= x0) & (x_um <= x1) & (y_um >= y0) & (y_um <= y1)
        # tissue: an elliptic blob made irregular by two scales of smooth noise, cut at the wanted coverage
        cx = (x0 + x1) / 2 + rng.uniform(-0.05, 0.05) * (x1 - x0)
        cy = (y0 + y1) / 2 + rng.uniform(-0.05, 0.05) * (y1 - y0)
        rx, ry = (x1 - x0) / 2 * rng.uniform(0.75, 0.95), (y1 - y0) / 2 * rng.uniform(0.75, 0.95)
        rot = rng.uniform(0, np.pi)
        u = (x_um - cx) * np.cos(rot) + (y_um - cy) * np.sin(rot)
        v = -(x_um - cx) * np.sin(rot) + (y_um - cy) * np.cos(rot)
        raw = -np.sqrt((u / max(rx, 1e-6)) ** 2 + (v / max(ry, 1e-6)) ** 2)
        raw += 0.30 * smooth_noise(rng, (hc, wc), extent / 5 / cell)
        raw += 0.10 * smooth_noise(rng, (hc, wc), extent / 16 / cell)
        # fall off outside the capture area, so that the tissue mostly lies on it
        out_x = np.maximum(np.maximum(x0 - x_um, x_um - x1), 0.0)
        out_y = np.maximum(np.maximum(y0 - y_um, y_um - y1), 0.0)
        raw -= 4.0 * np.hypot(out_x, out_y) / extent
        raw -= np.quantile(raw[inside], 1.0 - coverage) if inside.any() else np.quantile(raw, 1.0 - coverage)
        gy, gx = np.gradient(raw, cell)
        grad = np.hypot(gx, gy)
        band = np.abs(raw) < np.quantile(np.abs(raw), 0.1)
        scale = float(np.median(grad[band])) if band.any() else float(np.median(grad))
        tissue_um = raw / max(scale, 1e-9)
        # keep the tissue off the image border
        edge = np.minimum(np.minimum(x_um, width_um - x_um), np.minimum(y_um, height_um - y_um))
        tissue_um = np.minimum(tissue_um, edge - 0.03 * extent)
        mix = 1.0 / (1.0 + np.exp(-2.0 * smooth_noise(rng, (hc, wc), extent / 8 / cell)))
        # domains: argmax of four smooth fields, biased so that each takes its share of the tissue
        logits = np.stack([smooth_noise(rng, (hc, wc), extent / 6 / cell) for _ in DOMAINS], axis=2)
        in_tissue = (tissue_um > 0) & inside
        if not in_tissue.any():
            in_tissue = tissue_um > 0
        target = np.log(np.asarray(DOMAIN_FRACTIONS))
        for _ in range(60):
            winner = np.argmax(logits[in_tissue], axis=1)
            share = np.bincount(winner, minlength=len(DOMAINS)) / max(winner.size, 1)
            logits += 0.3 * (target - np.log(np.maximum(share, 1e-3)))[None, None, :]
        # periodic fine texture: two fibre orientations and an isotropic mottle
        theta = rng.uniform(0, np.pi)
        texture = np.stack([periodic_noise(rng, TEXTURE_SIDE, 9.0, 1.0, theta),
                            periodic_noise(rng, TEXTURE_SIDE, 9.0, 1.0, theta + np.pi / 3),
                            periodic_noise(rng, TEXTURE_SIDE, 2.5, 2.5, 0.0)], axis=2).astype(np.float32)
        scene = cls(width_um, height_um, cell, logits.astype(np.float32),
                    np.stack([tissue_um, mix], axis=2).astype(np.float32), 0.0, np.zeros((1, 1), np.float32),
                    texture, {}, float(theta))
        scene._add_lumens(rng)
        scene._add_nuclei(rng)
        return scene

    # -- point queries (bilinear, same convention as the rendered maps)

    def _coarse(self, field: np.ndarray, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        coords = [np.asarray(y_um, np.float64) / self.cell_um - 0.5, np.asarray(x_um, np.float64) / self.cell_um - 0.5]
        return ndimage.map_coordinates(field, coords, order=1, mode="nearest")

    def domain_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Domain index (into ``DOMAINS``) at points."""
        scores = np.stack([self._coarse(self.logits[:, :, k], x_um, y_um) for k in range(len(DOMAINS))], axis=1)
        return np.argmax(scores, axis=1).astype(np.int8)

    def tissue_um_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Signed distance-like tissue value in µm at points (> 0 inside the tissue)."""
        return self._coarse(self.tissue[:, :, 0], x_um, y_um)

    def lumen_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Lumen value (0..1, 1 = empty lumen) at points."""
        coords = [np.asarray(y_um, np.float64) / self.lumen_cell_um - 0.5,
                  np.asarray(x_um, np.float64) / self.lumen_cell_um - 0.5]
        return ndimage.map_coordinates(self.lumen, coords, order=1, mode="nearest")

    def tissue_fraction(self, x_um: np.ndarray, y_um: np.ndarray, radius_um: float) -> np.ndarray:
        """Approximate share of a disc of ``radius_um`` covered by tissue."""
        return np.clip(self.tissue_um_at(x_um, y_um) / max(radius_um, 1e-6) * 0.5 + 0.5, 0.0, 1.0)

    # -- construction helpers

    def _add_lumens(self, rng: np.random.Generator) -> None:
        cell = max(2.0, max(self.width_um, self.height_um) / 4000.0)
        hl, wl = int(np.ceil(self.height_um / cell)) + 1, int(np.ceil(self.width_um / cell)) + 1
        raster = np.zeros((hl, wl), np.uint8)
        area_mm2 = self.width_um * self.height_um / 1e6
        n = rng.poisson(40.0 * area_mm2)
        x, y = rng.uniform(0, self.width_um, n), rng.uniform(0, self.height_um, n)
        keep = (self.domain_at(x, y) == DOMAINS.index("normal")) & (self.tissue_um_at(x, y) > 60.0)
        x, y = x[keep], y[keep]
        a = rng.uniform(12.0, 40.0, len(x))
        b = a * rng.uniform(0.5, 1.0, len(x))
        angle = rng.uniform(0, 180, len(x))
        for i in range(len(x)):
            centre = (int(round((x[i] / cell - 0.5) * 16)), int(round((y[i] / cell - 0.5) * 16)))
            axes = (max(int(round(a[i] / cell * 16)), 1), max(int(round(b[i] / cell * 16)), 1))
            cv2.ellipse(raster, centre, axes, float(angle[i]), 0, 360, (255,), -1, cv2.LINE_AA, 4)
        self.lumen_cell_um = cell
        self.lumen = raster.astype(np.float32) / 255.0

    def _add_nuclei(self, rng: np.random.Generator) -> None:
        area_mm2 = self.width_um * self.height_um / 1e6
        parts: list[dict[str, np.ndarray]] = []
        for d, look in enumerate(LOOKS):
            n = rng.poisson(look.nuclei_per_mm2 * area_mm2)
            x, y = rng.uniform(0, self.width_um, n), rng.uniform(0, self.height_um, n)
            keep = (self.domain_at(x, y) == d) & (self.tissue_um_at(x, y) > 1.0) & (self.lumen_at(x, y) < 0.2)
            x, y = x[keep], y[keep]
            m = len(x)
            a = rng.uniform(*look.radius_um, m)
            b = a * rng.uniform(*look.aspect, m)
            if look.fibre > 0.5:  # spindle nuclei follow the fibres
                mix = self._coarse(self.tissue[:, :, 1], x, y)
                angle = np.where(mix > 0.5, 0.0, 60.0) + rng.normal(0, 12, m)
                angle += np.degrees(self.fibre_theta)
            else:
                angle = rng.uniform(0, 180, m)
            level = np.clip(rng.uniform(*look.stain, m) / H_MAX * 255.0, 0, 255)
            parts.append({"x": x, "y": y, "a": a, "b": b, "angle": angle, "level": level})
        nuclei = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(nuclei["y"], kind="stable")
        self.nuclei = {k: v[order] for k, v in nuclei.items()}



# ---------------------------------------------------------------- rendering

def stain_lut() -> np.ndarray:
    """(65536, 3) uint8 RGB for index ``domain << 14 | qH << 7 | qE``."""
    q = np.arange(128, dtype=np.float64) / 127.0
    lut = np.zeros((len(DOMAINS), 128, 128, 3), np.float64)
    for d, look in enumerate(LOOKS):
        od = (BACKGROUND_OD[None, None, :]
              + (q * H_MAX)[:, None, None] * np.asarray(look.hema)[None, None, :]
              + (q * E_MAX)[None, :, None] * np.asarray(look.eosin)[None, None, :])
        lut[d] = 255.0 * np.exp(-od)
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8).reshape(-1, 3)


_LUT: Optional[np.ndarray] = None


def _lut() -> np.ndarray:
    global _LUT
    if _LUT is None:
        _LUT = stain_lut()
    return _LUT


class Renderer:
    """Draws a :class:`Scene` at ``mpp`` µm/px into a ``width`` x ``height`` image, one strip at a time."""

    def __init__(self, scene: Scene, width: int, height: int, mpp: float, seed: int = 0) -> None:
        self.scene, self.width, self.height, self.mpp = scene, int(width), int(height), float(mpp)
        self.factor = max(1, int(round(MID_UM / self.mpp)))
        f = self.factor
        self.mid_width = -(-self.width // f)
        centres = (np.arange(self.mid_width) + 0.5) * f * self.mpp
        self._mid_x_um = centres
        nuclei = scene.nuclei
        # nuclei in 1/16 px fixed point (cv2 drawing with shift=4), sorted by row
        self._ny = nuclei["y"] / self.mpp - 0.5
        self._nx16 = np.rint((nuclei["x"] / self.mpp - 0.5) * 16).astype(np.int64)
        self._ny16 = np.rint(self._ny * 16).astype(np.int64)
        major = np.maximum(nuclei["a"] / self.mpp, 0.5)
        self._na16 = np.maximum(np.rint(major * 16), 1).astype(np.int64)
        self._nb16 = np.maximum(np.rint(np.maximum(nuclei["b"] / self.mpp, 0.4) * 16), 1).astype(np.int64)
        self._nangle = nuclei["angle"].astype(np.float64)
        self._nlevel = nuclei["level"].astype(np.int64)
        self._nreach = float(major.max()) + 2 if len(major) else 2.0
        rng = np.random.default_rng(seed)
        noise = np.rint(rng.normal(0.0, NOISE_SIGMA, (NOISE_ROWS, NOISE_COLS, 3))).clip(-40, 40)
        reps = -(-self.width // NOISE_COLS)
        noise = np.tile(noise, (1, reps, 1))[:, :self.width]
        self._noise_pos = np.ascontiguousarray(np.maximum(noise, 0).astype(np.uint8))
        self._noise_neg = np.ascontiguousarray(np.maximum(-noise, 0).astype(np.uint8))
        # chromatin grain: a smooth random factor (150..255)/256 applied to the nuclear stain
        grain = ndimage.gaussian_filter(rng.standard_normal((NOISE_ROWS, NOISE_COLS)), 1.0, mode="wrap")
        grain = np.clip(215.0 + 35.0 * grain / grain.std(), 150, 255).astype(np.uint8)
        self._grain = np.ascontiguousarray(np.tile(grain, (1, reps))[:, :self.width])
        self._blur = 0.6

    # -- mid-resolution maps

    def _mid_maps(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Domain (uint8), quantised haematoxylin background and eosin (uint8 0..127) for mid rows r0..r1."""
        scene, f = self.scene, self.factor
        hm = r1 - r0
        y_um = (np.arange(r0, r1) + 0.5) * f * self.mpp
        x_um = self._mid_x_um

        def maps(cell: float, period: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
            u = x_um / cell - 0.5
            v = y_um / cell - 0.5
            if period:
                u, v = np.mod(u, period), np.mod(v, period)
            mx = np.empty((hm, len(u)), np.float32)
            my = np.empty((hm, len(u)), np.float32)
            mx[:] = u[None, :]
            my[:] = v[:, None]
            return mx, my

        mx, my = maps(scene.cell_um)
        logits = cv2.remap(scene.logits, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        tissue = cv2.remap(scene.tissue, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mx, my = maps(scene.lumen_cell_um)
        lumen = cv2.remap(scene.lumen, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mx, my = maps(TEXTURE_CELL_UM, TEXTURE_SIDE)
        texture = cv2.remap(scene.texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        logits = logits.reshape(hm, -1, len(DOMAINS))
        domain = np.argmax(logits, axis=2).astype(np.uint8)
        mottle = texture[:, :, 2]
        alpha = np.clip((tissue[:, :, 0] + RAGGED_UM * 0.5 * mottle) / EDGE_UM + 0.5, 0.0, 1.0) * (1.0 - lumen)
        mix = tissue[:, :, 1]
        fibre = mix * texture[:, :, 0] + (1.0 - mix) * texture[:, :, 1]
        level = np.array([look.eosin_level for look in LOOKS], np.float32)[domain]
        contrast = np.array([look.fibre for look in LOOKS], np.float32)[domain]
        eosin = alpha * level * np.clip(1.0 + 0.5 * contrast * fibre + 0.08 * mottle, 0.05, None)
        hbg = np.array([look.hema_background for look in LOOKS], np.float32)[domain]
        hema = alpha * hbg * np.clip(1.0 + 0.35 * mottle, 0.0, None)
        q_e = np.clip(eosin * (127.0 / E_MAX) + 0.5, 0, 127).astype(np.uint8)
        q_h = np.clip(hema * (127.0 / H_MAX) + 0.5, 0, 127).astype(np.uint8)
        return domain, q_h, q_e

    def _nuclei_mask(self, y0: int, y1: int) -> np.ndarray:
        """Nuclear haematoxylin (0..255) for full-resolution rows y0..y1, drawn with a margin and blurred."""
        margin = 4
        top, bottom = y0 - margin, y1 + margin
        mask: np.ndarray = np.zeros((bottom - top, self.width), np.uint8)
        lo = np.searchsorted(self._ny, top - self._nreach, side="left")
        hi = np.searchsorted(self._ny, bottom + self._nreach, side="right")
        ellipse, aa = cv2.ellipse, cv2.LINE_AA
        for x, y, a, b, angle, level in zip(self._nx16[lo:hi].tolist(), (self._ny16[lo:hi] - top * 16).tolist(),
                                            self._na16[lo:hi].tolist(), self._nb16[lo:hi].tolist(),
                                            self._nangle[lo:hi].tolist(), self._nlevel[lo:hi].tolist()):
            ellipse(mask, (x, y), (a, b), angle, 0, 360, level, -1, aa, 4)
        if self._blur > 0:
            mask = cv2.GaussianBlur(mask, (0, 0), self._blur)
        return mask[margin:margin + (y1 - y0)]

    def strip(self, y0: int, y1: int) -> np.ndarray:
        """RGB uint8 rows ``y0 .. y1 - 1`` of the image (no markers)."""
        f = self.factor
        r0 = max(y0 // f - 1, 0)
        r1 = min(-(-y1 // f) + 1, -(-self.height // f) + 1)
        domain, q_h, q_e = self._mid_maps(r0, r1)
        if f > 1:
            size = (self.mid_width * f, (r1 - r0) * f)
            domain = cv2.resize(domain, size, interpolation=cv2.INTER_NEAREST)
            q_h = cv2.resize(q_h, size, interpolation=cv2.INTER_LINEAR)
            q_e = cv2.resize(q_e, size, interpolation=cv2.INTER_LINEAR)
        cut = slice(y0 - r0 * f, y1 - r0 * f)
        domain, q_h, q_e = domain[cut, :self.width], q_h[cut, :self.width], q_e[cut, :self.width]
        nuclei = self._nuclei_mask(y0, y1)
        rows = np.arange(y0, y1) % NOISE_ROWS
        nuclei = cv2.multiply(nuclei, np.take(self._grain, rows, axis=0), scale=1.0 / 256.0)
        q_h = np.minimum(cv2.add(q_h, np.right_shift(nuclei, 1)), 127)
        index = domain.astype(np.uint16) << 14
        index |= q_h.astype(np.uint16) << 7
        index |= q_e
        rgb = _lut()[index]
        rgb = cv2.add(rgb, np.take(self._noise_pos, rows, axis=0))
        rgb = cv2.subtract(rgb, np.take(self._noise_neg, rows, axis=0))
        return rgb


@dataclass
class Markers:
    """Integer pixel centres and codes of the spot markers drawn on an image."""

    x: np.ndarray
    y: np.ndarray
    code: np.ndarray

    @classmethod
    def none(cls) -> Markers:
        """No markers."""
        empty = np.zeros(0, np.int64)
        return cls(empty, empty, empty)


def strips(renderer: Renderer, markers: Optional[Markers] = None, rows: int = 512) -> Iterator[tuple[int, np.ndarray]]:
    """``(y0, rgb)`` strips of ``rows`` rows (the last one shorter) with the markers drawn."""
    markers = markers or Markers.none()
    order = np.argsort(markers.y, kind="stable")
    ys, xs, codes = markers.y[order], markers.x[order], markers.code[order]
    for y0 in range(0, renderer.height, rows):
        y1 = min(y0 + rows, renderer.height)
        rgb = renderer.strip(y0, y1)
        lo = np.searchsorted(ys, y0 - 16, side="left")
        hi = np.searchsorted(ys, y1 + 16, side="right")
        draw_markers(rgb, y0, xs[lo:hi], ys[lo:hi], codes[lo:hi])
        yield y0, rgb


def render(renderer: Renderer, markers: Optional[Markers] = None, rows: int = 512) -> np.ndarray:
    """The whole image as one RGB array."""
    image = np.empty((renderer.height, renderer.width, 3), np.uint8)
    for y0, rgb in strips(renderer, markers, rows):
        image[y0:y0 + len(rgb)] = rgb
    return image
