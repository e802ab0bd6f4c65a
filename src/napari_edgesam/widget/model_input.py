"""What the model sees of the session's image: the channel, the contrast mapping and the
tiles, and the identity of the embedding they call for.

:class:`ModelInput` is the part of :class:`~.session.AnnotationSession` that the user's
choices in the *Image* section change; each change re-encodes the current slice (cached
embeddings of earlier choices are kept, so going back is instant).
"""

from __future__ import annotations

from . import messages
from ._geometry import ImageGeometry

__all__ = ["MAPPING_MODES", "ModelInput"]

#: Contrast mapping choices: key -> label (the keys are
#: :func:`napari_edgesam.engine.intensity.stack_mapping`'s modes).
MAPPING_MODES = {
    "auto": "auto (8-bit as is, else stack percentiles)",
    "contrast": "layer contrast limits",
    "percentiles": "stack percentiles (0.5 - 99.8 %)",
}


class ModelInput:
    """Channel, contrast mapping and tiles of an annotation session."""

    def set_channel_axis(self, axis: int | None, channel: int = 0) -> None:
        """Treat leading ``axis`` of the image as channels and feed ``channel`` to the
        model (the target Labels layer then has no channel axis)."""
        if self.geometry is None:
            raise ValueError("no image layer")
        geom = ImageGeometry(self.geometry.shape, self.geometry.rgb, axis)
        if self.target.layer is not None and geom.labels_shape != self.geometry.labels_shape:
            self.target.layer = None
        self.geometry = geom
        self.channel = int(channel)
        self.encoder.stack_mappings = {}
        self.image_changed.emit()
        self.layers_changed.emit()
        self.on_slice_changed(force=True)
        if geom.channel_axis is not None and geom.channel_axis > 0:
            self.warn_later(messages.channel_display_warning(geom, self.image_layer.name))

    def set_channel(self, channel: int) -> None:
        """Use channel ``channel`` of a multichannel image (re-encodes the slice)."""
        self.channel = int(channel)
        self.on_slice_changed(force=True)

    def set_mapping_mode(self, mode: str) -> None:
        """``"auto"``, ``"contrast"`` (the layer's contrast limits) or ``"percentiles"``."""
        if mode not in MAPPING_MODES:
            raise ValueError(f"unknown contrast mapping {mode!r}; one of {list(MAPPING_MODES)}")
        if mode != self.mapping_mode:
            self.mapping_mode = mode
            self.on_slice_changed(force=True)

    def set_tiles(self, value: bool) -> None:
        """Answer prompts from full-resolution tiles (see :mod:`napari_edgesam.engine.tiling`)."""
        if bool(value) == self.use_tiles:
            return
        self.use_tiles = bool(value)
        if self.geometry is not None:
            self.preview_view.align(self.image_layer, self.geometry, self.crop_preview)
            self.on_slice_changed(force=True)

    def set_tile_geometry(self, tile_size: int | None = None, halo: int | None = None):
        """Tile side and halo in image pixels (None: the engine's defaults, 1024 and 128)."""
        self.tile_size = None if tile_size is None else int(tile_size)
        self.tile_halo = None if halo is None else int(halo)
        if self.use_tiles:
            self.on_slice_changed(force=True)

    def mapping_spec(self):
        """``("contrast", (lo, hi))``, ``("auto",)`` or ``("percentiles",)``."""
        if self.mapping_mode == "contrast":
            lo, hi = (float(v) for v in self.image_layer.contrast_limits)
            return ("contrast", (lo, hi))
        return (self.mapping_mode,)

    def wanted_key(self):
        """The identity of the embedding the current view needs (None: none needed)."""
        if self.image_layer is None or self.model is None or self.lead is None:
            return None
        return (self.image_layer.unique_id, self._data_version, self.slice_key(),
                self.mapping_spec(), id(self.predictor), self.tiled_key())

    def tiled_key(self):
        """``(tile_size, halo)`` when prompts are answered through tiles, else None."""
        if self.geometry is None or not self.use_tiles:
            return None
        return (self.tile_size, self.tile_halo)

    @property
    def crop_preview(self) -> bool:
        """Whether the preview layer holds crops (tiled images) instead of whole slices."""
        return bool(self.tiled_key())

    def stack_mapping_key(self):
        """Key of the stack-wide intensity mapping (None for layer contrast limits)."""
        spec = self.mapping_spec()
        if spec[0] == "contrast":
            return None
        ch = self.channel if self.geometry.channel_axis is not None else None
        return (self.image_layer.unique_id, self._data_version, self.geometry.channel_axis,
                ch, spec[0])

    @property
    def stack_mappings(self) -> dict:
        """Stack-wide mappings chosen so far, by :meth:`stack_mapping_key`."""
        return self.encoder.stack_mappings
