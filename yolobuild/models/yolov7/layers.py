"""YOLOv7 and YOLOv7-tiny (WongKinYiu/yolov7): the layer tables and anchors, torch-free.

YOLOv7: SiLU convolutions in ELAN blocks, MP + stride-2 conv downsampling, SPPCSPC, and RepConv
(3x3 + 1x1 (+ identity) branches, each with BN) before IDetect; the `fuse_repconv` patch folds each
RepConv into one 3x3 conv.

The tiny model is ELAN blocks of LeakyReLU(0.1) convolutions joined by Concat, 2x2 max-pools (MP)
between stages, an SPP of stride-1 pools (SP) and YOLOR's IDetect head (ImplicitA / ImplicitM around
each output conv, YOLOv5's decode). The table is generated from that structure, so each row reads as
the upstream cfg/training/yolov7-tiny.yaml row of the same index.
"""

YOLOV7_TINY_ANCHORS = [
    [9, 6, 13, 16, 29, 11],
    [29, 28, 66, 26, 51, 62],
    [115, 54, 134, 119, 308, 147],
]
LEAKY = "nn.LeakyReLU(0.1)"


def _conv(f, c, k=1, s=1):
    return [f, 1, "Conv", [c, k, s, None, 1, LEAKY]]


def _elan(c):
    """Two 1x1 branches, two 3x3 convs on the second, all four joined and mixed by a 1x1 conv (2c out)."""
    return [_conv(-1, c), _conv(-2, c), _conv(-1, c, 3), _conv(-1, c, 3), [[-1, -2, -3, -4], 1, "Concat", [1]],
            _conv(-1, 2 * c)]


def tiny_table() -> list:
    rows = [_conv(-1, 32, 3, 2), _conv(-1, 64, 3, 2)] + _elan(32)                       # 0..7
    for c in (64, 128, 256):                                                           # 8..28
        rows += [[-1, 1, "MP", []]] + _elan(c)
    rows += [_conv(-1, 256), _conv(-2, 256), [-1, 1, "SP", [5]], [-2, 1, "SP", [9]], [-3, 1, "SP", [13]],
             [[-1, -2, -3, -4], 1, "Concat", [1]], _conv(-1, 256), [[-1, -7], 1, "Concat", [1]],
             _conv(-1, 256)]                                                           # 29..37
    rows += [_conv(-1, 128), [-1, 1, "nn.Upsample", [None, 2, "nearest"]], _conv(21, 128),
             [[-1, -2], 1, "Concat", [1]]] + _elan(64)                                # 38..47
    rows += [_conv(-1, 64), [-1, 1, "nn.Upsample", [None, 2, "nearest"]], _conv(14, 64),
             [[-1, -2], 1, "Concat", [1]]] + _elan(32)                                # 48..57
    rows += [_conv(-1, 128, 3, 2), [[-1, 47], 1, "Concat", [1]]] + _elan(64)          # 58..65
    rows += [_conv(-1, 256, 3, 2), [[-1, 37], 1, "Concat", [1]]] + _elan(128)         # 66..73
    rows += [_conv(57, 128, 3), _conv(65, 256, 3), _conv(73, 512, 3),
             [[74, 75, 76], 1, "IDetect", ["nc", "anchors"]]]                          # 74..77
    return rows


YOLOV7_ANCHORS = [
    [12, 16, 19, 36, 40, 28],
    [36, 75, 76, 55, 72, 146],
    [142, 110, 192, 243, 459, 401],
]


def _c(f, c, k=1, s=1):
    return [f, 1, "Conv", [c, k, s]]


def _elan_b(c):
    """Backbone ELAN: 1x1 twice, four 3x3 on the second; the 1x1s and every second 3x3 joined, 1x1 to 4c."""
    return [_c(-1, c), _c(-2, c)] + [_c(-1, c, 3)] * 4 + [[[-1, -3, -5, -6], 1, "Concat", [1]], _c(-1, 4 * c)]


def _elan_h(c1, c2, out):
    """Head ELAN: 1x1 twice, four 3x3 (c2) on the second, all six joined, 1x1 to `out`."""
    return [_c(-1, c1), _c(-2, c1)] + [_c(-1, c2, 3)] * 4 + [[[-1, -2, -3, -4, -5, -6], 1, "Concat", [1]],
                                                              _c(-1, out)]


def _down(c, skip=None):
    """Max-pool branch and stride-2 conv branch joined (plus a skip in the head)."""
    return [[-1, 1, "MP", []], _c(-1, c), _c(-3, c), _c(-1, c, 3, 2),
            [[-1, -3] + ([skip] if skip is not None else []), 1, "Concat", [1]]]


def full_table() -> list:
    rows = [_c(-1, 32, 3), _c(-1, 64, 3, 2), _c(-1, 64, 3), _c(-1, 128, 3, 2)] + _elan_b(64)   # 0..11
    rows += _down(128) + _elan_b(128) + _down(256) + _elan_b(256) + _down(512) + _elan_b(256)  # ..50
    rows += [[-1, 1, "SPPCSPC", [512]], _c(-1, 256), [-1, 1, "nn.Upsample", [None, 2, "nearest"]], _c(37, 256),
             [[-1, -2], 1, "Concat", [1]]] + _elan_h(256, 128, 256)                           # 51..63
    rows += [_c(-1, 128), [-1, 1, "nn.Upsample", [None, 2, "nearest"]], _c(24, 128),
             [[-1, -2], 1, "Concat", [1]]] + _elan_h(128, 64, 128)                            # 64..75
    rows += _down(128, 63) + _elan_h(256, 128, 256) + _down(256, 51) + _elan_h(512, 256, 512)   # 76..101
    rows += [[75, 1, "RepConv", [256, 3, 1]], [88, 1, "RepConv", [512, 3, 1]], [101, 1, "RepConv", [1024, 3, 1]],
             [[102, 103, 104], 1, "IDetect", ["nc", "anchors"]]]                            # 102..105
    return rows


YOLOV7_LAYOUTS = {"yolov7-tiny": tiny_table(), "yolov7": full_table()}
YOLOV7_BACKBONE_ROWS = {"yolov7-tiny": 29, "yolov7": 51}
