"""Annotating a folder image by image (no Qt widgets).

The user picks a folder of images and a folder for labels. :class:`FolderAnnotation` opens
the images one at a time (read in a worker, by napari's readers: TIFF and whatever plugins
read, OME-Zarr with ``napari-ome-zarr``), each with its labels from the labels folder when
they exist (``<stem>_labels.tif``; a new Labels layer at the first commit otherwise). Leaving
an image (Next, Previous, another image of the list) saves its labels and their prompt log
(``<stem>_labels.prompts.json``) atomically, in a worker; coming back reopens them (from the
save still in flight, if any, so nothing is lost to a race). An image is done when it has a
labels file. Each image opens on its middle slice (:func:`.next_image.first_slice`).

OME-Zarr images (``*.zarr`` / ``*.ome.zarr`` folders, read by ``napari-ome-zarr``) are
listed beside the files; their multiscale layers stay lazy (the model reads the current
slice of the full-resolution level only); their labels are saved as TIFF like any image's.

While the user works on an image, the next one is read and its first slice encoded ahead
when the user is idle (:mod:`.next_image`; :attr:`FolderAnnotation.prefetch_next`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .next_image import NextImage, first_slice, read_layers

__all__ = ["Dataset", "FolderAnnotation", "labels_name", "read_image_job"]

#: File suffixes listed as images (folders ending in ``.zarr`` are listed too).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".npy")
#: Label images are saved as ``<stem>_labels.tif`` in the labels folder.
LABELS_SUFFIX = "_labels.tif"


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".ome.zarr", ".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES, ".zarr"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def labels_name(path) -> str:
    """The file name the labels of image ``path`` are saved under: ``<stem>_labels.tif``
    (the Folder tab's, and the name *Save...* suggests beside an image)."""
    return _stem(Path(path)) + LABELS_SUFFIX


class Dataset:
    """The images of a folder and where their labels go.

    Parameters
    ----------
    images : path-like
        Folder of images (not searched recursively).
    labels : path-like, optional
        Folder for the labels (default: ``<images>/labels``; created when needed).
    """

    def __init__(self, images, labels=None):
        self.images_dir = Path(images)
        if not self.images_dir.is_dir():
            raise NotADirectoryError(f"not a folder: {self.images_dir}")
        self.labels_dir = Path(labels) if labels else self.images_dir / "labels"
        self.items = sorted(
            (p for p in self.images_dir.iterdir()
             if (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not p.name.endswith(LABELS_SUFFIX))
             or (p.is_dir() and p.name.lower().endswith(".zarr"))),
            key=lambda p: p.name.lower())

    def __len__(self) -> int:
        return len(self.items)

    def labels_path(self, index: int) -> Path:
        """Where the labels of image ``index`` are saved."""
        return self.labels_dir / labels_name(self.items[index])

    def is_done(self, index: int) -> bool:
        """Whether image ``index`` has saved labels."""
        return self.labels_path(index).is_file()


def read_image_job(path, labels_path, layers=None):
    """Read an image with napari's readers and its saved labels (worker thread).

    Parameters
    ----------
    path : path-like
        The image file or OME-Zarr folder.
    labels_path : path-like or None
        Its saved labels (``<stem>_labels.tif``; not read when None or missing).
    layers : list of LayerData, optional
        The image as read ahead (:meth:`.next_image.NextImage.take`): not read again.

    Returns
    -------
    (list of LayerData, ndarray or None, PromptLog or None)
        The image's layer data tuples ``(data, kwargs, layer_type)``, the saved labels and
        their prompt log (None when there are none).
    """
    if layers is None:
        layers = read_layers(path)
    labels = log = None
    if labels_path is not None and Path(labels_path).is_file():
        import tifffile

        from napari_edgesam.engine.errors import InvalidInputError
        from napari_edgesam.workflows.prompt_log import PromptLog, log_path_for

        labels = tifffile.imread(labels_path)
        try:
            log = PromptLog.load(log_path_for(labels_path))
        except InvalidInputError:  # no log (or an unreadable one): a new log starts
            log = None
    return layers, labels, log


class FolderAnnotation:
    """Steps through a :class:`Dataset` for an :class:`~.session.AnnotationSession`.

    Parameters
    ----------
    session : AnnotationSession
        Only its public API is used.
    on_change : callable, optional
        ``on_change()`` when the position, the busy state or the done count changed.
    prefetch_next : bool
        Read the next image and encode its first slice while the user is idle (see
        :attr:`prefetch_next`).
    on_saving : callable, optional
        ``on_saving(labels_layer) -> done`` when an image's labels are saved (called as
        their snapshot is taken); ``done()`` is then called once they were written (the
        autosave of that layer is obsolete unless it was edited after the snapshot).
    """

    def __init__(self, session, on_change=None, prefetch_next: bool = True,
                 on_saving=None):
        self.session = session
        self._on_change = on_change or (lambda: None)
        self._on_saving = on_saving or (lambda layer: lambda: None)
        self.dataset: Dataset | None = None
        self.index = -1
        self.worker = None
        self.image_layers: list = []
        self.labels_layer = None
        #: ``(labels, log)`` being saved in a worker (or whose save failed), by labels
        #: path: reopened from here meanwhile.
        self._saving: dict[Path, tuple] = {}
        self._prefetch_next = bool(prefetch_next)
        #: The next image as read ahead (None: not planned yet, or handed to the read).
        self.next_image: NextImage | None = None
        session.prefetcher.add_source(self.prefetch_jobs)

    @property
    def busy(self) -> bool:
        """Whether an image is being read."""
        return self.worker is not None

    @property
    def prefetch_next(self) -> bool:
        """Whether the next image is read and its first slice encoded while the user is
        idle (the Folder tab's "Prefetch next image"); off drops what was read ahead."""
        return self._prefetch_next

    @prefetch_next.setter
    def prefetch_next(self, value: bool) -> None:
        self._prefetch_next = bool(value)
        if not self._prefetch_next:
            self.next_image = None
        self.session.prefetcher.activity()  # stop what runs; plan again when idle

    def prefetch_jobs(self) -> list:
        """The prefetch job of the next image (for the session's PrefetchController):
        none when switched off, at the last image, while an image is read, without a
        model, or with the "layer contrast limits" mapping (napari chooses the limits when
        the layer is made, so the embedding's key cannot be known ahead)."""
        s = self.session
        ds = self.dataset
        if not self._prefetch_next or ds is None or self.busy or s.model is None \
                or s.mapping_mode == "contrast" or not 0 <= self.index < len(ds) - 1:
            return []
        index = self.index + 1
        spec = (s.mapping_mode,)
        nxt = self.next_image
        if nxt is None or nxt.index != index or nxt.path != ds.items[index] \
                or nxt.spec != spec:
            nxt = self.next_image = NextImage(ds.items[index], index, spec)
        job = nxt.job()
        return [] if job is None else [job]

    def open(self, images, labels=None):
        """Annotate the folder ``images`` (labels into ``labels``); opens its first image
        not done yet (else the first). Returns the reading worker or None."""
        self.save()  # the image open now, before the folder changes
        self.dataset = Dataset(images, labels)
        self.index = -1
        if not len(self.dataset):
            self.session.set_status(f"No image in {self.dataset.images_dir}.")
            self._on_change()
            return None
        first = next((i for i in range(len(self.dataset)) if not self.dataset.is_done(i)), 0)
        return self.go(first)

    def next(self):
        """Save this image's labels and open the next image (Shift+N)."""
        if self.dataset is None or self.index + 1 >= len(self.dataset):
            return None
        return self.go(self.index + 1)

    def previous(self):
        """Save this image's labels and open the previous image (Shift+B)."""
        if self.dataset is None or self.index <= 0:
            return None
        return self.go(self.index - 1)

    def go(self, index: int):
        """Open image ``index``; the current image's labels are saved when the new image
        is shown (so edits made while it is read are kept)."""
        s = self.session
        if self.dataset is None or self.busy or not 0 <= index < len(self.dataset) \
                or index == self.index:
            return None
        path = self.dataset.items[index]
        labels_path = self.dataset.labels_path(index)
        s.set_status(f"Opening {path.name} ({index + 1} of {len(self.dataset)})...")
        pending = self._saving.get(labels_path)
        nxt, self.next_image = self.next_image, None  # at most one image read ahead
        ahead = nxt.take() if nxt is not None and nxt.index == index \
            and nxt.path == path else None
        s.prefetcher.activity()  # the image asked for comes first
        self.worker = s.start_worker(
            read_image_job, path, None if pending is not None else labels_path, ahead,
            returned=lambda out, i=index, p=pending: self._on_read(i, out, p),
            errored=lambda exc, p=path: s.notify_error(exc, f"cannot open {p.name}: "),
            finished=self._on_finished, desc=f"EdgeSAM: opening {path.name}")
        self._on_change()
        return self.worker

    def save(self):
        """Save the current image's labels and prompt log (in a worker); returns the worker
        or None when there is nothing to save."""
        from .workers import save_labels_job

        s = self.session
        layer = self._current_labels()
        if self.dataset is None or self.index < 0 or layer is None:
            return None
        labels = np.array(layer.data)
        if not labels.any() and not self.dataset.is_done(self.index):
            return None  # nothing annotated: no empty file
        path = self.dataset.labels_path(self.index)
        log, indices = s.prompt_recorder.candidates(layer)  # checked in the worker
        self._saving[path] = (labels, log)
        done = self._on_saving(layer)  # the snapshot is taken now

        def saved(_out, p=path):
            self._saving.pop(p, None)
            done()
            self._on_change()

        def failed(exc, p=path):  # kept in memory: reopening the image shows them again
            s.notify_error(exc, prefix=f"{p.name} was not saved (its labels are kept until "
                                       "napari closes; fix the folder and visit the image "
                                       "again): ")

        path.parent.mkdir(parents=True, exist_ok=True)
        return s.start_worker(save_labels_job, path, labels, log, indices, returned=saved,
                              errored=failed, desc=f"EdgeSAM: saving {path.name}")

    def _on_finished(self):
        self.worker = None
        self._on_change()

    def _on_read(self, index, out, pending):
        s = self.session
        layers, labels, log = out
        if pending is not None:
            labels, log = pending
        self.save()  # the image being left, with every edit made while this one was read
        viewer = s.viewer
        leaving = [ly for ly in (*self.image_layers, self._current_labels()) if ly is not None]
        self.image_layers, self.labels_layer = [], None
        path = self.dataset.items[index]
        added = []
        follow, s.follow_new_images = s.follow_new_images, False  # set below, once centred
        try:
            for layer_data in layers:  # napari's LayerData: (data,), (data, kwargs) or 3
                data = layer_data[0]
                kwargs = layer_data[1] if len(layer_data) > 1 else {}
                kind = layer_data[2] if len(layer_data) > 2 else "image"
                if kind != "image":
                    continue
                kwargs = dict(kwargs or {})
                kwargs.setdefault("name", _stem(path))
                added += list(np.atleast_1d(viewer.add_image(data, **kwargs)))
        finally:
            s.follow_new_images = follow
        self.index = index
        self.image_layers = added
        if not added:
            s.set_status(f"{path.name} holds no image napari can show.")
            self._on_change()
            return
        image = added[0]
        _centre(viewer, image)  # the slice the next image's prefetch encoded
        s.set_image_layer(image)
        if labels is not None:
            from .prompt_layers import transform_kwargs

            self.labels_layer = viewer.add_labels(np.asarray(labels),
                                                  name=f"{_stem(path)} labels",
                                                  **transform_kwargs(image))
            s.set_labels_layer(self.labels_layer)
            if log is not None and log.objects:
                s.prompt_recorder.adopt(self.labels_layer, log)
        else:
            s.set_labels_layer(None)
        s.take_clicks()  # the prompt layers on top, the points layer active
        viewer.layers.selection.active = s.points_layer or image
        self._on_change()
        # The previous image and its labels leave once the new ones are shown (removing
        # them first, in the same event-loop turn, crashed software OpenGL drawing).
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, lambda: [viewer.layers.remove(ly) for ly in leaving
                                      if ly in viewer.layers])

    def _current_labels(self):
        """This image's Labels layer: the one opened with it, else the one the first
        commit made (the session's target)."""
        viewer = self.session.viewer
        if self.labels_layer is not None and self.labels_layer in viewer.layers:
            return self.labels_layer
        target = self.session.target.layer
        if target is not None and target in viewer.layers and self.image_layers:
            return target
        return None


def _centre(viewer, layer) -> None:
    """Move the sliders of ``layer``'s leading axes to its middle slice
    (:func:`.next_image.first_slice`), whatever the previous image left them at."""
    from ._geometry import ImageGeometry, image_data

    try:
        lead = first_slice(ImageGeometry(tuple(image_data(layer).shape),
                                         rgb=bool(layer.rgb)))
    except ValueError:  # not an image the panel segments: the session says why
        return
    if not lead:
        return
    pos = np.zeros(layer.ndim)
    pos[:len(lead)] = lead
    world = np.asarray(layer.data_to_world(pos), dtype=float)
    first = viewer.dims.ndim - layer.ndim
    viewer.dims.set_point([first + i for i in range(len(lead))],
                          [float(world[i]) for i in range(len(lead))])
