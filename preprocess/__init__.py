"""Offline preprocessing: decode videos, compute foreground masks, write HDF5 shards."""
