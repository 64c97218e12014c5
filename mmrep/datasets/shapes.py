"""A small, deterministic COCO-format data set of coloured shapes, made locally.

The demo and tests need detection data on a fresh machine without downloads.
Each image holds 1-4 filled circles, squares and triangles over a noisy
background; annotations carry boxes and polygon masks, as COCO instances.
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('circle', 'square', 'triangle')
PALETTE = [(220, 20, 60), (0, 130, 200), (60, 180, 75)]


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list:
    if kind == 'circle':
        n = 24
        return [(cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n))
                for i in range(n)]
    corners = 4 if kind == 'square' else 3
    return [(cx + r * math.cos(angle + 2 * math.pi * i / corners),
             cy + r * math.sin(angle + 2 * math.pi * i / corners)) for i in range(corners)]


def _image(rng: np.random.Generator, image_id: int, size: int, ann_start: int):
    base = rng.integers(40, 200, size=3)
    pixels = np.clip(base + rng.normal(0, 18, size=(size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    anns, placed = [], []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            r = float(rng.uniform(size * 0.08, size * 0.22))
            cx, cy = rng.uniform(r, size - r, size=2)
            if all(math.hypot(cx - x, cy - y) > r + q for x, y, q in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        label = int(rng.integers(len(CLASSES)))
        poly = _polygon(CLASSES[label], cx, cy, r, float(rng.uniform(0, math.pi)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.polygon(poly, fill=colour)
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        x0, y0 = max(min(xs), 0), max(min(ys), 0)
        x1, y1 = min(max(xs), size), min(max(ys), size)
        area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))
        anns.append(dict(id=ann_start + len(anns), image_id=image_id, category_id=label + 1,
                         bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                         area=round(area, 2), iscrowd=0,
                         segmentation=[[round(v, 2) for p in poly for v in p]]))
    return img, anns


def make_shapes_dataset(root: str, num_train: int = 160, num_val: int = 40, size: int = 256,
                        seed: int = 0) -> dict:
    """Write ``root/{train,val}/*.png`` and ``root/annotations/{train,val}.json``.

    Deterministic for a given seed. Returns the annotation file paths. An
    existing complete data set is left as it is.
    """
    paths = {split: osp.join(root, 'annotations', f'{split}.json') for split in ('train', 'val')}
    if all(osp.isfile(p) for p in paths.values()):
        return paths
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    rng = np.random.default_rng(seed)
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(CLASSES)]
    for split, count in (('train', num_train), ('val', num_val)):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for k in range(count):
            image_id = k + 1
            img, anns = _image(rng, image_id, size, len(annotations) + 1)
            name = f'{split}_{k:04d}.png'
            img.save(osp.join(root, split, name))
            images.append(dict(id=image_id, file_name=name, width=size, height=size))
            annotations.extend(anns)
        tmp = paths[split] + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
        os.replace(tmp, paths[split])  # written last: its presence means the split is complete
    return paths
