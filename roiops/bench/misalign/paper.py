"""The published numbers this benchmark is compared with, written down once.

Mask R-CNN (He et al., 2017), mask AP on COCO minival with a ResNet-50 backbone ("Mask R-CNN", ICCV 2017, Table 2):
Table 2c compares the pooling ops on C4 features (stride 16); Table 2d compares RoIPool and RoIAlign on C4
(stride 16) and C5 (stride 32) features. Each row is (AP, AP50, AP75) in points.
"""

# the article's worked example of RoIPool's quantization: an 800x800 image, a 665x665 box, stride 32, 7x7 bins
ARTICLE = dict(image=800, box=665, stride=32, bins=7)

TABLE_2C = {  # stride 16 (ResNet-50-C4)
    "RoIPool": (26.9, 48.8, 26.4),
    "RoIWarp": (27.2, 49.2, 27.1),
    "RoIAlign max": (30.2, 51.0, 31.8),
    "RoIAlign avg": (30.3, 51.2, 31.5),
}

TABLE_2D = {  # stride -> op -> (AP, AP50, AP75)
    16: {"RoIPool": (26.9, 48.8, 26.4), "RoIAlign": (30.3, 51.2, 31.5)},
    32: {"RoIPool": (23.6, 46.5, 21.6), "RoIAlign": (30.9, 51.8, 32.1)},
}

# RoIAlign minus RoIPool per stride, derived from TABLE_2D so that the gaps cannot drift from the rows
TABLE_2D_GAP = {s: tuple(round(a - p, 1) for a, p in zip(r["RoIAlign"], r["RoIPool"])) for s, r in TABLE_2D.items()}
