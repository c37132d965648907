"""Fleet data: generators, partitioners, loaders for data on disk, the unified type, and
the data kinds (one registry entry each) that make a fleet's data from a config."""

from .dataset import DeviceShard, FleetData, total_variation
from .generators import synthetic_fedprox, synthetic_images
from .kinds import KINDS, DataKind, Param, make_fleet_data
from .loaders import LEAF_CHARS, LeafData, load_leaf, load_npz_dir
from .partition import dirichlet, iid, k_classes, natural, train_test_split_per_device

__all__ = ["KINDS", "LEAF_CHARS", "DataKind", "DeviceShard", "FleetData", "LeafData", "Param",
           "dirichlet", "iid", "k_classes", "load_leaf", "load_npz_dir", "make_fleet_data",
           "natural", "synthetic_fedprox", "synthetic_images", "total_variation",
           "train_test_split_per_device"]
