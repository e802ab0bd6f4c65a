"""The "Batch" tab of the dock widget: automatic segmentation of many TIFF files.

A thin adapter around :func:`napari_edgesam.workflows.batch.run_batch`, the same engine
function with the same parameters as ``napari-edgesam batch`` (see ``docs/batch.md``): pick
input files or a folder and an output folder, set the object size and channel, run. The run
happens in a napari worker thread (by default on dask's local worker processes, like the
command line); per-file progress arrives through a Qt signal; *Cancel* asks ``run_batch`` to
stop (running files stop at their next decoder call, finished outputs stay valid and a rerun
resumes). *Load results* opens the label images (and their inputs) as layers.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

__all__ = ["SCHEDULERS", "BatchPanel"]

#: Where the files are processed: combo text -> ``run_batch(scheduler=...)``.
SCHEDULERS = {
    "worker processes": None,
    "this process": "synchronous",
}


class _Relay(QObject):
    """Carries ``run_batch``'s progress callbacks (worker thread) to the GUI thread."""

    progress = Signal(object, int, int)


def _batch_job(inputs, out_dir, model, params, overwrite, scheduler, workers, relay, control):
    from napari_edgesam.workflows.batch import run_batch

    return run_batch(
        inputs, out_dir, model, params, overwrite=overwrite, scheduler=scheduler,
        workers=workers,
        progress=lambda res, done, total: relay.progress.emit(res, done, total),
        cancel=lambda: bool(control.get("cancel")),
    )


def _load_job(results):
    """Read the label images (and their inputs) of finished files: a list of
    ``(data, kwargs, layer_type)`` (the input memory-mapped when possible)."""
    import tifffile

    from napari_edgesam.workflows.tiff_io import read_image

    layers = []
    for res in results:
        if res.status not in ("done", "skipped") or not res.output:
            continue
        stem = Path(res.output).stem
        try:
            img = read_image(res.input)
        except Exception:  # noqa: BLE001 - the labels are still worth showing
            img = None
        if img is not None:
            kwargs = {"name": Path(res.input).stem}
            axes = img.axes
            if "C" in axes:
                kwargs["channel_axis"] = axes.index("C")
                kwargs["name"] = [f"{Path(res.input).stem} ch{i}"
                                  for i in range(img.data.shape[axes.index("C")])]
            elif axes.endswith("S") and img.data.shape[-1] in (3, 4):
                kwargs["rgb"] = True
            layers.append((img.data, kwargs, "image"))
        labels = tifffile.imread(res.output)
        layers.append((labels, {"name": stem}, "labels"))
    return layers


class BatchPanel(QWidget):
    """Batch segmentation of TIFF files from the dock widget.

    Public API (tests, scripts)::

        panel = widget.batch
        panel.set_inputs(["a.tif", "folder/"]); panel.set_output("out/")
        panel.object_size = 25; panel.channel = None | 0; panel.scheduler = "synchronous"
        panel.run()            # worker; per-file progress
        panel.cancel()
        panel.summary          # BatchSummary after the run
        panel.load_results()   # worker adding the label images as layers
    """

    def __init__(self, dock):
        super().__init__(dock)
        self._dock = dock
        self._worker = None
        self._load_worker = None
        self._control: dict = {}
        self._relay = _Relay(self)
        self._relay.progress.connect(self._on_progress)
        self.summary = None
        #: FileResult objects in the order they arrived.
        self.file_results: list = []
        #: Layers added by the last :meth:`load_results`.
        self.loaded_layers: list = []
        self._build_ui()

    # -- UI -------------------------------------------------------------------------------
    def _build_ui(self):
        from napari_edgesam.workflows.automatic import AutoParams

        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        note = QLabel("Segment every object in many TIFF files without clicks (the same "
                      "engine as 'napari-edgesam batch'; outputs <name>_labels.tif + .json).")
        note.setWordWrap(True)
        outer.addWidget(note)
        form = QFormLayout()
        self.inputs_edit = QLineEdit()
        self.inputs_edit.setPlaceholderText("TIFF files, a folder or a glob pattern")
        self.inputs_edit.setToolTip("Several entries separated by ';'")
        files_b = QPushButton("Files...")
        files_b.clicked.connect(self._pick_files)
        folder_b = QPushButton("Folder...")
        folder_b.clicked.connect(self._pick_folder)
        row = QHBoxLayout()
        row.addWidget(self.inputs_edit, 1)
        row.addWidget(files_b)
        row.addWidget(folder_b)
        form.addRow("inputs", row)
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("output folder (created if missing)")
        out_b = QPushButton("...")
        out_b.clicked.connect(self._pick_output)
        row = QHBoxLayout()
        row.addWidget(self.output_edit, 1)
        row.addWidget(out_b)
        form.addRow("output", row)
        self.object_size_spin = QDoubleSpinBox()
        self.object_size_spin.setRange(2.0, 10000.0)
        self.object_size_spin.setDecimals(1)
        self.object_size_spin.setSuffix(" px")
        self.object_size_spin.setValue(AutoParams().object_size)
        self.object_size_spin.setToolTip("Typical object diameter in pixels")
        self.channel_spin = QSpinBox()
        self.channel_spin.setRange(-1, 1024)
        self.channel_spin.setSpecialValueText("none")
        self.channel_spin.setValue(-1)
        self.channel_spin.setToolTip("Channel to segment in multichannel files (RGB files "
                                     "are used whole)")
        self.polarity_combo = QComboBox()
        self.polarity_combo.addItems(["bright", "dark"])
        self.polarity_combo.setToolTip("Objects brighter (fluorescence) or darker (bright "
                                       "field) than the background")
        form.addRow("object size", self.object_size_spin)
        form.addRow("channel", self.channel_spin)
        form.addRow("objects are", self.polarity_combo)
        self.scheduler_combo = QComboBox()
        for text, value in SCHEDULERS.items():
            self.scheduler_combo.addItem(text, value)
        self.scheduler_combo.setToolTip(
            "Worker processes: several files at once, as the command line does. This "
            "process: one file at a time in a background thread.")
        self.overwrite_check = QCheckBox("overwrite")
        self.overwrite_check.setToolTip("Recompute every file (default: skip files already "
                                        "done with the same parameters)")
        row = QHBoxLayout()
        row.addWidget(self.scheduler_combo, 1)
        row.addWidget(self.overwrite_check)
        form.addRow("run in", row)
        outer.addLayout(form)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run batch")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.load_button = QPushButton("Load results")
        self.load_button.setToolTip("Open the label images (and their inputs) as layers")
        self.load_button.clicked.connect(self.load_results)
        for b in (self.run_button, self.cancel_button, self.load_button):
            row.addWidget(b)
        outer.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m files")
        outer.addWidget(self.progress)
        self.results_list = QListWidget()
        self.results_list.setMinimumHeight(80)
        outer.addWidget(self.results_list)
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.summary_label)
        self._update_buttons()

    def _update_buttons(self):
        running = self._worker is not None
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        done = self.summary is not None and any(
            r.status in ("done", "skipped") for r in self.summary.results)
        self.load_button.setEnabled(done and not running and self._load_worker is None)

    # -- inputs ---------------------------------------------------------------------------
    def set_inputs(self, paths):
        """Files, folders and glob patterns to process (what the file dialogs set)."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.inputs_edit.setText("; ".join(str(p) for p in paths))

    @property
    def inputs(self) -> list[str]:
        """The entries of the inputs field (separated by ';')."""
        return [p.strip() for p in self.inputs_edit.text().split(";") if p.strip()]

    def set_output(self, path):
        self.output_edit.setText(str(path))

    @property
    def output(self) -> str:
        return self.output_edit.text().strip()

    def _pick_files(self):
        files, _ = QFileDialog.getOpenFileNames(
            self, "TIFF files to segment", "", "TIFF files (*.tif *.tiff);;All files (*)")
        if files:
            self.set_inputs(files)
            if not self.output:
                self.set_output(str(Path(files[0]).parent / "labels"))

    def _pick_folder(self):
        folder = QFileDialog.getExistingDirectory(self, "Folder of TIFF files")
        if folder:
            self.set_inputs([folder])
            if not self.output:
                self.set_output(str(Path(folder) / "labels"))

    def _pick_output(self):
        folder = QFileDialog.getExistingDirectory(self, "Output folder")
        if folder:
            self.set_output(folder)

    # -- parameters -----------------------------------------------------------------------
    @property
    def object_size(self) -> float:
        return float(self.object_size_spin.value())

    @object_size.setter
    def object_size(self, value: float):
        self.object_size_spin.setValue(float(value))

    @property
    def channel(self) -> int | None:
        v = int(self.channel_spin.value())
        return None if v < 0 else v

    @channel.setter
    def channel(self, value: int | None):
        self.channel_spin.setValue(-1 if value is None else int(value))

    @property
    def scheduler(self):
        return self.scheduler_combo.currentData()

    @scheduler.setter
    def scheduler(self, value):
        for i in range(self.scheduler_combo.count()):
            if self.scheduler_combo.itemData(i) == value:
                self.scheduler_combo.setCurrentIndex(i)
                return
        raise ValueError(f"unknown scheduler {value!r}; one of {list(SCHEDULERS.values())}")

    @property
    def overwrite(self) -> bool:
        return self.overwrite_check.isChecked()

    @overwrite.setter
    def overwrite(self, value: bool):
        self.overwrite_check.setChecked(bool(value))

    def params(self):
        """The :class:`BatchParams` of the panel (the command line's defaults otherwise)."""
        from napari_edgesam.workflows.automatic import AutoParams
        from napari_edgesam.workflows.batch import BatchParams

        auto = AutoParams(object_size=self.object_size,
                          polarity=self.polarity_combo.currentText())
        return BatchParams(automatic=auto, channel=self.channel)

    @property
    def busy(self) -> bool:
        return self._worker is not None or self._load_worker is not None

    # -- run ------------------------------------------------------------------------------
    def run(self):
        """Start the batch (a worker); returns it, or None when something is missing."""
        from napari.utils.notifications import show_info

        dock = self._dock
        if self._worker is not None:
            return None
        inputs = self.inputs
        problem = None
        if not inputs:
            problem = "choose input files or a folder"
        elif not self.output:
            problem = "choose an output folder"
        elif dock.model is None:
            problem = "no model yet (choose or download one at the top)"
        if problem:
            show_info(f"EdgeSAM batch: {problem}.")
            dock.set_status(f"Batch: {problem}.")
            return None
        try:
            params = self.params()
        except Exception as exc:  # noqa: BLE001 - invalid values, shown
            dock.notify_error(exc, "batch: ")
            return None
        self.summary = None
        self.file_results = []
        self.results_list.clear()
        self.summary_label.setText("")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self._control = control = {}
        dock.prefetcher.activity()
        dock.set_status(f"Batch: segmenting {', '.join(inputs)} -> {self.output}...")
        self._worker = dock.start_worker(
            _batch_job, inputs, self.output, dock.model, params, self.overwrite,
            self.scheduler, None, self._relay, control,
            returned=self._on_done,
            errored=lambda exc: dock.notify_error(exc, "batch failed: "),
            finished=self._on_finished,
            desc="EdgeSAM: batch segmentation",
        )
        self._update_buttons()
        return self._worker

    def cancel(self):
        """Ask the run to stop: running files stop at their next decoder call, queued ones
        are not started; finished outputs stay valid (a rerun resumes)."""
        if self._worker is None:
            return
        self._control["cancel"] = True
        self._dock.set_status("Batch: cancelling...")

    def _on_progress(self, res, done, total):
        self.file_results.append(res)
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)
        name = Path(res.input).name
        if res.status == "done":
            text = (f"done     {name} -> {Path(res.output).name}: {res.n_objects} objects, "
                    f"{res.seconds:.1f} s")
        elif res.status == "skipped":
            text = f"skipped  {name} (already done with these parameters)"
        elif res.status == "failed":
            text = f"FAILED   {name}: {res.error}"
        else:
            text = f"{res.status:<8} {name}"
        self.results_list.addItem(text)
        self.results_list.scrollToBottom()
        self._dock.set_status(f"Batch: {done} of {total} files.")

    def _on_done(self, summary):
        self.summary = summary
        self.summary_label.setText(summary.format())
        for res in summary.results:  # results the progress signal has not shown yet
            if not any(r is res or r.input == res.input for r in self.file_results):
                self._on_progress(res, len(self.file_results) + 1, len(summary.results))
        state = "cancelled" if summary.cancelled else ("done" if summary.ok else "finished")
        self._dock.set_status(f"Batch {state}: {summary.format().splitlines()[-1]}")

    def _on_finished(self):
        self._worker = None
        self._control = {}
        self._update_buttons()

    # -- results --------------------------------------------------------------------------
    def load_results(self):
        """Open the finished label images and their inputs as layers (read in a worker)."""
        from napari.utils.notifications import show_info

        if self.summary is None or self._load_worker is not None:
            show_info("EdgeSAM batch: nothing to load yet.")
            return None
        results = [r for r in self.summary.results if r.status in ("done", "skipped")]
        if not results:
            show_info("EdgeSAM batch: no finished file to load.")
            return None
        self.loaded_layers = []
        self._load_worker = self._dock.start_worker(
            _load_job, results,
            returned=self._on_loaded,
            errored=lambda exc: self._dock.notify_error(exc, "cannot load the results: "),
            finished=self._on_load_finished,
            desc="EdgeSAM: loading batch results",
        )
        self._update_buttons()
        return self._load_worker

    def _on_loaded(self, layers):
        viewer = self._dock.viewer
        for data, kwargs, kind in layers:
            add = viewer.add_image if kind == "image" else viewer.add_labels
            added = add(data, **kwargs)
            self.loaded_layers.extend(added if isinstance(added, list) else [added])
        self._dock.set_status(f"Batch: loaded {len(self.loaded_layers)} layers.")

    def _on_load_finished(self):
        self._load_worker = None
        self._update_buttons()

    def shutdown(self):
        if self._worker is not None:
            self._control["cancel"] = True
