#!/usr/bin/env python3
"""Run this build's detector on images, on the board or on a PC.

Needs numpy, Pillow and the runtime deploy.json names (onnxruntime, openvino, rknnlite or
sophon.sail), nothing else: this file is the same for every build, and everything it does
(input size and layout, who scales the pixels, the head's decode, thresholds) is read from
deploy.json next to it, so a port to C++ can follow the same steps.

    python infer.py IMAGE... [--json OUT.json] [--draw OUT.png] [--conf X] [--iou X]
    python infer.py --check          rerun the golden samples in samples/; exit 1 at the first mismatch
    python infer.py --benchmark 100  time the model call (batch 1, after warm-up): p50/p90, throughput

Exit codes: 0 done, 1 a golden sample does not match, 2 bad input (one line, no traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXIT_MISMATCH, EXIT_USAGE = 1, 2


class Usage(Exception):
    """Bad input from the user: printed as one line, exit 2."""


# ----------------------------------------------------------------------------- runtimes
# One small function per runtime: open the model, return run(x) -> list of output arrays.

def open_onnxruntime(model: Path, spec: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def open_openvino(model: Path, spec: dict):
    import openvino as ov

    compiled = ov.Core().compile_model(str(model), "CPU")
    return lambda x: [np.asarray(v) for v in compiled([x]).values()]


def open_rknnlite(model: Path, spec: dict):
    from rknnlite.api import RKNNLite

    rknn = RKNNLite()
    if rknn.load_rknn(str(model)) != 0 or rknn.init_runtime() != 0:
        raise Usage(f"rknnlite could not load {model.name} on this board")
    return lambda x: rknn.inference(inputs=[x])


def open_sail(model: Path, spec: dict):
    import sophon.sail as sail

    engine = sail.Engine(str(model), 0, sail.IOMode.SYSIO)
    graph = engine.get_graph_names()[0]
    name = engine.get_input_names(graph)[0]
    outs = engine.get_output_names(graph)
    return lambda x: [engine.process(graph, {name: x})[o] for o in outs]


RUNTIMES = {"onnxruntime": open_onnxruntime, "openvino": open_openvino, "rknnlite": open_rknnlite,
            "sophon.sail": open_sail}


def open_model(spec: dict, folder: Path):
    name = spec["runtime"]["name"]
    if name not in RUNTIMES:
        raise Usage(f"deploy.json runtime {name!r}: infer.py has no runner for it (runners: {', '.join(RUNTIMES)})")
    model = folder / spec["model"]["file"]
    try:
        return RUNTIMES[name](model, spec)
    except ImportError:
        raise Usage(f"runtime {name!r} is not installed here: {spec['runtime']['install']}") from None


# ----------------------------------------------------------------------------- preprocessing

def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise Usage(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def letterbox(rgb: np.ndarray, height: int, width: int, pad_value: int):
    """Resize keeping the aspect ratio (bilinear), centre, pad -> canvas, (scale, pad_x, pad_y)."""
    from PIL import Image

    h0, w0 = rgb.shape[:2]
    scale = min(height / h0, width / w0)
    nh, nw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    resized = rgb if (nh, nw) == (h0, w0) else np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    top, left = (height - nh) // 2, (width - nw) // 2
    canvas = np.full((height, width, 3), pad_value, dtype=np.uint8)
    canvas[top:top + nh, left:left + nw] = resized
    return canvas, (scale, float(left), float(top))


def network_input(canvas: np.ndarray, pre: dict) -> np.ndarray:
    """The letterboxed RGB canvas as the model takes it (deploy.json preprocessing.feed)."""
    feed = pre["feed"]
    x = canvas[None]
    if feed["layout"] == "nchw":
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x)
    if feed["scale_applied_by"] == "application":
        return x.astype(np.float32) / np.float32(1.0 / float(pre["scale"]))
    return x.astype(feed["dtype"])


# ----------------------------------------------------------------------------- decode

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def grid_xy(ny: int, nx: int):
    yv, xv = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    return xv, yv


def decode_yolov5(t: np.ndarray, anchors, stride: float, nc: int) -> np.ndarray:
    """One level (na*(5+nc), ny, nx): sigmoid all; xy = (2p - 0.5 + cell) * stride, wh = (2p)^2 * anchor."""
    no = nc + 5
    _, ny, nx = t.shape
    na = t.shape[0] // no
    p = sigmoid(t.reshape(na, no, ny, nx).transpose(0, 2, 3, 1).astype(np.float64))
    xv, yv = grid_xy(ny, nx)
    a = np.asarray(anchors, dtype=np.float64).reshape(na, 1, 1, 2)
    x = (p[..., 0] * 2 - 0.5 + xv) * stride
    y = (p[..., 1] * 2 - 0.5 + yv) * stride
    wh = (p[..., 2:4] * 2) ** 2 * a
    return np.concatenate((x[..., None], y[..., None], wh, p[..., 4:]), -1).reshape(-1, no)


def decode_darknet(t: np.ndarray, anchors, stride: float, nc: int, scale_x_y: float = 1.0) -> np.ndarray:
    """One Darknet [yolo] level: xy = (sigmoid * sxy - (sxy - 1)/2 + cell) * stride, wh = exp(t) * anchor."""
    no = nc + 5
    _, ny, nx = t.shape
    na = t.shape[0] // no
    t = t.reshape(na, no, ny, nx).transpose(0, 2, 3, 1).astype(np.float64)
    xv, yv = grid_xy(ny, nx)
    a = np.asarray(anchors, dtype=np.float64).reshape(na, 1, 1, 2)
    shift = (scale_x_y - 1) / 2
    x = (sigmoid(t[..., 0]) * scale_x_y - shift + xv) * stride
    y = (sigmoid(t[..., 1]) * scale_x_y - shift + yv) * stride
    wh = np.exp(t[..., 2:4]) * a
    return np.concatenate((x[..., None], y[..., None], wh, sigmoid(t[..., 4:])), -1).reshape(-1, no)


def decode_dfl(t: np.ndarray, stride: float, nc: int) -> np.ndarray:
    """One anchor-free level (4*reg_max + nc, ny, nx): softmax-expected distances (left, top, right,
    bottom) from the cell centre, in cells (reg_max 1: the channels themselves); class scores sigmoid;
    objectness 1 (score = class score)."""
    c, ny, nx = t.shape
    reg_max = (c - nc) // 4
    t = t.reshape(c, ny * nx).astype(np.float64)
    bins = t[:4 * reg_max].reshape(4, reg_max, -1)
    if reg_max == 1:     # no DFL (YOLO26): the box channels are the distances themselves
        dist = bins[:, 0]
    else:
        e = np.exp(bins - bins.max(1, keepdims=True))
        dist = (e / e.sum(1, keepdims=True) * np.arange(reg_max).reshape(1, -1, 1)).sum(1)   # (4, cells)
    xv, yv = grid_xy(ny, nx)
    cx, cy = xv.ravel() + 0.5, yv.ravel() + 0.5
    left, top, right, bottom = dist
    x = (cx + (right - left) / 2) * stride
    y = (cy + (bottom - top) / 2) * stride
    w, h = (left + right) * stride, (top + bottom) * stride
    obj = np.ones_like(x)
    return np.concatenate((np.stack((x, y, w, h, obj), 1), sigmoid(t[4 * reg_max:]).T), 1)


def raw_levels(outputs: list[np.ndarray], head: dict, height: int, width: int) -> list[np.ndarray]:
    """Per-level maps as (C, ny, nx) in stride order, whatever order and layout (NCHW / NHWC) the runtime gives."""
    sizes = {stride: (height // int(stride), width // int(stride)) for stride in head["strides"]}
    by_level = {}
    for o in outputs:
        o = np.asarray(o)[0]
        nchw = [s for s, hw in sizes.items() if o.shape[1:] == hw]
        nhwc = [s for s, hw in sizes.items() if o.shape[:2] == hw]
        if nchw:
            by_level[nchw[0]] = o
        elif nhwc:
            by_level[nhwc[0]] = o.transpose(2, 0, 1)
    missing = [s for s in head["strides"] if s not in by_level]
    if missing:
        raise Usage(f"the model's outputs {[np.shape(o) for o in outputs]} hold no map for stride(s) {missing}")
    return [by_level[s] for s in head["strides"]]


def decode(outputs: list[np.ndarray], spec: dict) -> np.ndarray:
    """The model's outputs for one image -> (N, 5 + nc) rows: x, y, w, h (input pixels), objectness, class scores."""
    head, nc = spec["head"], spec["nc"]
    anchor_free = head["kind"] == "anchor_free"
    if head["layout"] == "raw":
        maps = raw_levels(outputs, head, spec["input"]["height"], spec["input"]["width"])
        if head["decode"] == "dfl":
            rows = [decode_dfl(t, s, nc) for t, s in zip(maps, head["strides"])]
        elif head["decode"] == "darknet":
            rows = [decode_darknet(t, a, s, nc, float(head.get("scale_x_y", 1.0)))
                    for t, a, s in zip(maps, head["anchors_px"], head["strides"])]
        else:
            rows = [decode_yolov5(t, a, s, nc) for t, a, s in zip(maps, head["anchors_px"], head["strides"])]
        return np.concatenate(rows, 0).astype(np.float32)
    if head["layout"] == "split":
        rows = np.concatenate([np.asarray(o)[0] for o in outputs], -1)
    else:
        rows = np.asarray(outputs[0])[0]
        width = 4 + nc if anchor_free else 5 + nc
        if rows.shape[-1] != width and rows.shape[0] == width:   # (4+nc, N), as upstream YOLOv8 writes it
            rows = rows.T
    rows = rows.astype(np.float32)
    if anchor_free:
        rows = np.concatenate((rows[:, :4], np.ones((len(rows), 1), np.float32), rows[:, 4:]), 1)
    return rows


# ----------------------------------------------------------------------------- NMS

def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:4], boxes[:, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area_a = (box[2] - box[0]) * (box[3] - box[1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area_a + area_b - inter + 1e-9)


def nms(rows: np.ndarray, conf: float, iou: float, max_det: int, class_offset: float = 7680.0) -> np.ndarray:
    """(N, 5+nc) rows -> (K, 6): x1, y1, x2, y2, score, class. score = objectness * best class score;
    greedy and class-aware (boxes of different classes never suppress each other)."""
    rows = rows[rows[:, 4] > conf]
    scores = rows[:, 5:] * rows[:, 4:5]
    cls = scores.argmax(1) if len(rows) else np.zeros(0, np.int64)
    score = scores[np.arange(len(rows)), cls]
    keep_conf = score > conf
    rows, score, cls = rows[keep_conf], score[keep_conf], cls[keep_conf]
    boxes = np.empty((len(rows), 4), np.float32)
    boxes[:, :2] = rows[:, :2] - rows[:, 2:4] / 2
    boxes[:, 2:] = rows[:, :2] + rows[:, 2:4] / 2
    shifted = boxes + cls[:, None] * class_offset
    order, keep = np.argsort(-score, kind="stable"), []
    while order.size:
        i = order[0]
        keep.append(i)
        order = order[1:][iou_one_to_many(shifted[i], shifted[order[1:]]) <= iou] if order.size > 1 else order[1:]
    keep = np.asarray(keep[:max_det], dtype=np.int64)
    return np.concatenate((boxes[keep], score[keep, None], cls[keep, None].astype(np.float32)), 1)


def detections(outputs: list[np.ndarray], spec: dict, conf: float, iou: float) -> np.ndarray:
    """The model's outputs for one image -> (K, 6) x1, y1, x2, y2 (input pixels), score, class. The top-k head's
    rows are final already (best first): only the score threshold applies; every other layout decodes, then NMS."""
    max_det = int(spec["postprocess"]["max_det"])
    if spec["head"]["layout"] == "topk":
        rows = np.asarray(outputs[0])[0].astype(np.float32)
        return rows[rows[:, 4] > conf][:max_det]
    return nms(decode(outputs, spec), conf, iou, max_det)


# ----------------------------------------------------------------------------- one image

def detect(run, spec: dict, path: Path, conf: float, iou: float) -> dict:
    pre, inp = spec["preprocessing"], spec["input"]
    rgb = load_rgb(path)
    canvas, (scale, pad_x, pad_y) = letterbox(rgb, inp["height"], inp["width"], int(pre["pad_value"]))
    outputs = run(network_input(canvas, pre))
    dets = detections(list(outputs), spec, conf, iou)
    h0, w0 = rgb.shape[:2]
    found = []
    for x1, y1, x2, y2, score, c in dets.tolist():
        box = [(x1 - pad_x) / scale, (y1 - pad_y) / scale, (x2 - pad_x) / scale, (y2 - pad_y) / scale]
        box = [min(max(v, 0.0), float(w0 if k % 2 == 0 else h0)) for k, v in enumerate(box)]
        found.append({"class": int(c), "name": spec["names"][int(c)], "score": round(score, 6),
                      "box": [round(v, 3) for v in box]})
    return {"file": path.name, "width": int(w0), "height": int(h0), "detections": found}


def draw(path: Path, result: dict, out: Path) -> None:
    from PIL import Image, ImageDraw

    with Image.open(path) as im:
        im = im.convert("RGB")
    pen = ImageDraw.Draw(im)
    palette = [(255, 56, 56), (50, 205, 50), (30, 144, 255), (255, 178, 29), (207, 210, 49), (72, 249, 10)]
    for d in result["detections"]:
        colour = palette[d["class"] % len(palette)]
        pen.rectangle(d["box"], outline=colour, width=2)
        pen.text((d["box"][0] + 2, max(0, d["box"][1] - 11)), f"{d['name']} {d['score']:.2f}", fill=colour)
    im.save(out)


# ----------------------------------------------------------------------------- golden samples

def corner_error(a: list, b: list) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def first_mismatch(expected: list, got: list, tol: dict, conf: float) -> str | None:
    """Each expected detection must be found: same class, every corner within box_px + box_rel * box size,
    score within `score`. A detection whose score is within `threshold_margin` of the threshold may be
    missing on one side (an honest rounding difference can push it across), never moved."""
    unused = list(range(len(got)))
    borderline = conf + float(tol["threshold_margin"])
    for k, e in enumerate(sorted(expected, key=lambda d: -d["score"])):
        size = max(e["box"][2] - e["box"][0], e["box"][3] - e["box"][1])
        limit = float(tol["box_px"]) + float(tol["box_rel"]) * size
        same = [j for j in unused if got[j]["class"] == e["class"]]
        best = min(same, key=lambda j: corner_error(e["box"], got[j]["box"]), default=None)
        if best is not None and corner_error(e["box"], got[best]["box"]) <= limit \
                and abs(got[best]["score"] - e["score"]) <= float(tol["score"]):
            unused.remove(best)
            continue
        overlapping = best is not None and iou_one_to_many(np.asarray(e["box"]), np.asarray([got[best]["box"]]))[0] >= 0.3
        if e["score"] <= borderline and not overlapping:   # gone below the threshold, not moved
            continue
        what = f"expected {e['name']} {e['score']:.3f} at {e['box']}"
        if best is None:
            return f"{what}: no {e['name']} found"
        g = got[best]
        return (f"{what}: nearest {g['name']} {g['score']:.3f} at {g['box']} "
                f"(corners off by {corner_error(e['box'], g['box']):.2f} px, allowed {limit:.2f}; "
                f"score off by {abs(g['score'] - e['score']):.3f}, allowed {tol['score']})")
    extra = [got[j] for j in unused if got[j]["score"] > borderline]
    if extra:
        g = extra[0]
        return f"unexpected {g['name']} {g['score']:.3f} at {g['box']} ({len(extra)} not in expected.json)"
    return None


def check(spec: dict, folder: Path) -> int:
    samples = spec["samples"]
    try:
        expected = json.loads((folder / samples["expected"]).read_text())
    except (OSError, ValueError) as exc:
        raise Usage(f"{samples['expected']}: not readable ({exc.__class__.__name__})") from None
    run = open_model(spec, folder)
    conf, iou = float(expected["conf_threshold"]), float(expected["iou_threshold"])
    count = 0
    for item in expected["images"]:
        got = detect(run, spec, folder / samples["folder"] / item["file"], conf, iou)
        problem = first_mismatch(item["detections"], got["detections"], samples["tolerance"], conf)
        if problem:
            print(f"MISMATCH {samples['folder']}/{item['file']}: {problem}")
            return EXIT_MISMATCH
        count += len(item["detections"])
    print(f"ok: {len(expected['images'])} sample images, {count} detections match {samples['expected']} "
          f"({spec['runtime']['name']}, {spec['model']['file']})")
    return 0


# ----------------------------------------------------------------------------- timing

def benchmark(spec: dict, folder: Path, runs: int, warmup: int = 5) -> None:
    run = open_model(spec, folder)
    shape = spec["input"]["height"], spec["input"]["width"]
    x = network_input(np.full(shape + (3,), spec["preprocessing"]["pad_value"], np.uint8), spec["preprocessing"])
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    p50, p90 = np.percentile(times, 50), np.percentile(times, 90)
    print(f"{spec['runtime']['name']} {spec['model']['file']}: batch 1, {runs} runs after {warmup} warm-up: "
          f"p50 {p50:.2f} ms, p90 {p90:.2f} ms, throughput {1000.0 / np.mean(times):.1f} images/s")


# ----------------------------------------------------------------------------- command line

def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="infer.py", description="Detect objects with this build's model.")
    ap.add_argument("images", nargs="*", type=Path)
    ap.add_argument("--json", type=Path, help="write the detections here")
    ap.add_argument("--draw", type=Path, help="draw the detections of the (first) image here (PNG)")
    ap.add_argument("--conf", type=float, help="score threshold (default: deploy.json postprocess)")
    ap.add_argument("--iou", type=float, help="NMS IoU threshold (default: deploy.json postprocess)")
    ap.add_argument("--check", action="store_true", help="rerun the golden samples; exit 1 at the first mismatch")
    ap.add_argument("--benchmark", type=int, metavar="RUNS", help="time the model call RUNS times")
    ap.add_argument("--deploy", type=Path, default=HERE, help="the deploy folder (default: this file's)")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    try:
        spec = json.loads((args.deploy / "deploy.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"error: {args.deploy / 'deploy.json'}: not readable ({exc.__class__.__name__})", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.check:
            return check(spec, args.deploy)
        if args.benchmark:
            benchmark(spec, args.deploy, args.benchmark)
            return 0
        if not args.images:
            raise Usage("name at least one image (or --check, --benchmark RUNS)")
        post = spec["postprocess"]
        conf = post["conf_threshold"] if args.conf is None else args.conf
        iou = post["iou_threshold"] if args.iou is None else args.iou
        run = open_model(spec, args.deploy)
        results = [detect(run, spec, p, conf, iou) for p in args.images]
        for r in results:
            for d in r["detections"]:
                print(f"{r['file']}\t{d['name']}\t{d['score']:.3f}\t" + " ".join(f"{v:.1f}" for v in d["box"]))
        if args.json:
            args.json.write_text(json.dumps({"conf_threshold": conf, "iou_threshold": iou, "images": results},
                                            indent=1) + "\n")
        if args.draw:
            draw(args.images[0], results[0], args.draw)
        return 0
    except Usage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
