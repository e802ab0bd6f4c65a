"""Calibration: the physical size of a TIFF's pixels, as its metadata says.

One concept: reading a file's calibration (OME ``PhysicalSize*``, ImageJ ``unit`` /
``spacing`` / ``finterval``, TIFF resolution tags) out of a
:class:`~napari_edgesam.workflows.tiff_io.TiffMetadata`, either as OME attributes to write
into a label TIFF (:func:`physical_sizes`, used by :mod:`.labels_tiff`) or as micrometres
per pixel along X, Y, Z (:func:`pixel_sizes`, used to show images and labels at their
physical scale).
"""

from __future__ import annotations

import math

from .tiff_io import TiffMetadata

__all__ = ["physical_sizes", "pixel_sizes"]


def physical_sizes(meta: TiffMetadata) -> dict:
    """A file's calibration as OME ``Pixels`` attributes (what a label TIFF written as
    OME-TIFF records): the file's own OME sizes, else those of its ImageJ calibration.

    Parameters
    ----------
    meta : TiffMetadata
        As read by :class:`~napari_edgesam.workflows.tiff_io.LazyTiff`.

    Returns
    -------
    dict
        Some of ``PhysicalSizeX``/``Y``/``Z`` (float, in the unit of the matching
        ``PhysicalSize...Unit`` entry, e.g. ``"µm"``) and ``TimeIncrement`` (seconds, with
        ``TimeIncrementUnit="s"``). X is columns, Y rows. Empty when the file says nothing.
    """
    phys = dict(meta.physical_size or {})
    if phys:
        return phys
    ij = meta.imagej or {}
    unit = ij.get("unit")
    if unit and meta.resolution:
        u = "µm" if unit in ("um", "micron", "microns", "\\u00B5m") else unit
        try:
            (xn, xd), (yn, yd) = meta.resolution
            phys.update({"PhysicalSizeX": xd / xn, "PhysicalSizeXUnit": u,
                         "PhysicalSizeY": yd / yn, "PhysicalSizeYUnit": u})
        except ZeroDivisionError:
            pass
        if "spacing" in ij:
            phys.update({"PhysicalSizeZ": float(ij["spacing"]), "PhysicalSizeZUnit": u})
    if "finterval" in ij:
        phys.update({"TimeIncrement": float(ij["finterval"]), "TimeIncrementUnit": "s"})
    return phys


#: Micrometres per unit, for the length units TIFF metadata uses.
_MICROMETRES = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "å": 1e-4, "angstrom": 1e-4, "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "in": 25400.0, "inch": 25400.0,
}


def pixel_sizes(meta: TiffMetadata) -> dict[str, float]:
    """Physical pixel size per axis, in micrometres, as far as a file's metadata says.

    Sources, first found wins per axis: OME ``PhysicalSizeX/Y/Z`` (with their units), ImageJ
    calibration (resolution tags in the ImageJ ``unit``, ``spacing`` for Z), then the TIFF
    resolution tags when their ``ResolutionUnit`` is inch or centimetre. Sizes in units
    that are not lengths (ImageJ's ``pixel``...) are left out.

    Parameters
    ----------
    meta : TiffMetadata
        As read by :class:`~napari_edgesam.workflows.tiff_io.LazyTiff`.

    Returns
    -------
    dict
        Some of ``"X"``, ``"Y"``, ``"Z"`` -> size in micrometres (> 0).
    """
    out: dict[str, float] = {}
    phys = physical_sizes(meta)
    for axis in "XYZ":
        value = phys.get(f"PhysicalSize{axis}")
        factor = _MICROMETRES.get(str(phys.get(f"PhysicalSize{axis}Unit", "µm")).strip().lower())
        try:
            size = float(value) * factor if value is not None and factor else 0.0
        except (TypeError, ValueError):
            size = 0.0
        if math.isfinite(size) and size > 0:
            out[axis] = size
    if meta.resolution and meta.resolution_unit in (2, 3) and not ("X" in out and "Y" in out):
        per_unit = 25400.0 if meta.resolution_unit == 2 else 1e4
        try:
            (xn, xd), (yn, yd) = meta.resolution
            if xn > 0 and xd > 0 and yn > 0 and yd > 0:
                out.setdefault("X", per_unit * xd / xn)
                out.setdefault("Y", per_unit * yd / yn)
        except (TypeError, ValueError):
            pass
    return out
