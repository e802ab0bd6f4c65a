"""Prompt layers: a Points layer for clicks and a Shapes layer for boxes, with their mouse
and key bindings. napari and Qt are imported here; the model is not.

Mouse (on the "EdgeSAM points" layer, in its default *add* mode):

- left click: positive point;
- right click, or Ctrl/Alt (Cmd/Option on macOS) + left click: negative point;
- Shift + drag: a box (drawn in any direction; it replaces the previous box of the slice);
- plain drag: pans the view, the wheel zooms (as everywhere in napari).

On the "EdgeSAM box" Shapes layer any rectangle drawn with napari's own tools is a box too.

In the edit mode (:mod:`.corrections`, key E) the points layer is in napari's pan/zoom
mode and a left click selects the object under the cursor instead (Shift or Ctrl + click:
add to or remove from the selection); :data:`CORRECTION_KEYS` act on the selection.

:func:`gather` reads the prompts of one slice from the two layers, in the image's data
coordinates.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from ._geometry import image_data, rectangle_to_box

POINTS_NAME = "EdgeSAM points"
BOXES_NAME = "EdgeSAM box"
PREVIEW_NAME = "EdgeSAM preview"

POSITIVE = "positive"
NEGATIVE = "negative"
#: Point colours: positive green, negative magenta (readable for most colour-blind users).
PROMPT_COLOURS = {POSITIVE: "lime", NEGATIVE: "magenta"}
BOX_COLOUR = "orange"
PREVIEW_COLOUR = "yellow"
#: Outline of the objects selected in the edit mode (value 3 on the preview layer).
SELECTION_COLOUR = "white"

#: Mouse buttons (vispy numbering).
LEFT, RIGHT = 1, 2
#: Modifiers that turn a left click into a negative point.
NEGATIVE_MODIFIERS = ("Control", "Alt", "Meta")
#: Screen pixels a press must move to count as a drag, as napari's own tools.
DRAG_THRESHOLD = 5

@dataclass(frozen=True)
class Prompts:
    """The prompts of one slice, in the image's data pixels (original frame).

    Attributes
    ----------
    points : tuple of (float, float)
        ``(x, y)`` = (column, row) of each click.
    labels : tuple of int
        1 positive, 0 negative, one per point.
    box : (x0, y0, x1, y1) or None
        The newest box of the slice, clipped to the image.
    """

    points: tuple
    labels: tuple
    box: tuple | None

    @property
    def empty(self) -> bool:
        """No point and no box."""
        return not self.points and self.box is None

    @property
    def usable(self) -> bool:
        """The engine needs a box or at least one positive point."""
        return self.box is not None or any(v == 1 for v in self.labels)


def to_image_data(layer, coords, image_layer) -> np.ndarray:
    """Data coordinates of ``layer`` -> data coordinates of ``image_layer`` (through world
    coordinates)."""
    return np.asarray(image_layer.world_to_data(layer.data_to_world(coords)), dtype=float)


def gather(points_layer, boxes_layer, image_layer, geometry, lead) -> Prompts:
    """The prompts on slice ``lead`` (leading indices of ``image_layer``'s data): clicks
    inside the image, and the newest box of the slice."""
    points, labels = [], []
    pts = points_layer
    if pts is not None and len(pts.data):
        feats = pts.features
        kinds = list(feats["prompt"]) if "prompt" in feats else [POSITIVE] * len(pts.data)
        for coord, kind in zip(pts.data, kinds, strict=False):
            d = to_image_data(pts, coord, image_layer)
            if not geometry.same_slice(geometry.leading_index(d), lead):
                continue
            r, c = d[-2], d[-1]
            if not geometry.inside(r, c):
                continue
            points.append((float(c), float(r)))
            labels.append(0 if kind == NEGATIVE else 1)
    box = None
    shapes = boxes_layer
    if shapes is not None and shapes.nshapes:
        for verts in reversed(shapes.data):
            d = np.array([to_image_data(shapes, v, image_layer) for v in verts])
            if not geometry.same_slice(geometry.leading_index(d[0]), lead):
                continue
            box = rectangle_to_box(d[:, -2:], geometry.spatial_shape)
            if box is not None:
                break
    return Prompts(tuple(points), tuple(labels), box)


def on_slice(shapes, image_layer, geometry, lead) -> list[int]:
    """Indices of the shapes whose first vertex lies on slice ``lead``."""
    return [i for i, v in enumerate(shapes.data)
            if geometry.same_slice(
                geometry.leading_index(to_image_data(shapes, v[0], image_layer)), lead)]


#: Keys bound on the prompt layers: key -> action name (see :func:`install_points_bindings`).
KEYS = {
    "c": "commit",
    "Enter": "commit",
    "Escape": "clear_prompts",
    "x": "clear_prompts",
    "Control-z": "undo",
    "Control-Shift-z": "redo",
    "Shift-p": "propagate",
    "Shift-c": "commit_propagation",
    "Shift-w": "jump_to_weakest_slice",
    "Shift-n": "next_image",
    "Shift-b": "previous_image",
}
#: Keys of the corrections (:class:`.corrections.Corrections` method names), bound on the
#: points layer; Delete and Backspace keep napari's meaning (delete the selected points)
#: outside the edit mode.
CORRECTION_KEYS = {
    "e": "toggle",
    "Delete": "delete",
    "Backspace": "delete",
    "m": "merge",
    "r": "resegment",
    "Shift-m": "split",
}
#: Keys also bound on the box layer (napari uses Escape, Enter and X there for drawing).
BOX_KEYS = {"c": "commit", "Control-z": "undo", "Control-Shift-z": "redo",
            "Shift-c": "commit_propagation"}
#: Colour of the pending propagation result on the preview layer (value 2).
PROPAGATION_COLOUR = "cyan"


def is_negative_click(event) -> bool:
    """Whether a mouse press asks for a negative point."""
    if getattr(event, "button", LEFT) == RIGHT:
        return True
    mods = getattr(event, "modifiers", ()) or ()
    return any(m in mods for m in NEGATIVE_MODIFIERS)


def transform_kwargs(image_layer, axes=None) -> dict:
    """Layer keyword arguments that place a new layer exactly over ``image_layer``.

    With ``axes`` (a subset of the image's axes, for a layer with fewer dimensions) only
    scale and translate are copied, unless ``axes`` are all axes; rotation, shear and a
    general affine transform of the image are copied only for layers of the image's
    dimensionality.
    """
    nd = image_layer.ndim
    if axes is None or list(axes) == list(range(nd)):
        return {
            "scale": tuple(image_layer.scale),
            "translate": tuple(image_layer.translate),
            "rotate": np.asarray(image_layer.rotate),
            "shear": np.asarray(image_layer.shear),
            "affine": np.asarray(image_layer.affine.affine_matrix),
        }
    return {
        "scale": tuple(image_layer.scale[i] for i in axes),
        "translate": tuple(image_layer.translate[i] for i in axes),
    }


def copy_transform(image_layer, layer, axes=None) -> None:
    """Realign an existing layer with ``image_layer`` (see :func:`transform_kwargs`)."""
    for name, value in transform_kwargs(image_layer, axes).items():
        setattr(layer, name, value)


def make_points_layer(image_layer, viewer):
    """A new Points layer for clicks, aligned with ``image_layer``."""
    import pandas as pd

    layer = viewer.add_points(
        np.zeros((0, image_layer.ndim)),
        ndim=image_layer.ndim,
        name=POINTS_NAME,
        features=pd.DataFrame(
            {"prompt": pd.Categorical([], categories=[POSITIVE, NEGATIVE])}
        ),
        face_color="prompt",
        face_color_cycle=dict(PROMPT_COLOURS),
        border_color="black",
        border_width=0.1,
        size=_point_size(image_layer),
        out_of_slice_display=False,
        **transform_kwargs(image_layer),
    )
    layer.feature_defaults = {"prompt": POSITIVE}
    layer.mode = "add"
    return layer


def _point_size(image_layer) -> float:
    """Point size in data pixels: about 2 % of the image's longer side, at least 5."""
    shape = np.asarray(image_data(image_layer).shape)
    hw = shape[-3:-1] if image_layer.rgb else shape[-2:]
    return float(max(5.0, 0.02 * max(hw)))


def make_boxes_layer(image_layer, viewer):
    """A new Shapes layer for boxes, aligned with ``image_layer``."""
    layer = viewer.add_shapes(
        None,
        ndim=image_layer.ndim,
        name=BOXES_NAME,
        shape_type="rectangle",
        edge_color=BOX_COLOUR,
        face_color="transparent",
        edge_width=max(1.0, _point_size(image_layer) / 4),
        **transform_kwargs(image_layer),
    )
    return layer


def make_preview_layer(image_layer, viewer, shape_hw):
    """A 2D Labels layer showing the preview mask (value 1) over the current slice, or the
    pending propagation result on that slice (value 2), and the outline of the objects
    selected in the edit mode (value 3)."""
    from napari.utils.colormaps import DirectLabelColormap

    nd = image_layer.ndim
    layer = viewer.add_labels(
        np.zeros(shape_hw, dtype=np.uint8),
        name=PREVIEW_NAME,
        colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent",
                                                 1: PREVIEW_COLOUR, 2: PROPAGATION_COLOUR,
                                                 3: SELECTION_COLOUR}),
        opacity=0.5,
        **transform_kwargs(image_layer, axes=list(range(nd - 2, nd))),
    )
    layer.editable = False
    return layer


def install_points_bindings(layer, session, actions) -> None:
    """Mouse and key bindings of the points layer: Shift+drag draws a box through
    ``session.draw_box``, a click in the edit mode selects an object through
    ``session.corrections.select_at``, the :data:`KEYS` call ``actions`` (an object with
    those method names) and the :data:`CORRECTION_KEYS` ``session.corrections``; all are
    held weakly."""
    ref = weakref.ref(session)

    def on_press(layer, event):
        w = ref()
        corrections = getattr(w, "corrections", None)
        if corrections is not None and corrections.selecting:
            yield from _select_click(weakref.ref(corrections), event)
            return
        if w is None or layer.mode != "add":
            return
        negative = is_negative_click(event)
        shift_box = "Shift" in (event.modifiers or ()) and not negative
        # napari's own "add" callback (after this one) adds the point with these defaults.
        layer.feature_defaults = {"prompt": NEGATIVE if negative else POSITIVE}
        if not shift_box:
            yield
            while event.type == "mouse_move":
                yield
            # napari's "add" runs after this callback on release: reset afterwards
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: _reset_default(layer))
            return
        start_world = np.asarray(event.position, dtype=float)
        start_pos = np.asarray(event.pos, dtype=float)
        dragging = False
        yield
        while event.type == "mouse_move":
            if np.linalg.norm(np.asarray(event.pos) - start_pos) >= DRAG_THRESHOLD:
                dragging = True
            if dragging:
                event.handled = True  # no panning while drawing the box
                w = ref()
                if w is not None:
                    w.draw_box(start_world, np.asarray(event.position, dtype=float),
                               final=False)
            yield
        if dragging:
            w = ref()
            if w is not None:
                w.draw_box(start_world, np.asarray(event.position, dtype=float), final=True)
        layer.feature_defaults = {"prompt": POSITIVE}

    layer.mouse_drag_callbacks.insert(0, on_press)
    _bind_keys(layer, weakref.ref(actions), KEYS)
    for key, method in CORRECTION_KEYS.items():
        def call(_layer, _method=method):
            corrections = getattr(ref(), "corrections", None)
            if corrections is not None:
                getattr(corrections, _method)()

        layer.bind_key(key, call, overwrite=True)


def _select_click(ref, event):
    """A left click (press and release without a drag) selects the object under the
    press; Shift/Ctrl/Alt toggles it in the selection. A drag pans (napari's pan/zoom)."""
    if getattr(event, "button", LEFT) != LEFT:
        return
    start_world = np.asarray(event.position, dtype=float)
    start_pos = np.asarray(event.pos, dtype=float)
    mods = event.modifiers or ()
    add = any(m in mods for m in ("Shift", *NEGATIVE_MODIFIERS))
    moved = False
    yield
    while event.type == "mouse_move":
        moved = moved or np.linalg.norm(np.asarray(event.pos) - start_pos) >= DRAG_THRESHOLD
        yield
    corrections = ref()
    if not moved and corrections is not None:
        corrections.select_at(start_world, add=add)


def _reset_default(layer) -> None:
    try:
        layer.feature_defaults = {"prompt": POSITIVE}
    except RuntimeError:  # pragma: no cover - layer gone
        pass


def install_boxes_bindings(layer, session, actions) -> None:
    """After a rectangle drawn with napari's own tools, keep only the newest box of the slice
    (``session.keep_newest_box``); :data:`BOX_KEYS` call ``actions``."""
    ref = weakref.ref(session)

    def on_press(layer, event):
        yield
        while event.type == "mouse_move":
            yield
        w = ref()
        if w is not None and layer.mode == "add_rectangle":
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, w.keep_newest_box)

    layer.mouse_drag_callbacks.insert(0, on_press)
    _bind_keys(layer, weakref.ref(actions), BOX_KEYS)


def _bind_keys(layer, ref, keys: dict) -> None:
    for key, method in keys.items():
        def call(_layer, _method=method):
            w = ref()
            if w is not None:
                getattr(w, _method)()

        layer.bind_key(key, call, overwrite=True)


class PromptLayers:
    """The points and box layers of an annotation session, over its image layer.

    Parameters
    ----------
    viewer : napari.Viewer
    session : AnnotationSession
        Gets ``draw_box`` / ``keep_newest_box`` calls from the mouse bindings (weakly).
    actions : object
        What the layers' keys call (see :data:`KEYS`).
    on_change : callable
        Called with napari's event when the prompts change (points or boxes).
    on_mode : callable
        Called when the points layer's mode changes.
    """

    def __init__(self, viewer, session, actions, on_change, on_mode):
        self.viewer = viewer
        self.points = None
        self.boxes = None
        self._session = session
        self._actions = actions
        self._on_change = on_change
        self._on_mode = on_mode
        self._stashed: dict = {}  # image unique_id -> its prompts, while the user is away

    def forget(self, layer) -> None:
        """``layer`` was removed from the viewer."""
        self._stashed.pop(getattr(layer, "unique_id", None), None)
        if layer is self.points:
            self.points = None
        if layer is self.boxes:
            self.boxes = None

    def ensure(self, image_layer, realign: bool = False) -> bool:
        """Create the layers over ``image_layer`` where missing (or of another
        dimensionality); ``realign`` copies the image's transform to existing ones. True
        when a layer was created."""
        layers = self.viewer.layers
        created = False
        for attr, make, install in (("boxes", make_boxes_layer, install_boxes_bindings),
                                    ("points", make_points_layer, install_points_bindings)):
            cur = getattr(self, attr)
            if cur is not None and (cur not in layers or cur.ndim != image_layer.ndim):
                if cur in layers:
                    layers.remove(cur)
                cur = None
            if cur is None:
                cur = make(image_layer, self.viewer)
                install(cur, self._session, self._actions)
                if attr == "points":
                    cur.events.mode.connect(self._on_mode)
                    cur.events.features.connect(self._on_change)
                cur.events.data.connect(self._on_change)
                setattr(self, attr, cur)
                created = True
            elif realign:
                copy_transform(image_layer, cur)
        return created

    def realign(self, image_layer) -> None:
        """Follow ``image_layer``'s transform."""
        for layer in (self.points, self.boxes):
            if layer is not None:
                copy_transform(image_layer, layer)

    def clear(self) -> None:
        """Remove every point and box."""
        pts, shapes = self.points, self.boxes
        if pts is not None and len(pts.data):
            pts.data = np.zeros((0, pts.ndim))
        if shapes is not None and shapes.nshapes:
            shapes.data = []

    def stash(self, image_layer) -> None:
        """Keep the prompts of ``image_layer`` for when the user comes back to it."""
        pts, shapes = self.points, self.boxes
        saved = {}
        if pts is not None and len(pts.data):
            saved["points"] = (np.array(pts.data), pts.features.copy())
        if shapes is not None and shapes.nshapes:
            saved["boxes"] = ([np.array(v) for v in shapes.data], list(shapes.shape_type))
        self._stashed.pop(image_layer.unique_id, None)
        if saved:
            self._stashed[image_layer.unique_id] = saved

    def restore(self, image_layer) -> None:
        """Put back the prompts stashed for ``image_layer`` (if any)."""
        saved = self._stashed.pop(image_layer.unique_id, None) or {}
        pts, shapes = self.points, self.boxes
        if "boxes" in saved and shapes is not None and shapes.ndim == image_layer.ndim:
            shapes.data = list(zip(*saved["boxes"], strict=True))
        if "points" in saved and pts is not None and pts.ndim == image_layer.ndim:
            data, features = saved["points"]
            pts.data = data
            pts.features = features
