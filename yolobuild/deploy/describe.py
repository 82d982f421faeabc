"""deploy.json: how an application feeds the built model and decodes its outputs, for every family,
head layout and input layout, stated so that infer.py (and a C++ port) need not guess.

Pure data: no torch, no numpy. The schema is schemas/deploy.schema.json.
"""
from __future__ import annotations

DEPLOY_FORMAT = "yolobuild-deploy/2"

# the board runtime that loads each toolchain's artifact, and how a user gets it
RUNTIMES = {
    "onnxruntime": {"name": "onnxruntime", "install": "pip install onnxruntime"},
    "openvino": {"name": "openvino", "install": "pip install openvino"},
    "rknn-toolkit2": {"name": "rknnlite", "install": "install the vendor's rknn-toolkit-lite2 wheel on the board "
                                                    "(rknn_toolkit_lite2, matching the board's librknnrt)"},
    "tpu-mlir": {"name": "sophon.sail", "install": "install the vendor's sophon-sail wheel for your SDK on the board"},
    "tensorrt": {"name": "tensorrt", "install": "the NVIDIA TensorRT Python package"},
}

# toolchains whose artifact this machine can run itself (the benchmark op times them here)
HOST_RUNNABLE = ("onnxruntime", "openvino")

FORMULAS = {
    "yolov5": ("per level (strides order), map (na*(5+nc), ny, nx) viewed as (na, 5+nc, ny, nx); p = sigmoid(t) "
               "for every channel; cell (col, row): x = (2 p0 - 0.5 + col) * stride, y = (2 p1 - 0.5 + row) * stride, "
               "w = (2 p2)^2 * anchors_px[level][a][0], h = (2 p3)^2 * anchors_px[level][a][1]; objectness p4, "
               "class scores p5..; score = objectness * class score"),
    "darknet": ("per level (strides order), map (na*(5+nc), ny, nx) viewed as (na, 5+nc, ny, nx); cell (col, row): "
                "x = (sigmoid(t0) * scale_x_y - (scale_x_y - 1) / 2 + col) * stride, same for y with row; "
                "w = exp(t2) * anchors_px[level][a][0], h = exp(t3) * anchors_px[level][a][1]; objectness "
                "sigmoid(t4), class scores sigmoid(t5..); score = objectness * class score"),
    "dfl": ("anchor-free: per level (strides order), map (4*reg_max + nc, ny, nx); the first 4*reg_max channels "
            "are 4 sides (left, top, right, bottom) x reg_max bins: d = sum_k k * softmax(bins)_k, in cells; "
            "cell centre (col + 0.5, row + 0.5): x = (cx + (d_right - d_left) / 2) * stride, "
            "y = (cy + (d_bottom - d_top) / 2) * stride, w = (d_left + d_right) * stride, "
            "h = (d_top + d_bottom) * stride; class scores sigmoid(t); no objectness: score = class score"),
}


def head_spec(meta: dict, layout: str, outputs: list[dict]) -> dict:
    anchor_free = meta.get("head_kind") == "anchor_free"
    decode = meta.get("decode", "yolov5")
    columns = ["x", "y", "w", "h"] + ([] if anchor_free else ["objectness"]) + ["class scores (nc)"]
    if layout == "topk":
        columns = ["x1", "y1", "x2", "y2", "score", "class"]
        text = ("end-to-end in the model: one output (1, K, 6), the K best (anchor point, class) pairs, best first: "
                "box corners x1, y1, x2, y2 in input pixels, score (the class score), class index; the rows are the "
                "final detections (the one-to-one head gives one box per object): no NMS, keep the rows whose score "
                "reaches conf_threshold")
    elif layout == "raw":
        text = FORMULAS[decode]
    elif layout == "split":
        text = ("decoded in the model: outputs xy (1, N, 2) and wh (1, N, 2), box centre and size in input pixels, "
                + ("class scores (1, N, nc); no objectness: score = class score" if anchor_free else
                   "conf (1, N, 1+nc) = objectness, class scores; score = objectness * class score"))
    else:
        text = (f"decoded in the model: one output (1, N, {len(columns) - 1}+nc) with columns "
                f"{', '.join(columns)}; box centre and size in input pixels"
                + ("; no objectness: score = class score" if anchor_free else "; score = objectness * class score"))
    spec = {"layout": layout, "kind": meta.get("head_kind", "anchor_based"), "decode": decode,
            "family": meta.get("family"), "formula": text, "columns": columns, "outputs": outputs,
            "strides": meta["strides"], "anchors_px": meta.get("anchors_px")}
    if decode == "dfl":   # the family's bins per box side (YOLO26: 1, no DFL: the distances themselves)
        spec["reg_max"] = int(meta.get("reg_max", 16))
    if decode == "darknet":
        spec["scale_x_y"] = float(meta.get("scale_x_y", 1.0))
    return spec


def preprocessing_spec(p: dict) -> dict:
    """Who does what to the pixels: letterbox in the application always; the 1/255 scale in the application
    for float inputs, inside the model for uint8 inputs (RKNN's config divides by std itself)."""
    layout = p.get("input_layout", "nchw_float32")
    in_model = layout == "nhwc_uint8"
    scale = p.get("scale")
    return {
        "resize": p.get("resize", "letterbox"), "color": p.get("color", "rgb"), "pad_value": p.get("pad_value"),
        "interpolation": "bilinear",
        "letterbox": ("scale = min(H / h0, W / w0); resize to (round(w0 * scale), round(h0 * scale)); paste at "
                      "pad_x = (W - new_w) // 2, pad_y = (H - new_h) // 2 on a canvas of pad_value; boxes map back "
                      "as (x - pad_x) / scale, (y - pad_y) / scale, clipped to the image"),
        "scale": scale,
        "feed": {"layout": "nhwc" if in_model else "nchw", "dtype": "uint8" if in_model else "float32",
                 "scale_applied_by": "model" if in_model else "application",
                 "what": ("feed the letterboxed RGB canvas as uint8 (1, H, W, 3), unscaled: the model multiplies by "
                          f"{scale} itself (mean 0, std {round(1 / float(scale), 6)} in its config)") if in_model else
                         (f"transpose the letterboxed RGB canvas to (1, 3, H, W) float32 and multiply by {scale} "
                          "(divide by 1 / scale) in the application")},
    }


def deploy_document(p: dict, meta: dict, model_file: str, files: dict, inputs: list[dict], outputs: list[dict],
                    postprocess: dict, samples: dict | None) -> dict:
    h, w = int(p["height"]), int(p["width"])
    layout = p.get("input_layout", "nchw_float32")
    toolchain = p.get("toolchain")
    doc = {
        "format": DEPLOY_FORMAT,
        "model": {"file": model_file, "files": files, "toolchain": toolchain, "platform": p.get("platform"),
                  "precision": p.get("precision"), "options": p.get("options") or {}},
        "runtime": RUNTIMES.get(toolchain, {"name": str(toolchain), "install": "the vendor's runtime"}),
        "input": {**inputs[0], "layout": layout, "height": h, "width": w},
        "preprocessing": preprocessing_spec(p),
        "head": head_spec(meta, p["head"], outputs),
        "postprocess": postprocess,
        "nc": meta["nc"],
        "names": meta["names"],
        "model_source": {k: meta.get(k) for k in ("family", "scale", "layout", "source", "random")},
    }
    if samples:
        doc["samples"] = samples
    return doc
