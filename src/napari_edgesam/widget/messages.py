"""What the panel tells the user about the view: plain functions from napari's state to a
sentence (None when all is well). No Qt."""

from __future__ import annotations

__all__ = ["byte_size", "channel_display_warning", "clicks_problem", "model_label",
           "slice_text", "view_problem"]


def view_problem(viewer, image_layer) -> str | None:
    """Why the current view cannot be segmented (None when it can)."""
    if image_layer is None:
        return "Add or choose an image layer."
    if viewer.dims.ndisplay != 2:
        return "EdgeSAM works in the 2D view: switch napari to 2D (Ctrl+Y)."
    nd = viewer.dims.ndim
    if list(viewer.dims.displayed) != [nd - 2, nd - 1]:
        return ("EdgeSAM segments the last two axes of the image: reset the axis order "
                "(napari's 'transpose'/'roll' buttons changed it).")
    return None


def clicks_problem(viewer, points_layer, boxes_layer) -> str | None:
    """Why a click on the canvas does not add a point: another layer is selected, or the
    points layer is not in its *add* mode."""
    active = viewer.layers.selection.active
    pts = points_layer
    if active is None or pts is None or active is boxes_layer:
        return None
    if active is pts:
        if pts.mode != "add":
            return (f"'{pts.name}' is in {pts.mode} mode: press 2 (add points) to click "
                    "prompts again.")
        return None
    return (f"Clicks go to '{active.name}', selected in the layer list. To segment, "
            f"select '{pts.name}' in the layer list.")


def slice_text(geometry, lead, channel: int) -> str:
    """``"slice 12"``, ``"slice 3, 7 channel 1"`` or ``"image"`` for slice ``lead``
    (leading indices of the image data)."""
    if geometry is None:
        return ""
    idx = geometry.labels_index(lead) if lead is not None else ()
    parts = []
    if len(idx) == 1:
        parts.append(f"slice {idx[0]}")
    elif idx:
        parts.append("slice " + ", ".join(str(i) for i in idx))
    if geometry.channel_axis is not None:
        parts.append(f"channel {channel}")
    return " ".join(parts) if parts else "image"


def channel_display_warning(geometry, name: str) -> str:
    """napari lines layers up by their last axes: a Labels layer without a channel axis
    that is not first shows its slices along the wrong sliders."""
    ax = geometry.channel_axis
    return (f"EdgeSAM: channels on axis {ax} of '{name}' {geometry.shape}: napari lines "
            "layers up by their last axes, so the Labels layer (which has no channel axis) "
            "will not line up with this image. Segmentation and the label data are correct, "
            "but for a correct display open the image with its channels split (for example "
            f"viewer.add_image(data, channel_axis={ax}) in napari's console) and pick one "
            "channel's layer.")


def model_label(model) -> str:
    """How a model is named: ``"custom: <encoder file>"`` for custom pairs (never called
    EdgeSAM), ``"<name>: <encoder file>"`` otherwise."""
    from pathlib import Path

    name = model.name or "custom"
    if name.startswith("custom"):
        return f"custom: {Path(model.encoder_path).name}"
    return f"{name}: {Path(model.encoder_path).name}"


def byte_size(n: int) -> str:
    """``n`` bytes for people: ``"756 B"``, ``"9.3 kB"``, ``"22.1 MB"``."""
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:.1f} MB"
