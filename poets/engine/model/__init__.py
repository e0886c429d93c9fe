"""Backbones, the bottleneck cache and training the new head."""
