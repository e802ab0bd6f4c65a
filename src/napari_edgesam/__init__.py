"""napari-edgesam: EdgeSAM segmentation for napari, on the CPU, without PyTorch.

Layout (data flows one way, top to bottom):

- :mod:`napari_edgesam.engine`: numpy + onnxruntime only. Model files and sessions,
  intensity mapping, preprocessing, prediction, embedding cache.
- :mod:`napari_edgesam.workflows`: built on the engine. Propagation through stacks,
  automatic segmentation, batch processing of TIFF files.
- Adapters: :mod:`napari_edgesam.widget` (napari dock widget and layers) and
  :mod:`napari_edgesam.cli` (the ``napari-edgesam`` command line).

Nothing heavy is imported here so that napari starts fast.
"""

__version__ = "0.1.0.dev0"
