"""Personalization algorithms: local-only, FedAvg, FedAvg + fine-tuning, FedPer, FedRep,
LG-FedAvg, Ditto, FedBN, FedProx, APFL, pFedMe, Per-FedAvg, FedBABU, FedRoD."""

from .registry import ALGORITHMS, Algorithm, device_config, get_algorithm, resolve_personal

__all__ = ["ALGORITHMS", "Algorithm", "device_config", "get_algorithm", "resolve_personal"]
