"""
The anomaly-detection datasets this project knows, once in the MVTec AD layout (scripts/prepare_dataset.py converts
them): each one's categories in its authors' order and the reference numbers published for RD / RD++ on it.

    from known_datasets import dataset_for
    dataset = dataset_for(["pcb1", "candle"])  # the DATASETS entry holding most of these names, or None
    dataset.categories                         # ('candle', 'capsules', ...): VisA's order

scripts/sweep.py runs these categories when no --categories is given and puts the reference rows under its own.
Only numbers found in a published source are here, each with that source; a dataset without one has no rows.
"""

from collections import namedtuple

# name: shown in results.md; categories: the authors' order; references: ((label, {metric: mean over the categories}), ...)
# taken from `source`
Dataset = namedtuple("Dataset", "name categories references source", defaults=((), ""))

DATASETS = {
    "mvtec_ad": Dataset("MVTec AD", ("carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
                                     "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"),
                        (), "scripts/sweep.py's rows (SPEC.md section 6)"),
    # amazon-science/spot-diff prepare_data.py's data_list
    "visa": Dataset("VisA", ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                             "pcb3", "pcb4", "pipe_fryum"), ()),
    "mvtec_3d": Dataset("MVTec 3D-AD (RGB)", ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato",
                                              "rope", "tire"), ()),
    "mvtec_loco": Dataset("MVTec LOCO AD", ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"), ()),
    "btad": Dataset("BTAD", ("01", "02", "03"), (
        ("RD++ (Tien et al., CVPR 2023), 3-category mean", {"image_auroc": .9563, "pixel_auroc": .9743}),
    ), "Tien et al., \"Revisiting Reverse Distillation for Anomaly Detection\", CVPR 2023: its BTAD means (detection "
       "AUROC 95.63, segmentation AUROC 97.43) as listed with the paper on "
       "paperswithcode.com/paper/revisiting-reverse-distillation-for-anomaly"),
    "mpdd": Dataset("MPDD", ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"), ()),
    "mvtec_ad_2": Dataset("MVTec AD 2 (test_public)", ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial",
                                                       "wallplugs", "walnuts"), ()),
}


def dataset_for(names):
    """The dataset holding the most of these category names (the first listed on a tie), or None if it holds none."""
    names = set(names)
    best = max(DATASETS.values(), key=lambda d: len(names & set(d.categories)))
    return best if names & set(best.categories) else None
