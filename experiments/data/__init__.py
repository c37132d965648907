"""Fleet data: generators, partitioners, loaders for data on disk, and the unified type."""

from .dataset import DeviceData, FleetData, make_fleet_data, total_variation
from .generators import synthetic_fedprox, synthetic_images
from .loaders import LEAF_CHARS, LeafData, load_leaf, load_npz_dir
from .partition import dirichlet, iid, k_classes, natural, train_test_split_per_device

__all__ = ["DeviceData", "FleetData", "LEAF_CHARS", "LeafData", "dirichlet", "iid", "k_classes",
           "load_leaf", "load_npz_dir", "make_fleet_data", "natural", "synthetic_fedprox",
           "synthetic_images", "total_variation", "train_test_split_per_device"]
