"""The preview: the mask answering the current prompts, drawn on a 2D Labels layer over the
current slice (value 1, yellow), or the pending propagation result on that slice (value
2, cyan).

Small images: the preview layer holds a whole slice. Big (tiled) images: it holds only the
mask's crop and is translated into place, so no slice-sized array is ever made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import prompt_layers

__all__ = ["Preview", "PreviewLayer"]


@dataclass(frozen=True)
class Preview:
    """The prompt preview shown on one slice.

    Attributes
    ----------
    mask : ndarray of uint8 (0/1)
        Slice-sized ``(H, W)`` for whole-slice embeddings (it then becomes the preview
        layer's data without a copy), else (tiles) the crop placed at ``offset``.
    offset : (int, int)
        ``(row, col)`` of ``mask[0, 0]`` in the slice (original pixels).
    bbox : (r0, c0, r1, c1) or None
        The mask's half-open bounding box in slice pixels; None when empty.
    lead : tuple of int or None
        The slice's leading indices in the image layer's data.
    """

    mask: np.ndarray
    offset: tuple
    bbox: tuple | None
    lead: tuple | None

    def crop(self) -> np.ndarray | None:
        """The mask on its bounding box, bool ``(r1 - r0, c1 - c0)`` (a view), or None."""
        if self.bbox is None:
            return None
        r0, c0, r1, c1 = self.bbox
        orow, ocol = self.offset
        return self.mask[r0 - orow:r1 - orow, c0 - ocol:c1 - ocol].view(bool)

    def full(self, shape_hw) -> np.ndarray:
        """The mask as a bool ``shape_hw`` slice."""
        if self.mask.shape == tuple(shape_hw):
            return self.mask.astype(bool)
        out = np.zeros(shape_hw, dtype=bool)
        r0, c0 = self.offset
        out[r0:r0 + self.mask.shape[0], c0:c0 + self.mask.shape[1]] = self.mask.view(bool)
        return out


class PreviewLayer:
    """The napari Labels layer that shows a :class:`Preview` (created on demand).

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer):
        self.viewer = viewer
        self.layer = None
        self._offset = (0, 0)

    def exists(self) -> bool:
        """Whether the preview layer is in the viewer."""
        return self.layer is not None and self.layer in self.viewer.layers

    def forget(self, layer) -> None:
        """``layer`` was removed from the viewer."""
        if layer is self.layer:
            self.layer = None

    def ensure(self, image_layer, geometry, crops: bool) -> bool:
        """Create the layer over ``image_layer`` if needed; True when it was created."""
        if self.exists():
            return False
        shape = (1, 1) if crops else geometry.spatial_shape
        self.layer = prompt_layers.make_preview_layer(image_layer, self.viewer, shape)
        self._offset = (0, 0)
        return True

    def align(self, image_layer, geometry, crops: bool) -> None:
        """Follow the image's transform; switch between whole slices and crops."""
        pv = self.layer
        if image_layer is None or pv is None:
            return
        nd = image_layer.ndim
        hw = geometry.spatial_shape
        prompt_layers.copy_transform(image_layer, pv, list(range(nd - 2, nd)))
        if crops:
            if pv.data.shape == hw and hw != (1, 1):  # was showing whole slices
                pv.data = np.zeros((1, 1), dtype=np.uint8)
                self._offset = (0, 0)
            self._place(image_layer, self._offset)
        elif pv.data.shape != hw:
            pv.data = np.zeros(hw, dtype=np.uint8)

    def show(self, image_layer, geometry, crops: bool, mask, offset=(0, 0), value=1):
        """Draw ``mask`` (uint8/bool, a slice or a crop at ``offset``) with ``value``; None
        clears the layer."""
        pv = self.layer
        if pv is None:
            return
        hw = geometry.spatial_shape
        if crops:
            if mask is None:
                if pv.data.shape != (1, 1) or pv.data.any():
                    pv.data = np.zeros((1, 1), np.uint8)
                self._place(image_layer, (0, 0))
                return
            data = mask.astype(np.uint8) * np.uint8(value) if value != 1 else mask
            self._place(image_layer, offset)
            pv.data = data
            return
        if mask is None:
            if pv.data.shape != hw or pv.data.any():
                pv.data = np.zeros(hw, dtype=np.uint8)
            return
        if value == 1 and mask.shape == hw:
            pv.data = mask
            return
        full = np.zeros(hw, dtype=np.uint8)
        r0, c0 = offset
        full[r0:r0 + mask.shape[0], c0:c0 + mask.shape[1]][mask.astype(bool)] = value
        pv.data = full

    def _place(self, image_layer, offset) -> None:
        """Translate the layer so that its data starts at ``offset`` (row, col) of the
        image's slice."""
        pv = self.layer
        if image_layer is None or pv is None:
            return
        self._offset = tuple(offset)
        nd = image_layer.ndim
        kw = prompt_layers.transform_kwargs(image_layer, list(range(nd - 2, nd)))
        translate = tuple(float(t) + float(sc) * float(o)
                          for t, sc, o in zip(kw["translate"], kw["scale"], offset, strict=True))
        if tuple(pv.scale) != tuple(kw["scale"]):
            pv.scale = kw["scale"]
        if tuple(pv.translate) != translate:
            pv.translate = translate
