"""The "Batch" tab of the dock widget: automatic segmentation of many TIFF files.

A thin adapter around :func:`napari_edgesam.workflows.batch.run_batch`, the same engine
function with the same parameters as ``napari-edgesam batch`` (see ``docs/batch.md``): pick
input files or a folder and an output folder, set the object size and channel, run. The run
happens in a napari worker thread (by default on local worker processes, like the command
line). Progress (files, and slices inside the running files) arrives through Qt signals and
is shown in the tab and in napari's activity panel; the tab's rows have fixed heights, so
nothing moves while a run fills the list. *Cancel* asks ``run_batch`` to stop (running
files stop at their next decoder call or their worker processes are ended, finished outputs
stay valid and a rerun resumes). *Load results* opens each label image over its input, with
the files' physical pixel sizes as scale (:mod:`.batch_results`). The jobs run in workers
are :func:`~.workers.batch_job` and :func:`~.workers.load_batch_results_job`.
"""

from __future__ import annotations

from collections import Counter
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
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .batch_results import ResultsLoader

__all__ = ["SCHEDULERS", "BatchPanel", "counts_text"]

#: Where the files are processed: combo text -> ``run_batch(scheduler=...)``.
SCHEDULERS = {
    "worker processes": None,
    "this process": "synchronous",
}
#: Text of the progress bar before any run.
IDLE_TEXT = "no run yet"
#: Steps of the progress bar per file (progress inside a file moves it by slices).
STEPS_PER_FILE = 100


def counts_text(statuses, total: int) -> str:
    """What happened to the files of a run, e.g. ``"2 done, 1 cancelled of 3 files"``.

    Parameters
    ----------
    statuses : iterable of str
        ``FileResult.status`` of the files finished so far.
    total : int
        Files in the run.
    """
    counts = Counter(statuses)
    parts = [f"{counts['done']} done"]
    parts += [f"{counts[k]} {k}" for k in ("skipped", "failed", "cancelled") if counts[k]]
    return f"{', '.join(parts)} of {total} file{'s' if total != 1 else ''}"


class _Relay(QObject):
    """Carries ``run_batch``'s callbacks (worker threads) to the GUI thread."""

    #: The input files of the run (list of str), before the first one starts.
    started = Signal(object)
    #: A file finished: (FileResult, files finished, files in all).
    progress = Signal(object, int, int)
    #: Inside a file: (input, slices done, slices in the file).
    slices = Signal(str, int, int)


class BatchPanel(QWidget):
    """Batch segmentation of TIFF files from the dock widget.

    Public API (tests, scripts)::

        panel = widget.batch
        panel.set_inputs(["a.tif", "folder/"]); panel.set_output("out/")
        panel.object_size = 25; panel.channel = None | 0; panel.scheduler = "synchronous"
        panel.run()            # worker; progress by file and by slice
        panel.cancel()
        panel.progress_text    # e.g. "2 done, 1 cancelled of 3 files"
        panel.summary          # BatchSummary after the run
        panel.load_results()   # worker reading the label images, added over their inputs

    Parameters
    ----------
    dock : EdgeSamWidget
        The dock widget (only its public names are used: ``start_worker``,
        ``notify_error``, ``set_status``, ``prefetcher``, ``viewer``, ``model``).
    """

    def __init__(self, dock):
        super().__init__(dock)
        self._dock = dock
        self._worker = None
        self._token = None  # the running batch's CancelToken
        self._relay = _Relay(self)
        self._relay.started.connect(self._on_started)
        self._relay.progress.connect(self._on_progress)
        self._relay.slices.connect(self._on_slices)
        self.summary = None
        #: FileResult objects in the order they arrived.
        self.file_results: list = []
        self._results = ResultsLoader(dock, self._update_buttons, self)
        self._total = 0  # files in the run
        self._finished_inputs: set = set()
        self._running: dict = {}  # input -> (slices done, slices in the file)
        self._activity = None  # napari progress of the run (activity panel)
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
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
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
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Segment every input file (resumes: files already done "
                                   "with the same parameters are skipped)")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.load_button = QPushButton("Load results")
        self.load_button.setToolTip("Open the label images (and their inputs) as layers")
        self.load_button.clicked.connect(self.load_results)
        for b in (self.run_button, self.cancel_button):
            row.addWidget(b)
        outer.addLayout(row)
        outer.addWidget(self.load_button)  # its own row: the tab stays narrow
        # Everything below the buttons has a fixed height (the list takes what is left), and
        # no text widens the panel: a run filling these never moves the buttons.
        self.progress = QProgressBar()
        self.progress.setRange(0, STEPS_PER_FILE)
        self.progress.setValue(0)
        self.progress.setFormat(IDLE_TEXT)
        self.progress.setFixedHeight(self.progress.sizeHint().height())
        self.progress.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        outer.addWidget(self.progress)
        line = self.fontMetrics().lineSpacing()
        self.detail_label = QLabel("")
        self.detail_label.setFixedHeight(line + 4)
        self.detail_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.detail_label.setToolTip("Files being segmented and their slices")
        outer.addWidget(self.detail_label)
        self.results_list = QListWidget()
        self.results_list.setMinimumHeight(80)
        outer.addWidget(self.results_list, 1)
        from superqt import QElidingLabel

        # at most three lines at any width, elided ("..."): the whole text in its tooltip
        self.summary_label = QElidingLabel("")
        self.summary_label.setWordWrap(True)
        self.summary_label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.summary_label.setFixedHeight(3 * line + 4)
        self.summary_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.summary_label)
        self._update_buttons()

    def _update_buttons(self):
        running = self._worker is not None
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        done = self.summary is not None and any(
            r.status in ("done", "skipped") for r in self.summary.results)
        self.load_button.setEnabled(done and not running and not self.loading)

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
        """The output folder (created by the run if missing)."""
        self.output_edit.setText(str(path))

    @property
    def output(self) -> str:
        """The output folder, as typed."""
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
        """Typical object diameter in pixels."""
        return float(self.object_size_spin.value())

    @object_size.setter
    def object_size(self, value: float):
        self.object_size_spin.setValue(float(value))

    @property
    def channel(self) -> int | None:
        """Channel segmented in multichannel files; None for none (RGB files whole)."""
        v = int(self.channel_spin.value())
        return None if v < 0 else v

    @channel.setter
    def channel(self, value: int | None):
        self.channel_spin.setValue(-1 if value is None else int(value))

    @property
    def scheduler(self):
        """``run_batch``'s scheduler: None (worker processes) or ``"synchronous"``."""
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
        """Whether files already done with the same parameters are recomputed."""
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
        """A run or a loading of results is going on."""
        return self._worker is not None or self.loading

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
        from napari.utils import progress

        from .workers import batch_job

        self.summary = None
        self.file_results = []
        self._finished_inputs = set()
        self._running = {}
        self._total = 0
        self.results_list.clear()
        self.summary_label.setText("")
        self.detail_label.setText("listing the input files...")
        self.progress.setRange(0, STEPS_PER_FILE)
        self.progress.setValue(0)
        self.progress.setFormat("starting...")
        from napari_edgesam.engine.cancel import CancelToken

        self._token = token = CancelToken()
        dock.prefetcher.activity()
        dock.set_status("Batch: running...")
        # napari's activity panel: created and updated on the GUI thread only (its Qt
        # widgets are driven synchronously); total set once the file list is known
        self._close_activity()
        self._activity = progress(total=0, desc="EdgeSAM batch")
        self._worker = dock.start_worker(
            batch_job, inputs, self.output, dock.model, params, self.overwrite,
            self.scheduler, None, self._relay, token,
            returned=self._on_done,
            errored=lambda exc: dock.notify_error(exc, "batch failed: "),
            finished=self._on_finished,
        )
        self._update_buttons()
        return self._worker

    def cancel(self):
        """Ask the run to stop: queued files are not started, running ones stop at their
        next decoder call (worker processes that do not are ended a few seconds later);
        finished outputs stay valid (a rerun resumes)."""
        if self._worker is None:
            return
        self._token.cancel()
        self.detail_label.setText("cancelling...")
        self._dock.set_status("Batch: cancelling...")

    # -- progress (GUI thread: relayed by Qt signals) ------------------------------------
    @property
    def progress_text(self) -> str:
        """The progress bar's text: ``"no run yet"``, or what happened to the files of the
        current or last run (``"2 done, 1 cancelled of 3 files"``)."""
        return self.progress.format()

    def _finished_statuses(self) -> list[str]:
        return [r.status for r in self.file_results]

    def _show_progress(self):
        total = max(self._total, len(self.file_results))
        statuses = self._finished_statuses()
        # files with an outcome fill the bar; cancelled ones do not; running ones by slice
        complete = sum(1 for st in statuses if st in ("done", "skipped", "failed"))
        inside = sum(done / n for done, n in self._running.values() if n > 0)
        self.progress.setRange(0, max(1, total) * STEPS_PER_FILE)
        self.progress.setValue(int((complete + inside) * STEPS_PER_FILE))
        self.progress.setFormat(counts_text(statuses, total))
        if self._running:
            self.detail_label.setText("  ·  ".join(
                f"{Path(name).name}: slice {done} / {n}"
                for name, (done, n) in self._running.items()))
        act = self._activity
        if act is not None:
            if act.total != total:
                act.total = total
            if complete > act.n:
                act.update(complete - act.n)
            running = ", ".join(f"{Path(k).name} {d}/{n}" for k, (d, n) in self._running.items())
            act.set_description(f"EdgeSAM batch: {counts_text(statuses, total)}"
                                + (f"; slices {running}" if running else ""))

    def _on_started(self, files):
        self._total = len(files)
        self.detail_label.setText("")
        self._show_progress()
        self._dock.set_status(f"Batch: {len(files)} files.")

    def _on_slices(self, name, done, total):
        if self._worker is None or name in self._finished_inputs:
            return  # a late message for a file already finished
        self._running[name] = (done, total)
        self._show_progress()

    def _on_progress(self, res, done, total):
        if res.input in self._finished_inputs:
            return
        self._finished_inputs.add(res.input)
        self.file_results.append(res)
        self._running.pop(res.input, None)
        self._total = max(self._total, total)
        name = Path(res.input).name
        if res.status == "done":
            text = (f"done     {name} -> {Path(res.output).name}: {res.n_objects} objects, "
                    f"{res.slices} slices, {res.seconds:.1f} s")
        elif res.status == "skipped":
            text = f"skipped  {name} (already done with these parameters)"
        elif res.status == "failed":
            text = f"FAILED   {name}: {res.error}"
        else:
            text = f"{res.status:<8} {name}"
        self.results_list.addItem(text)
        self.results_list.scrollToBottom()
        if not self._running:
            self.detail_label.setText("")
        self._show_progress()

    def _on_done(self, summary):
        self.summary = summary
        for res in summary.results:  # results the progress signal has not shown yet
            self._on_progress(res, len(self.file_results) + 1, len(summary.results))
        self._running = {}
        self._total = len(summary.results)
        self._show_progress()
        state = "cancelled" if summary.cancelled else ("done" if summary.ok else "finished")
        self.detail_label.setText(f"{state} in {summary.seconds:.1f} s")
        self.summary_label.setText(summary.format().splitlines()[-1])
        self.summary_label.setToolTip(summary.format())
        self._dock.set_status(f"Batch {state}: {self.progress_text}.")

    def _close_activity(self):
        act, self._activity = self._activity, None
        if act is not None:
            try:
                act.close()
            except Exception:  # noqa: BLE001 - the activity panel may be gone with napari
                pass

    def _on_finished(self):
        self._worker = None
        self._token = None
        self._running = {}
        self._close_activity()
        if self.summary is None:  # failed before a summary: say what is known
            self.detail_label.setText("stopped by an error")
        self._update_buttons()

    # -- results --------------------------------------------------------------------------
    def load_results(self):
        """Open the finished label images, each over its input image, as layers.

        Files are read in a worker thread (inputs memory-mapped where the file allows);
        their layers are added on the GUI thread one layer per event-loop turn, with the
        files' physical pixel sizes as scale; only the last file's layers are visible (the
        others are added hidden). Returns the worker, or None when there is nothing to load.
        """
        from napari.utils.notifications import show_info

        if self.summary is None or self._results.reading:
            show_info("EdgeSAM batch: nothing to load yet.")
            return None
        results = [r for r in self.summary.results
                   if r.status in ("done", "skipped") and r.output]
        if not results:
            show_info("EdgeSAM batch: no finished file to load.")
            return None
        worker = self._results.load(results)
        self._update_buttons()
        return worker

    @property
    def loaded_layers(self) -> list:
        """Layers added by the last :meth:`load_results`."""
        return self._results.loaded_layers

    @property
    def loading(self) -> bool:
        """Whether results are still being read or added."""
        return self._results.loading

    def shutdown(self):
        """Stop everything (the dock widget is going away): cancel a run, stop adding
        layers, close the activity entry."""
        if self._worker is not None:
            self._token.cancel()
        self._results.shutdown()
        self._close_activity()
