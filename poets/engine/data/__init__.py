"""Datasets in the poets layout, the one image decode path, dataset archives."""
