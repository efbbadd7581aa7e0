"""Reconstruction networks: the DC-CNN family `DnCm`."""

from sftkd_cli.models.dccnn import DCCNN, build_model, count_parameters, parse_name

__all__ = ["DCCNN", "build_model", "count_parameters", "parse_name"]
