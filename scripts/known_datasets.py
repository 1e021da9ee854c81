"""
The anomaly-detection datasets this project knows, once in the MVTec AD layout (scripts/prepare_dataset.py converts
them): each one's categories in its authors' order and the reference numbers published for RD / RD++ on it.

    from known_datasets import dataset_for
    dataset = dataset_for(["pcb1", "candle"])  # the DATASETS entry holding most of these names, or None
    dataset.categories                         # ('candle', 'capsules', ...): VisA's order

scripts/sweep.py runs these categories when no --categories is given and puts the reference rows under its own.
Only numbers found in a published source are here, each with that source; a dataset without one has no rows.
The ADer benchmark's rows are means over all categories of ONE model trained on them all (the unified setting).
"""

from collections import namedtuple

# name: shown in results.md; categories: the authors' order; references: ((label, {metric: mean over the categories}), ...)
# taken from `source`
Dataset = namedtuple("Dataset", "name categories references source", defaults=((), ""))

# The ADer benchmark (github zhangzjn/ADer) trains RD and RD++ as ONE model on all categories of a dataset (the unified
# multi-class setting, 100 epochs, the last epoch reported) and scores it with ADer's metrics; its table columns, in order:
ADER_COLUMNS = ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "pixel_ap", "pixel_f1_21", "pixel_aupro",
                "pixel_iou_max", "mad")
ADER_COMMIT = "902937a7ed7fa7689674a4ac9b8fe9a72a40c402"
ADER_SOURCE = (f"ADer benchmark, configs/benchmark/README.md of github zhangzjn/ADer at commit {ADER_COMMIT[:7]}: RD and "
               "RD++ each trained as one model on all the dataset's categories (100 epochs, last epoch), not a model "
               "per category; ADer's pixel AUROC, AP and AUPRO are binned by the ADEval package (50 strips), ours exact "
               "(scripts/compare_adeval.py measures the difference)")


def ader_rows(n_categories, rd, rdpp):
    """ADer's RD and RD++ rows from their published percentages, in ADER_COLUMNS order."""
    return tuple((f"{method}, ADer benchmark: one model for all {n_categories} categories, 100 epochs",
                  dict(zip(ADER_COLUMNS, (p / 100 for p in percentages))))
                 for method, percentages in (("RD", rd), ("RD++", rdpp)))


DATASETS = {
    "mvtec_ad": Dataset("MVTec AD", ("carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
                                     "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"),
                        ader_rows(15, (93.6, 97.2, 95.6, 95.8, 48.2, 53.6, 91.2, 37.0, 82.2),
                                  (97.9, 98.8, 96.4, 97.3, 54.7, 58.0, 93.2, 41.5, 85.2)), ADER_SOURCE),
    # amazon-science/spot-diff prepare_data.py's data_list
    "visa": Dataset("VisA", ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                             "pcb3", "pcb4", "pipe_fryum"),
                    ader_rows(12, (90.6, 90.9, 89.3, 98.0, 35.4, 42.5, 91.9, 27.9, 76.9),
                              (93.9, 94.7, 90.2, 98.4, 42.3, 46.3, 91.9, 31.2, 79.7)), ADER_SOURCE),
    # ADer merges MVTec 3D's validation images into training; this project's conversion does not
    "mvtec_3d": Dataset("MVTec 3D-AD (RGB)", ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato",
                                              "rope", "tire"),
                        ader_rows(10, (75.8, 91.2, 91.5, 98.4, 29.6, 35.5, 93.9, 22.2, 73.7),
                                  (81.8, 93.9, 92.8, 98.5, 34.4, 39.6, 94.1, 25.2, 76.4)),
                        ADER_SOURCE + "; ADer also trains on the validation images, which this project leaves out"),
    "mvtec_loco": Dataset("MVTec LOCO AD", ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"),
                          ader_rows(5, (74.6, 85.3, 78.9, 70.7, 21.0, 26.1, 67.7, 15.8, 60.6),
                                    (76.4, 86.8, 79.2, 71.5, 24.3, 28.3, 68.8, 17.6, 62.2)),
                          ADER_SOURCE + "; ADer also trains on the validation images, which this project leaves out"),
    "btad": Dataset("BTAD", ("01", "02", "03"), (
        ("RD++ (Tien et al., CVPR 2023), 3-category mean", {"image_auroc": .9563, "pixel_auroc": .9743}),
        *ader_rows(3, (94.4, 96.6, 94.0, 98.1, 59.6, 59.2, 80.7, 42.1, 83.2),
                   (94.6, 97.8, 94.1, 98.0, 59.6, 59.8, 79.0, 42.8, 83.3)),
    ), "Tien et al., \"Revisiting Reverse Distillation for Anomaly Detection\", CVPR 2023: its BTAD means (detection "
       "AUROC 95.63, segmentation AUROC 97.43) as listed with the paper on "
       "paperswithcode.com/paper/revisiting-reverse-distillation-for-anomaly; " + ADER_SOURCE),
    "mpdd": Dataset("MPDD", ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"),
                    ader_rows(6, (91.3, 93.6, 91.8, 98.3, 40.4, 41.8, 95.5, 31.4, 79.0),
                              (90.2, 93.3, 90.5, 98.5, 43.0, 44.1, 95.5, 33.6, 79.3)), ADER_SOURCE),
    "mvtec_ad_2": Dataset("MVTec AD 2 (test_public)", ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial",
                                                       "wallplugs", "walnuts"), ()),
    # github Tencent/AnomalyDetection_Real-IAD, experiments/RealIAD-C1/config.yaml at 98c28ff: its meta_file list
    "real_iad": Dataset("Real-IAD", ("audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint",
                                     "mounts", "pcb", "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll",
                                     "regulator", "rolled_strip_base", "sim_card_set", "switch", "tape", "terminalblock",
                                     "toothbrush", "toy", "toy_brick", "transistor1", "u_block", "usb", "usb_adaptor",
                                     "vcpill", "wooden_beads", "woodstick", "zipper"),
                        ader_rows(30, (82.7, 79.3, 74.1, 97.2, 25.2, 32.8, 90.0, 20.0, 68.8),
                                  (83.6, 80.6, 74.8, 97.7, 25.9, 33.6, 90.7, 20.5, 69.6)),
                        ADER_SOURCE + "; Real-IAD with all five camera views, each an image (prepare_dataset --views=all)"),
}


def dataset_for(names):
    """The dataset holding the most of these category names (the first listed on a tie), or None if it holds none."""
    names = set(names)
    best = max(DATASETS.values(), key=lambda d: len(names & set(d.categories)))
    return best if names & set(best.categories) else None
