"""The calibrate op's checks of the calibration set, each on images made to break it one way.

The images are the demo's generated shapes (the set its detector was trained on) written as PNG; each
broken set is derived from the good one the way a user's set goes wrong: too few images, copies,
darker or BGR-saved images, images padded to another shape before. No torch: the op is numpy + Pillow.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolobuild.context import OpContext
from yolobuild.errors import UserError
from yolobuild.ops.inputs import calibrate, prepare_inputs

PRE = {"height": 256, "width": 256, "resize": "letterbox", "color": "rgb", "scale": 1 / 255.0, "pad_value": 114}


def _write(folder: Path, images: list[np.ndarray], prefix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{prefix}_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """(root, calib images, eval images): 24 + 24 demo shapes at 256 px, tinted red as a camera might be
    (so red and blue are told apart)."""
    from yolobuild.data.shapes import _rng, render

    root = tmp_path_factory.mktemp("calib")
    tint = np.asarray([1.0, 0.85, 0.55])

    def make(split, n):
        return [np.clip(render(_rng(0, split, i), 256)[0] * tint, 0, 255).astype(np.uint8) for i in range(n)]

    calib, evaluation = make("calib", 24), make("eval", 24)
    _write(root / "eval", evaluation, "eval")
    return root, calib, evaluation


def _probe(root: Path) -> Path:
    out = root / "probe.npz"
    if not out.exists():
        ctx = OpContext("prepare_inputs", "prepare_inputs", {**PRE, "parity_count": 4, "eval_count": None},
                        {"images": root / "eval"}, {"probe.npz": out}, root / "scratch", log=lambda _m: None)
        ctx.scratch.mkdir(exist_ok=True)
        prepare_inputs(ctx)
    return out


def _calibrate(root: Path, folder: Path, count: int | None = None, against_eval: bool = True) -> dict:
    """The calibrate op on `folder` (count: every image in it unless given)."""
    out = folder.parent / f"{folder.name}.calib.npz"
    count = len(list(folder.iterdir())) if count is None else count
    inputs = {"images": folder, **({"probe": _probe(root)} if against_eval else {})}
    ctx = OpContext("calibrate", "calibrate", {**PRE, "count": count}, inputs, {"calib.npz": out},
                    folder.parent / "scratch", log=lambda _m: None)
    ctx.scratch.mkdir(exist_ok=True)
    calibrate(ctx)
    assert out.is_file()
    return ctx.results


def _failed(results: dict) -> dict[str, str]:
    assert results["warnings"] == [c["detail"] for c in results["checks"] if not c["ok"]]
    return {c["check"]: c["detail"] for c in results["checks"] if not c["ok"]}


def test_a_good_set_passes_every_check(shapes):
    root, calib, _ = shapes
    res = _calibrate(root, _write(root / "good", calib, "c"))
    assert {c["check"] for c in res["checks"]} == {"count", "duplicates", "statistics", "letterbox", "aspect"}
    assert _failed(res) == {}, res["checks"]
    assert res["images"] == 24


def test_too_few_images_and_fewer_than_asked(shapes):
    root, calib, _ = shapes
    few = _failed(_calibrate(root, _write(root / "few", calib[:8], "c"), count=8))
    assert list(few) == ["count"] and "8 calibration image(s)" in few["count"] and "at least 16" in few["count"]
    short = _failed(_calibrate(root, _write(root / "short", calib[:20], "c"), count=64))
    assert "64 calibration images asked for" in short["count"] and "20 available" in short["count"]


def test_duplicates_are_named(shapes):
    root, calib, _ = shapes
    folder = _write(root / "dups", calib[:20], "c")
    for i in range(3):   # the same photo saved under another name
        shutil.copyfile(folder / f"c_{i:03d}.png", folder / f"copy_{i:03d}.png")
    failed = _failed(_calibrate(root, folder))
    assert list(failed) == ["duplicates"], failed
    assert "3 of 23" in failed["duplicates"] and "copy_000.png = c_000.png" in failed["duplicates"]


def test_darker_images_are_far_from_the_eval_set(shapes):
    root, calib, _ = shapes
    dark = [(img * 0.35).astype(np.uint8) for img in calib]
    failed = _failed(_calibrate(root, _write(root / "dark", dark, "c")))
    assert list(failed) == ["statistics"], failed
    assert "far from the evaluation images" in failed["statistics"] and "darker" in failed["statistics"]
    # without evaluation images to compare with there is nothing to say
    assert _failed(_calibrate(root, root / "dark", against_eval=False)) == {}


def test_bgr_images_are_recognised(shapes):
    root, calib, _ = shapes
    failed = _failed(_calibrate(root, _write(root / "bgr", [img[:, :, ::-1].copy() for img in calib], "c")))
    assert list(failed) == ["statistics"], failed
    assert "red and blue look swapped" in failed["statistics"]


def test_images_letterboxed_before_with_another_pad_and_shape(shapes):
    """Someone letterboxed the calibration set to 256x384 (2:3) with black bars before handing it over."""
    root, calib, _ = shapes
    padded = []
    for img in calib:
        canvas = np.zeros((384, 256, 3), dtype=np.uint8)
        canvas[64:320] = img
        padded.append(canvas)
    failed = _failed(_calibrate(root, _write(root / "padded", padded, "c")))
    assert {"letterbox", "aspect"} <= set(failed), failed   # (the black bars move the statistics too)
    assert "24 of 24 calibration images carry uniform borders already (value 0" in failed["letterbox"]
    assert "pad 114" in failed["letterbox"]
    assert "0.67:1" in failed["aspect"] and "1.00:1" in failed["aspect"]


def test_no_usable_image_is_an_error(shapes):
    root, _, _ = shapes
    (root / "empty").mkdir()
    with pytest.raises(UserError, match="dataset.calib.path: .* holds no images"):
        _calibrate(root, root / "empty")
