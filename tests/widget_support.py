"""Helpers shared by the widget tests (real napari, the test-double model)."""

from __future__ import annotations


def make_widget(viewer, model=None, *, prefetch: bool = True):
    """The EdgeSAM dock widget on ``viewer``, docked as napari does it.

    ``prefetch=False`` keeps encoder counts deterministic (no idle-time encoding).
    """
    from napari_edgesam.widget.dock import EdgeSamWidget

    w = EdgeSamWidget(viewer, model=model)
    viewer.window.add_dock_widget(w, name="EdgeSAM")
    if not prefetch:
        w.prefetch_check.setChecked(False)
    return w
