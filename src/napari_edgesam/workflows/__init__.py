"""Workflows built on the engine (no Qt, no napari): TIFF I/O, propagation through stacks,
automatic segmentation, and batch processing of folders."""
