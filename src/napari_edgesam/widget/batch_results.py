"""Loading a batch run's results into the viewer: each label image over its input.

Two halves of one job:

- :func:`~.result_layers.read_pair` (worker thread, no Qt) reads one finished file as layer
  data; :func:`~.workers.load_batch_results_job` runs it for every file.
- :class:`ResultsLoader` (GUI thread) starts that job and adds each file's layers to the
  viewer, one layer per event-loop turn, in order; only the last file's layers are visible;
  the panel then takes the last visible image (once, not every image in turn).
"""

from __future__ import annotations

from qtpy.QtCore import QObject, QTimer

__all__ = ["ResultsLoader"]


# ---------------------------------------------------------------------------------------
# Adding the layers (GUI thread)
# ---------------------------------------------------------------------------------------


class ResultsLoader(QObject):
    """Reads finished batch files in a worker and adds their layers to the viewer.

    Parameters
    ----------
    dock : EdgeSamWidget
        The dock widget (only its public names are used: ``start_worker``,
        ``notify_error``, ``set_status``, ``viewer``).
    changed : callable
        ``changed()``: called when :attr:`loading` may have changed (the panel updates its
        buttons).
    parent : QObject, optional
    """

    def __init__(self, dock, changed, parent=None):
        super().__init__(parent)
        self._dock = dock
        self._changed = changed
        self._worker = None
        #: Layers added by the last :meth:`load`.
        self.loaded_layers: list = []
        self._pending_pairs: list = []  # files read, their layers waiting to be added
        self._loaded_pairs: list = []  # the layers added, per file
        self._current_pair: list = []  # the layers of the file being added
        self._adding = False
        self._errors: list = []
        self._add_timer = QTimer(self)
        self._add_timer.setSingleShot(True)
        self._add_timer.setInterval(0)
        self._add_timer.timeout.connect(self._add_next_pair)

    @property
    def reading(self) -> bool:
        """Whether the worker reading the files runs."""
        return self._worker is not None

    @property
    def loading(self) -> bool:
        """Whether results are still being read or added."""
        return self._worker is not None or bool(self._pending_pairs)

    def load(self, results):
        """Read ``results`` in a worker and add their layers, one layer per event-loop turn
        (napari stays responsive); the panel's image becomes the last visible one at the
        end, not each image in turn.

        Parameters
        ----------
        results : list of FileResult
            Finished files (with an output).

        Returns
        -------
        worker
        """
        from .workers import load_batch_results_job

        dock = self._dock
        self.loaded_layers = []
        self._loaded_pairs = []
        self._pending_pairs = []
        self._errors = []
        self._current_pair = []
        dock.session.follow_new_images = False  # one switch at the end, not one per file
        self._worker = dock.start_worker(
            load_batch_results_job, results,
            yielded=self._on_pair_read,
            errored=lambda exc: dock.notify_error(exc, "cannot load the results: "),
            finished=self._on_finished,
            desc="EdgeSAM: loading batch results",
            total=len(results),
        )
        return self._worker

    def shutdown(self) -> None:
        """Stop adding layers (the panel is going away)."""
        self._add_timer.stop()
        self._pending_pairs = []
        self._dock.session.follow_new_images = True

    def _on_pair_read(self, item):
        _, layers, error = item
        if error is not None:
            self._errors.append(error)
        elif layers:
            self._pending_pairs.append(layers)
            if not self._add_timer.isActive():
                self._add_timer.start()

    def _add_next_pair(self):
        """Add one layer (then yield to the event loop for the next one)."""
        # Adding a layer may process events (napari, the dock's own handlers): a pair read
        # meanwhile waits for this one, so layers keep their order.
        if self._adding or not self._pending_pairs:
            return
        layers = self._pending_pairs[0]
        data, kwargs, kind = layers.pop(0)
        viewer = self._dock.viewer
        self._adding = True
        try:
            add = viewer.add_image if kind == "image" else viewer.add_labels
            added = add(data, **kwargs)
            added = added if isinstance(added, list) else [added]
            self._current_pair.extend(added)
            self.loaded_layers.extend(added)
        except Exception as exc:  # noqa: BLE001 - napari refused it: say so, go on
            self._errors.append(f"{kwargs.get('name', kind)}: {exc}")
        finally:
            self._adding = False
            if not layers:  # the file's layers are all there
                self._pending_pairs.pop(0)
                self._loaded_pairs.append(self._current_pair)
                self._current_pair = []
        if self._pending_pairs:
            self._add_timer.start()
        elif self._worker is None:
            self._done()

    def _done(self):
        from napari.layers import Image

        session = self._dock.session
        session.follow_new_images = True
        if self._loaded_pairs and not any(lay.visible for lay in self.loaded_layers):
            for lay in self._loaded_pairs[-1]:  # the last file could not be read: show the
                lay.visible = True               # last one that could
        shown = [lay for lay in self.loaded_layers if lay.visible and isinstance(lay, Image)]
        if shown and not session.pinned and shown[-1] is not session.image_layer:
            session.set_image_layer(shown[-1])  # the panel follows the pair on show
            session.take_clicks()
        text = f"Batch: loaded {len(self.loaded_layers)} layers."
        if self._errors:
            text += f" Not loaded: {'; '.join(self._errors)}"
        self._dock.set_status(text)
        self._changed()

    def _on_finished(self):
        self._worker = None
        if not self._pending_pairs:
            self._done()
        self._changed()
