"""YOLOR (ImplicitA / ImplicitM, IDetect): the layer tables and anchors, torch-free.

The layer tables are upstream's yaml model definitions (WongKinYiu/yolor, branch `paper`,
models/yolor-p6.yaml and models/yolor-w6.yaml) written out as data, row for row, so that a full
pickle's `model.yaml` can be matched against them. Both are depth_multiple 1.0, width_multiple
1.0: the channel counts below are the final ones.
"""

# upstream yolor-p6.yaml / yolor-w6.yaml `anchors` (pixels, per level (w, h) pairs flattened)
YOLOR_ANCHORS = [
    [19, 27, 44, 40, 38, 94],
    [96, 68, 86, 152, 180, 137],
    [140, 301, 303, 264, 238, 542],
    [436, 615, 739, 380, 925, 792],
]


def _table(backbone: list[int], neck: list[int]) -> list[list]:
    """The yolor-{p6,w6} layer table: `backbone` = widths of the stem conv and the five stages
    (P1..P6), `neck` = the PAN widths at P3..P6 (SPPCSP is the P6 one); each level's output conv
    before IDetect is twice its neck width."""
    b1, b2, b3, b4, b5, b6 = backbone
    n3, n4, n5, n6 = neck
    return [
        [-1, 1, "ReOrg", []],                       # 0
        [-1, 1, "Conv", [b1, 3, 1]],                # 1-P1/2
        [-1, 1, "Conv", [b2, 3, 2]],                # 2-P2/4
        [-1, 3, "BottleneckCSPF", [b2]],
        [-1, 1, "Conv", [b3, 3, 2]],                # 4-P3/8
        [-1, 7, "BottleneckCSPF", [b3]],
        [-1, 1, "Conv", [b4, 3, 2]],                # 6-P4/16
        [-1, 7, "BottleneckCSPF", [b4]],
        [-1, 1, "Conv", [b5, 3, 2]],                # 8-P5/32
        [-1, 3, "BottleneckCSPF", [b5]],
        [-1, 1, "Conv", [b6, 3, 2]],                # 10-P6/64
        [-1, 3, "BottleneckCSPF", [b6]],            # 11
        [-1, 1, "SPPCSP", [n6]],                    # 12
        [-1, 1, "Conv", [n5, 1, 1]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [-6, 1, "Conv", [n5, 1, 1]],                # route backbone P5
        [[-1, -2], 1, "Concat", [1]],
        [-1, 3, "BottleneckCSP2", [n5]],            # 17
        [-1, 1, "Conv", [n4, 1, 1]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [-13, 1, "Conv", [n4, 1, 1]],               # route backbone P4
        [[-1, -2], 1, "Concat", [1]],
        [-1, 3, "BottleneckCSP2", [n4]],            # 22
        [-1, 1, "Conv", [n3, 1, 1]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [-20, 1, "Conv", [n3, 1, 1]],               # route backbone P3
        [[-1, -2], 1, "Concat", [1]],
        [-1, 3, "BottleneckCSP2", [n3]],            # 27
        [-1, 1, "Conv", [2 * n3, 3, 1]],            # 28 out P3
        [-2, 1, "Conv", [n4, 3, 2]],
        [[-1, 22], 1, "Concat", [1]],
        [-1, 3, "BottleneckCSP2", [n4]],            # 31
        [-1, 1, "Conv", [2 * n4, 3, 1]],            # 32 out P4
        [-2, 1, "Conv", [n5, 3, 2]],
        [[-1, 17], 1, "Concat", [1]],
        [-1, 3, "BottleneckCSP2", [n5]],            # 35
        [-1, 1, "Conv", [2 * n5, 3, 1]],            # 36 out P5
        [-2, 1, "Conv", [n6, 3, 2]],
        [[-1, 12], 1, "Concat", [1]],
        [-1, 3, "BottleneckCSP2", [n6]],            # 39
        [-1, 1, "Conv", [2 * n6, 3, 1]],            # 40 out P6
        [[28, 32, 36, 40], 1, "IDetect", ["nc", "anchors"]],   # 41 Detect(P3, P4, P5, P6)
    ]


YOLOR_LAYOUTS = {
    "p6": _table([64, 128, 256, 384, 512, 640], [128, 192, 256, 320]),
    "w6": _table([64, 128, 256, 512, 768, 1024], [128, 256, 384, 512]),
}
# upstream's yaml splits the table after layer 11 (backbone) and the rest (head)
YOLOR_BACKBONE_ROWS = 12
