"""``mvtec``: MVTec-AD-style image folders, one per "domain" (category)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<type>/*.png          (type "good" or a defect name)
    <root>/<category>/ground_truth/<type>/<stem>_mask.png   (optional)

png, jpg, bmp or tiff; RGB or grayscale; sizes may mix (each map is resized to the backbone's
input on its own). No condition (``unknown``), so no gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hdmap_ad.data.kinds.base import UNKNOWN, DatasetKind, ShapeCheck, list_maps, map_row
from hdmap_ad.data.maps import IMAGE_SUFFIXES
from hdmap_ad.errors import InputError


class MvtecKind(DatasetKind):
    name = "mvtec"
    summary = ("MVTec-AD-style folders: root/<category>/train/good, test/<type>/, optional "
               "ground_truth/<type>/<name>_mask.png; no cold/warm condition")
    conditions = False
    masks = True

    def scan(self, domain_root: Path, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        check, rows = ShapeCheck(mixed_sizes=True), []
        test_root = domain_root / "test"
        if not test_root.is_dir():
            raise InputError(f"{test_root}: folder missing (expected MVTec layout train/good, "
                             "test/*)")
        types = sorted(p.name for p in test_root.iterdir() if p.is_dir())
        if not types:
            raise InputError(f"{test_root}: no test/<type> folders")
        folders = [("train", "good")] + [("test", t) for t in types]
        for split, label in folders:
            for idx, path in list_maps(domain_root / split / label, IMAGE_SUFFIXES,
                                       numbered=False):
                mask = ""
                if split == "test" and label != "good":
                    candidate = domain_root / "ground_truth" / label / f"{path.stem}_mask.png"
                    mask = str(candidate) if candidate.is_file() else ""
                rows.append(map_row(path, split, label, idx, UNKNOWN, mask, check.read(path)))
        return rows
