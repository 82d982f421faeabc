"""Darknet `.cfg` files and the `.weights` byte layout they imply, torch-free.

A `.cfg` is a list of `[section]`s of `key=value` lines; the first is `[net]` (input size,
channels), every later one is a layer, numbered from 0 in file order (what `[route] layers`
and `[shortcut] from` refer to). A `.weights` file is a header (int32 major, minor, revision,
then `seen`: int64 when major*10+minor >= 2 and both are < 1000, else int32) followed by
float32 arrays, per [convolutional] layer in cfg order: with batch_normalize the BN bias
(beta), weight (gamma), running mean and running variance, else the conv bias; then the conv
weights (filters, channels/groups, size, size), row-major. Nothing else is stored, so the file
size is fixed by the cfg: `weights_bytes`.

Only what YOLOv3 and YOLOv3-tiny use is supported: convolutional (leaky / linear / relu),
maxpool, upsample, route (layers only), shortcut (linear) and yolo; anything else is a
ValueError naming the section.
"""
from __future__ import annotations

import struct
from pathlib import Path

CFG_DIR = Path(__file__).parent / "cfg"
LAYOUT_CFG = {"yolov3": "yolov3.cfg", "yolov3-tiny": "yolov3-tiny.cfg"}
ACTIVATIONS = ("leaky", "linear", "relu")
LAYER_TYPES = ("convolutional", "maxpool", "upsample", "route", "shortcut", "yolo")


def cfg_path(layout: str) -> Path:
    return CFG_DIR / LAYOUT_CFG[layout]


def parse_cfg(text: str, name: str = "cfg") -> list[dict]:
    """-> sections, each {"type": name, key: value (str)}; comments (# ;) and blank lines dropped."""
    sections: list[dict] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"{name}:{n}: malformed section header {line!r}")
            sections.append({"type": line[1:-1].strip().lower()})
        elif "=" in line:
            if not sections:
                raise ValueError(f"{name}:{n}: {line!r} before the first [section]")
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.strip()
        else:
            raise ValueError(f"{name}:{n}: expected key=value, got {line!r}")
    if not sections or sections[0]["type"] not in ("net", "network"):
        raise ValueError(f"{name}: the first section must be [net]")
    return sections


def read_cfg(layout: str) -> list[dict]:
    path = cfg_path(layout)
    return parse_cfg(path.read_text(), path.name)


def sidecar_cfg(weights: str | Path) -> Path | None:
    """The `.cfg` with the weights' stem beside a `.weights` file (how Darknet releases ship), or None."""
    w = Path(weights).expanduser()
    if w.suffix.lower() != ".weights":
        return None
    cfg = w.with_suffix(".cfg")
    return cfg if cfg.is_file() else None


def user_cfg(model_cfg: str | None, weights: str | None) -> tuple[Path | None, str | None]:
    """(cfg path, note) a Darknet model is built from: `model.cfg`, else a sidecar cfg (with a note saying
    so), else (None, None) and the shipped cfg of the layout."""
    if model_cfg:
        return Path(model_cfg).expanduser(), None
    side = sidecar_cfg(weights) if weights and weights not in ("random", "???") else None
    if side is not None:
        return side, f"model.cfg: using {side} (the .cfg beside the weights); set model.cfg=PATH to choose another"
    return None, None


def layout_of(layers: list[dict]) -> str:
    """The shipped layout a parsed cfg is closest to, by its number of [yolo] levels (3: yolov3, 2: tiny)."""
    return "yolov3-tiny" if len(levels(layers)) == 2 else "yolov3"


def check_cfg_against_weights(cfg: Path, weights: Path | None) -> str | None:
    """Why a user cfg cannot be used with these weights (unparsable, or not the file's size), or None."""
    try:
        layers = walk(parse_cfg(cfg.read_text(), cfg.name))
    except OSError as exc:
        return f"{cfg}: cannot read it ({exc.strerror})"
    except (ValueError, KeyError) as exc:
        return f"{cfg}: {exc}"
    if weights is None or not weights.is_file() or not looks_like_darknet(weights):
        return None
    h = read_header(weights)
    if h is None:
        return None
    size = weights.stat().st_size
    want = h["header_bytes"] + 4 * weights_floats(layers)
    if size != want:
        return (f"{cfg.name} needs {want} bytes of Darknet weights ({h['header_bytes']}-byte header + "
                f"{weights_floats(layers)} float32), {weights.name} has {size}")
    return None


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.replace(" ", "").split(",") if v]


def _floats(value: str) -> list[float]:
    return [float(v) for v in value.replace(" ", "").split(",") if v]


def with_classes(sections: list[dict], nc: int) -> list[dict]:
    """A copy whose [yolo] layers have classes=nc and whose conv before each [yolo] has
    len(mask) * (nc + 5) filters (what one edits by hand in a Darknet cfg for a new dataset)."""
    out = [dict(s) for s in sections]
    for i, s in enumerate(out):
        if s["type"] == "yolo":
            na = len(_ints(s["mask"])) if "mask" in s else int(s.get("num", 1))
            s["classes"] = str(nc)
            prev = out[i - 1] if i > 1 else None
            if prev is None or prev["type"] != "convolutional":
                raise ValueError(f"cfg layer {i - 1}: a [yolo] layer must follow a [convolutional] one")
            prev["filters"] = str(na * (nc + 5))
    return out


def net_input(sections: list[dict]) -> tuple[int, int, int]:
    """(channels, height, width) of the [net] section."""
    net = sections[0]
    return int(net.get("channels", 3)), int(net.get("height", 416)), int(net.get("width", 416))


def walk(sections: list[dict]) -> list[dict]:
    """Per layer: type, index, inputs (absolute layer indices, -1 = the image), out channels, stride
    against the input, and for convolutions c_in / filters / size / stride / pad / groups / bn / act;
    for [yolo] the anchors (pixels) of its mask, nc. ValueError for what is not supported."""
    ch_in, _, _ = net_input(sections)
    layers: list[dict] = []
    chans: list[int] = []
    strides: list[float] = []

    def ref(i: int, j: int) -> int:
        k = i + j if j < 0 else j
        if not 0 <= k < i:
            raise ValueError(f"cfg layer {i}: refers to layer {j}, which is not an earlier layer")
        return k

    for i, s in enumerate(sections[1:]):
        t = s["type"]
        prev_c = chans[-1] if chans else ch_in
        prev_s = strides[-1] if strides else 1.0
        layer = {"type": t, "index": i, "inputs": [i - 1]}
        if t == "convolutional":
            size, stride = int(s.get("size", 1)), int(s.get("stride", 1))
            pad = size // 2 if int(s.get("pad", 0)) else int(s.get("padding", 0))
            act = s.get("activation", "logistic")
            if act not in ACTIVATIONS:
                raise ValueError(f"cfg layer {i}: activation {act!r} is not supported; "
                                 f"allowed: {', '.join(ACTIVATIONS)}")
            groups = int(s.get("groups", 1))
            if int(s.get("dilation", 1)) != 1 or int(s.get("stride_x", stride)) != stride \
                    or int(s.get("stride_y", stride)) != stride:
                raise ValueError(f"cfg layer {i}: dilated or non-square-stride convolutions are not supported")
            layer.update(c_in=prev_c, filters=int(s["filters"]), size=size, stride=stride, pad=pad, groups=groups,
                         bn=bool(int(s.get("batch_normalize", 0))), act=act)
            if prev_c % groups or layer["filters"] % groups:
                raise ValueError(f"cfg layer {i}: groups={groups} does not divide the channels")
            c, st = layer["filters"], prev_s * stride
        elif t == "maxpool":
            size = int(s.get("size", 1))
            stride = int(s.get("stride", 1))
            layer.update(size=size, stride=stride, pad=int(s.get("padding", size - 1)))
            c, st = prev_c, prev_s * stride
        elif t == "upsample":
            stride = int(s.get("stride", 2))
            layer.update(stride=stride)
            c, st = prev_c, prev_s / stride
        elif t == "route":
            if "groups" in s and int(s["groups"]) != 1:
                raise ValueError(f"cfg layer {i}: [route] groups is not supported")
            layer["inputs"] = [ref(i, j) for j in _ints(s["layers"])]
            ss = {strides[k] for k in layer["inputs"]}
            if len(ss) != 1:
                raise ValueError(f"cfg layer {i}: [route] joins layers of different strides")
            c, st = sum(chans[k] for k in layer["inputs"]), ss.pop()
        elif t == "shortcut":
            if s.get("activation", "linear") != "linear":
                raise ValueError(f"cfg layer {i}: [shortcut] activation must be linear")
            k = ref(i, int(s["from"]))
            if chans[k] != prev_c or strides[k] != prev_s:
                raise ValueError(f"cfg layer {i}: [shortcut] adds layers of different shapes")
            layer["inputs"] = [i - 1, k]
            c, st = prev_c, prev_s
        elif t == "yolo":
            anchors = _floats(s["anchors"])
            pairs = [anchors[j:j + 2] for j in range(0, len(anchors), 2)]
            mask = _ints(s["mask"]) if "mask" in s else list(range(len(pairs)))
            sxy = float(s.get("scale_x_y", 1.0))
            if sxy != 1.0 or int(s.get("new_coords", 0)):
                raise ValueError(f"cfg layer {i}: [yolo] scale_x_y / new_coords (YOLOv4 decode) is not supported")
            nc = int(s.get("classes", 20))
            prev = layers[-1] if layers else None
            if prev is None or prev["type"] != "convolutional" or prev["bn"] or prev["act"] != "linear":
                raise ValueError(f"cfg layer {i}: a [yolo] layer must follow a linear [convolutional] without BN")
            if prev["filters"] != len(mask) * (nc + 5):
                raise ValueError(f"cfg layer {i - 1}: filters={prev['filters']} but the [yolo] after it needs "
                                 f"{len(mask)} * (classes {nc} + 5) = {len(mask) * (nc + 5)}")
            layer.update(nc=nc, anchors=[v for j in mask for v in pairs[j]])
            c, st = prev_c, prev_s
        else:
            raise ValueError(f"cfg layer {i}: [{t}] is not supported; allowed: {', '.join(LAYER_TYPES)}")
        layer.update(c_out=c, stride_px=st)
        layers.append(layer)
        chans.append(c)
        strides.append(st)
    yolos = [la for la in layers if la["type"] == "yolo"]
    if not yolos:
        raise ValueError("cfg: no [yolo] layer")
    heads = {la["index"] - 1 for la in yolos} | {la["index"] for la in yolos}
    for la in layers:
        if la["type"] in ("route", "shortcut") and set(la["inputs"]) & heads:
            raise ValueError(f"cfg layer {la['index']}: reads a [yolo] layer or its output conv, which is not "
                             "supported")
    return layers


def levels(layers: list[dict]) -> list[dict]:
    """The [yolo] layers in increasing stride order (yolobuild's level order), each with its stride."""
    out = [la for la in layers if la["type"] == "yolo"]
    out.sort(key=lambda la: la["stride_px"])
    return out


def weights_floats(layers: list[dict]) -> int:
    n = 0
    for la in layers:
        if la["type"] == "convolutional":
            f = la["filters"]
            n += (4 * f if la["bn"] else f) + f * (la["c_in"] // la["groups"]) * la["size"] ** 2
    return n


def header_bytes(major: int, minor: int) -> int:
    return 20 if seen_is_64bit(major, minor) else 16


def seen_is_64bit(major: int, minor: int) -> bool:
    return major * 10 + minor >= 2 and major < 1000 and minor < 1000


def weights_bytes(layers: list[dict], major: int = 0, minor: int = 2) -> int:
    return header_bytes(major, minor) + 4 * weights_floats(layers)


def read_header(path: Path) -> dict | None:
    """{major, minor, revision, seen, header_bytes} of a Darknet .weights file; None when too short."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 16:
        return None
    major, minor, revision = struct.unpack("<3i", head[:12])
    if seen_is_64bit(major, minor):
        if len(head) < 20:
            return None
        seen = struct.unpack("<q", head[12:20])[0]
    else:
        seen = struct.unpack("<i", head[12:16])[0]
    return {"major": major, "minor": minor, "revision": revision, "seen": int(seen),
            "header_bytes": header_bytes(major, minor)}


def looks_like_darknet(path: Path) -> bool:
    """A .weights suffix, or a plausible Darknet header (version 0.1 / 0.2) and a float32-aligned body."""
    if path.suffix.lower() == ".weights":
        return True
    try:
        h = read_header(path)
        size = path.stat().st_size
    except OSError:
        return False
    return bool(h) and h["major"] == 0 and h["minor"] in (1, 2) and 0 <= h["revision"] < 100 \
        and (size - h["header_bytes"]) % 4 == 0 and size > h["header_bytes"]


def nc_for_size(layout: str, floats: int) -> int | None:
    """The class count for which the layout's cfg needs exactly `floats` weights (the size is linear in nc)."""
    base = read_cfg(layout)
    a = weights_floats(walk(with_classes(base, 1)))
    b = weights_floats(walk(with_classes(base, 2))) - a
    if floats < a or (floats - a) % b:
        return None
    return 1 + (floats - a) // b


def guess_layout(path: Path) -> list[tuple[str, int]]:
    """(layout, nc) of every shipped cfg whose weights size equals the file's."""
    h = read_header(path)
    if h is None:
        return []
    body = path.stat().st_size - h["header_bytes"]
    if body % 4:
        return []
    out = []
    for layout in LAYOUT_CFG:
        nc = nc_for_size(layout, body // 4)
        if nc is not None:
            out.append((layout, nc))
    return out
