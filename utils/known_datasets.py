"""
The anomaly-detection datasets this project knows, all in the MVTec AD layout (scripts/prepare_dataset.py converts
the others): each one's categories in its authors' order, and the numbers published for RD / RD++ on it, each with
its source. evaluation/results.py puts them under our own rows in results.md; scripts/sweep.py runs these categories when no
--categories is given; train.py --official_epochs=1 reads RD++'s epochs per MVTec AD category here.

    from utils.known_datasets import dataset_for
    dataset = dataset_for(["pcb1", "candle"])  # the DATASETS entry holding most of these names, or None
    dataset.categories                         # ('candle', 'capsules', ...): VisA's order

Only numbers found in a published source are here; a dataset without one has no reference rows. The ADer benchmark's
rows are means over all categories of ONE model trained on them all (the unified setting), not a model per category.
"""

from collections import namedtuple

# label: the row's name in results.md; values: {metric: the mean over the dataset's categories} or {metric: a tuple
# with a value per category, in the dataset's order}; source: where the numbers are published
Reference = namedtuple("Reference", "label values source")
# name: shown in results.md; categories: the authors' order; references: Reference rows
Dataset = namedtuple("Dataset", "name categories references", defaults=((),))

RD_PAPER = "Deng & Li, \"Anomaly Detection via Reverse Distillation from One-Class Embedding\", CVPR 2022"
RDPP_PAPER = "Tien et al., \"Revisiting Reverse Distillation for Anomaly Detection\", CVPR 2023"

# The ADer benchmark (github zhangzjn/ADer) trains RD and RD++ as ONE model on all categories of a dataset (the unified
# multi-class setting, 100 epochs, the last epoch reported) and scores it with ADer's metrics; its table columns, in order:
ADER_COLUMNS = ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "pixel_ap", "pixel_f1_21", "pixel_aupro",
                "pixel_iou_max", "mad")
ADER_COMMIT = "902937a7ed7fa7689674a4ac9b8fe9a72a40c402"
ADER_SOURCE = (f"ADer benchmark, configs/benchmark/README.md of github zhangzjn/ADer at commit {ADER_COMMIT[:7]}: RD and "
               "RD++ each trained as one model on all the dataset's categories (100 epochs, last epoch), not a model "
               "per category; ADer's pixel AUROC, AP and AUPRO are binned by the ADEval package (50 strips), ours exact "
               "(scripts/compare_adeval.py measures the difference)")


# The means over a dataset's categories in %, in ADER_COLUMNS order (I-AUROC, I-AP, I-F1-max, P-AUROC, P-AP, P-F1-max
# over 21 thresholds, AUPRO, mIoU-max, mAD), RD then RD++, 256x256
ADER_PERCENT = {
    "mvtec_ad": ((93.6, 97.2, 95.6, 95.8, 48.2, 53.6, 91.2, 37.0, 82.2), (97.9, 98.8, 96.4, 97.3, 54.7, 58.0, 93.2, 41.5, 85.2)),
    "visa": ((90.6, 90.9, 89.3, 98.0, 35.4, 42.5, 91.9, 27.9, 76.9), (93.9, 94.7, 90.2, 98.4, 42.3, 46.3, 91.9, 31.2, 79.7)),
    "mvtec_3d": ((75.8, 91.2, 91.5, 98.4, 29.6, 35.5, 93.9, 22.2, 73.7), (81.8, 93.9, 92.8, 98.5, 34.4, 39.6, 94.1, 25.2, 76.4)),
    "mvtec_loco": ((74.6, 85.3, 78.9, 70.7, 21.0, 26.1, 67.7, 15.8, 60.6), (76.4, 86.8, 79.2, 71.5, 24.3, 28.3, 68.8, 17.6, 62.2)),
    "btad": ((94.4, 96.6, 94.0, 98.1, 59.6, 59.2, 80.7, 42.1, 83.2), (94.6, 97.8, 94.1, 98.0, 59.6, 59.8, 79.0, 42.8, 83.3)),
    "mpdd": ((91.3, 93.6, 91.8, 98.3, 40.4, 41.8, 95.5, 31.4, 79.0), (90.2, 93.3, 90.5, 98.5, 43.0, 44.1, 95.5, 33.6, 79.3)),
    "real_iad": ((82.7, 79.3, 74.1, 97.2, 25.2, 32.8, 90.0, 20.0, 68.8), (83.6, 80.6, 74.8, 97.7, 25.9, 33.6, 90.7, 20.5, 69.6)),
}


def ader_references(dataset, n_categories, note=""):
    """ADer's RD and RD++ rows of a dataset (ADER_PERCENT's), keyed by ADER_COLUMNS."""
    return tuple(Reference(f"{method}, ADer benchmark: one model for all {n_categories} categories, 100 epochs",
                           dict(zip(ADER_COLUMNS, (p / 100 for p in percentages))), ADER_SOURCE + note)
                 for method, percentages in zip(("RD", "RD++"), ADER_PERCENT[dataset]))


# MVTec AD's textures, then its objects, each alphabetically: the order of the MVTec AD paper's tables and of anomalib's
MVTEC_AD = Dataset("MVTec AD", ("carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
                                "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"), (
    Reference("anomalib (seed 42, batch 16)", {  # wide_resnet50_2, 256x256, the model after the last epoch
        "image_auroc": (.984, 1.000, 1.000, 1.000, .997, 1.000, .966, .974, 1.000, 1.000, .972, .985, .953, .970, .978),
        "pixel_auroc": (.988, .992, .991, .954, .947, .984, .964, .987, .988, .969, .975, .996, .991, .893, .984),
        "image_f1": (.977, 1.000, 1.000, .994, .992, .984, .930, .982, 1.000, 1.000, .967, .963, .952, .927, .975),
    }, "anomalib's Reverse Distillation benchmark (github.com/openvinotoolkit/anomalib, "
       "src/anomalib/models/image/reverse_distillation/README.md: wide_resnet50_2, seed 42, train batch size 16)"),
    Reference("paper (Deng & Li, CVPR 2022), 15-category mean", {"image_auroc": .985, "pixel_auroc": .978},
              f"{RD_PAPER}: its MVTec AD means (image AUROC 98.5, pixel AUROC 97.8, PRO 93.9)"),
    Reference("paper's PRO (per-image, official script; not AUPRO), 15-category mean", {"pixel_aupro": .939},
              f"{RD_PAPER}: its MVTec AD means (image AUROC 98.5, pixel AUROC 97.8, PRO 93.9)"),
    Reference("RD++ (CVPR 2023), 15-category mean, each category at its epoch of best test score",
              {"image_auroc": .9944, "pixel_auroc": .9825, "pixel_aupro": .9499},
              f"{RDPP_PAPER}: its MVTec AD means (image AUROC 99.44, pixel AUROC 98.25, AUPRO 94.99)"),
    *ader_references("mvtec_ad", 15),
))
VALIDATION_NOTE = "; ADer also trains on the validation images, which this project's conversion leaves out"

# MVTec AD 2's published RD and RD++ rows. They are on its PRIVATE test sets, which only MVTec's server scores
# (scripts/mvtec_ad2_submission.py), never on test_public, the split evaluated here: a different split, so they do not
# compare one to one with our rows. Per object, in MVTEC_AD_2's order, in %.
AD2_PAPER = ("Heckler-Kram et al., \"The MVTec AD 2 Dataset: Advanced Scenarios for Unsupervised Anomaly Detection\", "
             "arXiv 2503.21622 (2025)")
AD2_AUPRO_SOURCE = (f"{AD2_PAPER}, its table of AU-PRO_0.05 at 256 x 256 input (Table VII); the per-object values as transcribed from "
                    "the paper by a public note, their means (RD 26.4 / 25.0, RD++ 27.1 / 25.2 on TEST_priv / TEST_priv,mix) "
                    "as the paper quotes them; not read in the paper's own text, which was not reachable from here")
AD2_SEGF1_SOURCE = ("SegF1 of the MVTec AD 2 benchmark (threshold: mean + 3 std of the validation images' pixels) as tabulated in "
                    "RoBiS (Li et al., arXiv 2505.21152), Table 1, which lists the methods as officially benchmarked in MVTec AD 2; "
                    "read in assets/RoBiS.pdf of github HUST-SLOW/RoBiS at commit c318cf4")
AD2_PERCENT = {  # (method, split): {metric: per-object values}
    ("RD", "TEST_priv"): {"pixel_aupro_05": (7.0, 3.5, 48.2, 11.2, 9.5, 62.1, 19.7, 50.2),
                          "seg_f1": (0.1, 2.6, 22.5, 7.0, 41.3, 28.0, 1.9, 41.2)},
    ("RD", "TEST_priv,mix"): {"pixel_aupro_05": (7.5, 3.6, 48.2, 11.4, 8.8, 60.3, 12.2, 48.3),
                              "seg_f1": (0.1, 2.2, 22.7, 3.9, 39.2, 28.3, 0.8, 36.7)},
    ("RD++", "TEST_priv"): {"pixel_aupro_05": (7.7, 4.8, 54.4, 12.2, 9.3, 63.0, 15.4, 49.7),
                            "seg_f1": (0.1, 2.9, 26.9, 9.5, 40.9, 28.2, 1.3, 44.1)},
    ("RD++", "TEST_priv,mix"): {"pixel_aupro_05": (7.0, 5.3, 54.4, 10.2, 8.9, 57.0, 10.1, 48.9),
                                "seg_f1": (0.1, 2.3, 26.7, 2.9, 37.7, 22.8, 0.9, 40.5)},
}
MVTEC_AD_2 = Dataset("MVTec AD 2 (test_public)", ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"), tuple(
    Reference(f"{method}, MVTec AD 2 paper, {split} (private test set, not test_public)", {metric: tuple(v / 100 for v in values)},
              AD2_AUPRO_SOURCE if metric == "pixel_aupro_05" else AD2_SEGF1_SOURCE)
    for (method, split), metrics in AD2_PERCENT.items() for metric, values in metrics.items()))

DATASETS = {
    "mvtec_ad": MVTEC_AD,
    # amazon-science/spot-diff prepare_data.py's data_list
    "visa": Dataset("VisA", ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                             "pcb3", "pcb4", "pipe_fryum"),
                    ader_references("visa", 12)),
    "mvtec_3d": Dataset("MVTec 3D-AD (RGB)", ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato",
                                              "rope", "tire"),
                        ader_references("mvtec_3d", 10, VALIDATION_NOTE)),
    "mvtec_loco": Dataset("MVTec LOCO AD", ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"),
                          ader_references("mvtec_loco", 5, VALIDATION_NOTE)),
    "btad": Dataset("BTAD", ("01", "02", "03"), (
        Reference("RD++ (Tien et al., CVPR 2023), 3-category mean", {"image_auroc": .9563, "pixel_auroc": .9743},
                  f"{RDPP_PAPER}: its BTAD means (detection AUROC 95.63, segmentation AUROC 97.43) as listed with the paper "
                  "on paperswithcode.com/paper/revisiting-reverse-distillation-for-anomaly"),
        *ader_references("btad", 3),
    )),
    "mpdd": Dataset("MPDD", ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"),
                    ader_references("mpdd", 6)),
    "mvtec_ad_2": MVTEC_AD_2,
    # github Tencent/AnomalyDetection_Real-IAD, experiments/RealIAD-C1/config.yaml at 98c28ff: its meta_file list
    "real_iad": Dataset("Real-IAD", ("audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint",
                                     "mounts", "pcb", "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll",
                                     "regulator", "rolled_strip_base", "sim_card_set", "switch", "tape", "terminalblock",
                                     "toothbrush", "toy", "toy_brick", "transistor1", "u_block", "usb", "usb_adaptor",
                                     "vcpill", "wooden_beads", "woodstick", "zipper"),
                        ader_references("real_iad", 30, "; Real-IAD with all five camera views, each an image (prepare_dataset --views=all)")),
}

# (dataset, method): ADer's published row of that dataset, the one ader_references put among its references; shown
# under a unified run's rows when its categories are all of the dataset (evaluation/results.py)
ADER_UNIFIED = {(name, method): reference for name, dataset in DATASETS.items()
                for method, reference in zip(("rd", "rd++"), (r for r in dataset.references if r.source.startswith(ADER_SOURCE)))}

# RD++'s official number of training epochs per MVTec AD category (its code, tientrandinh/Revisiting-Reverse-Distillation,
# trains each category this long); train.py --official_epochs=1
OFFICIAL_EPOCHS = dict(zip(MVTEC_AD.categories, (10, 260, 10, 260, 100, 200, 240, 300, 160, 160, 200, 280, 280, 300, 300)))


def dataset_for(names):
    """The dataset holding the most of these category names (the first listed on a tie), or None if it holds none."""
    names = set(names)
    best = max(DATASETS.values(), key=lambda d: len(names & set(d.categories)))
    return best if names & set(best.categories) else None
