"""The "Folder" tab of the dock widget: annotate a folder image by image. A thin view over
:class:`.dataset.FolderAnnotation`.

"Prefetch next image" (on by default) is remembered in ``settings.json`` (key
:data:`PREFETCH_SETTING`)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .dataset import FolderAnnotation

#: ``settings.json`` key remembering the "Prefetch next image" checkbox (bool).
PREFETCH_SETTING = "folder_prefetch_next_image"


def _remembered_prefetch() -> bool:
    from napari_edgesam.engine.paths import get_setting

    value = get_setting(PREFETCH_SETTING, True)
    return value if isinstance(value, bool) else True


def _remember_prefetch(value: bool) -> None:
    import logging

    from napari_edgesam.engine.paths import set_setting, settings_path

    try:
        set_setting(PREFETCH_SETTING, bool(value))
    except OSError as exc:  # a read-only config folder: the choice lasts this session
        logging.getLogger(__name__).info("Cannot remember %s in %s: %s", PREFETCH_SETTING,
                                         settings_path(), exc)


class FolderPanel(QWidget):
    """Images and labels folders, the list of images (done ones ticked), Previous / Next.

    Parameters
    ----------
    dock : EdgeSamWidget
        Its ``session`` is used, and its ``autosave`` (once made) is told when an image's
        labels were saved.
    """

    def __init__(self, dock):
        super().__init__()
        self.session = dock.session
        def saving(layer):  # the dock makes its autosave after this panel
            autosave = getattr(dock, "autosave", None)
            mark = autosave.save_started(layer) if autosave is not None else None
            return lambda: autosave.saved(mark) if autosave is not None else None

        self.controller = FolderAnnotation(dock.session, self._sync,
                                           prefetch_next=_remembered_prefetch(),
                                           on_saving=saving)
        lay = QVBoxLayout(self)
        intro = QLabel("Annotate a folder: each image's labels (and prompts) are saved to "
                       "the labels folder when you leave it, and reopened when you come "
                       "back.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        row = QHBoxLayout()
        self.images_button = QPushButton("Images...")
        self.images_button.setToolTip("Choose the folder of images (labels go to its "
                                      "'labels' subfolder unless you choose another)")
        self.images_button.clicked.connect(lambda: self.choose_images())
        self.labels_button = QPushButton("Labels...")
        self.labels_button.setToolTip("Choose the folder the labels are saved to")
        self.labels_button.clicked.connect(lambda: self.choose_labels())
        row.addWidget(self.images_button)
        row.addWidget(self.labels_button)
        lay.addLayout(row)
        self.where_label = QLabel("")
        self.where_label.setWordWrap(True)
        lay.addWidget(self.where_label)
        self.list = QListWidget()
        self.list.itemActivated.connect(lambda item: self.controller.go(self.list.row(item)))
        lay.addWidget(self.list, 1)
        nav = QHBoxLayout()
        self.previous_button = QPushButton("Previous")
        self.previous_button.setToolTip("Save and open the previous image (Shift+B)")
        self.previous_button.clicked.connect(lambda: self.controller.previous())
        self.next_button = QPushButton("Next")
        self.next_button.setToolTip("Save and open the next image (Shift+N)")
        self.next_button.clicked.connect(lambda: self.controller.next())
        nav.addWidget(self.previous_button)
        nav.addWidget(self.next_button)
        lay.addLayout(nav)
        self.prefetch_check = QCheckBox("Prefetch next image")
        self.prefetch_check.setChecked(self.controller.prefetch_next)
        self.prefetch_check.setToolTip(
            "While you are idle, read the next image and encode the slice it opens on, so "
            "that after Next the first click runs only the decoder. Stopped at once when "
            "you click; holds at most one image beside this one.")
        self.prefetch_check.toggled.connect(self._on_prefetch_toggled)
        lay.addWidget(self.prefetch_check)
        self._sync()

    @property
    def busy(self) -> bool:
        """Whether an image is being read."""
        return self.controller.busy

    def _on_prefetch_toggled(self, value: bool) -> None:
        self.controller.prefetch_next = bool(value)
        _remember_prefetch(bool(value))

    def choose_images(self, folder=None):
        """Annotate ``folder`` (asked for with a dialog when omitted)."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Folder of images")
            if not folder:
                return None
        labels = None
        ds = self.controller.dataset
        if ds is not None and ds.images_dir.resolve() == Path(folder).resolve():
            labels = ds.labels_dir  # the same images: keep the labels folder the user chose
        return self.controller.open(folder, labels)

    def choose_labels(self, folder=None):
        """Save labels into ``folder`` (asked for with a dialog when omitted)."""
        ds = self.controller.dataset
        if ds is None:
            self.session.set_status("Choose the images folder first.")
            return None
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Folder for the labels",
                                                      str(ds.labels_dir))
            if not folder:
                return None
        return self.controller.open(ds.images_dir, folder)

    def _sync(self):
        c = self.controller
        ds = c.dataset
        n = 0 if ds is None else len(ds)
        self.previous_button.setEnabled(ds is not None and c.index > 0 and not c.busy)
        self.next_button.setEnabled(ds is not None and 0 <= c.index < n - 1 and not c.busy)
        self.labels_button.setEnabled(ds is not None)
        if ds is None:
            self.where_label.setText("No folder chosen.")
            self.list.clear()
            return
        done = [ds.is_done(i) for i in range(n)]  # one stat per image
        self.where_label.setText(f"{c.index + 1} of {n} ({sum(done)} done); labels in "
                                 f"{ds.labels_dir}")
        self.list.blockSignals(True)
        self.list.clear()
        for path, is_done in zip(ds.items, done, strict=True):
            mark = "\u2713 " if is_done else "   "
            self.list.addItem(mark + path.name)
        if 0 <= c.index < n:
            self.list.setCurrentRow(c.index)
        self.list.blockSignals(False)
