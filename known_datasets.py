"""
The anomaly-detection datasets this project knows, all in the MVTec AD layout (scripts/prepare_dataset.py converts
the others): each one's categories in its authors' order, and the numbers published for RD / RD++ on it, each with
its source. results.py puts them under our own rows in results.md; scripts/sweep.py runs these categories when no
--categories is given; train.py --official_epochs=1 reads RD++'s epochs per MVTec AD category here.

    from known_datasets import dataset_for
    dataset = dataset_for(["pcb1", "candle"])  # the DATASETS entry holding most of these names, or None
    dataset.categories                         # ('candle', 'capsules', ...): VisA's order

Only numbers found in a published source are here; a dataset without one has no reference rows.
"""

from collections import namedtuple

# label: the row's name in results.md; values: {metric: the mean over the dataset's categories} or {metric: a tuple
# with a value per category, in the dataset's order}; source: where the numbers are published
Reference = namedtuple("Reference", "label values source")
# name: shown in results.md; categories: the authors' order; references: Reference rows
Dataset = namedtuple("Dataset", "name categories references", defaults=((),))

RD_PAPER = "Deng & Li, \"Anomaly Detection via Reverse Distillation from One-Class Embedding\", CVPR 2022"
RDPP_PAPER = "Tien et al., \"Revisiting Reverse Distillation for Anomaly Detection\", CVPR 2023"

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
))

DATASETS = {
    "mvtec_ad": MVTEC_AD,
    # amazon-science/spot-diff prepare_data.py's data_list
    "visa": Dataset("VisA", ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                             "pcb3", "pcb4", "pipe_fryum")),
    "mvtec_3d": Dataset("MVTec 3D-AD (RGB)", ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato",
                                              "rope", "tire")),
    "mvtec_loco": Dataset("MVTec LOCO AD", ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")),
    "btad": Dataset("BTAD", ("01", "02", "03"), (
        Reference("RD++ (Tien et al., CVPR 2023), 3-category mean", {"image_auroc": .9563, "pixel_auroc": .9743},
                  f"{RDPP_PAPER}: its BTAD means (detection AUROC 95.63, segmentation AUROC 97.43) as listed with the paper "
                  "on paperswithcode.com/paper/revisiting-reverse-distillation-for-anomaly"),
    )),
    "mpdd": Dataset("MPDD", ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")),
    "mvtec_ad_2": Dataset("MVTec AD 2 (test_public)", ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial",
                                                       "wallplugs", "walnuts")),
}

# RD++'s official number of training epochs per MVTec AD category (its code, tientrandinh/Revisiting-Reverse-Distillation,
# trains each category this long); train.py --official_epochs=1
OFFICIAL_EPOCHS = dict(zip(MVTEC_AD.categories, (10, 260, 10, 260, 100, 200, 240, 300, 160, 160, 200, 280, 280, 300, 300)))


def dataset_for(names):
    """The dataset holding the most of these category names (the first listed on a tie), or None if it holds none."""
    names = set(names)
    best = max(DATASETS.values(), key=lambda d: len(names & set(d.categories)))
    return best if names & set(best.categories) else None
