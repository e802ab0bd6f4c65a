"""The model row of the EdgeSAM panel: which model, downloading it, remembering it.

:class:`ModelPicker` is a self-contained widget: a combo box of the published model cards,
"custom files..." and the custom model in use; a Download button; one progress bar for the
whole model (the sum of the card's file sizes) with a Cancel button. It loads models in
workers (started through the panel's ``start_worker``) and hands each loaded
:class:`~napari_edgesam.engine.EdgeSamModel` over with its :attr:`ModelPicker.model_loaded`
signal; what it has to say goes out through :attr:`ModelPicker.status_changed`.

The model in use is remembered in the project's own ``settings.json`` (key ``last_model``,
see :func:`napari_edgesam.engine.models.last_model`; the command line and batch machines
share that file) and :meth:`ModelPicker.restore_last` loads it again at the next start, in a
worker. A remembered custom pair whose files moved, or that no longer passes the contract
check, gives a status saying where the files were and one warning notification; the choice
("custom files...", opened where the files were, or a published model) stays with the user.

The GUI thread never hashes files: it only checks sizes and the hash memo
(``model_status(card, verify=False)``) and whether files exist; hashing and the ONNX
contract check run in the workers (:func:`~.workers.load_model_job`,
:func:`~.workers.resolve_card_job`, :func:`~.workers.download_job`). The licence is shown
before the first download (:mod:`.licence_dialog`).

Public API::

    picker = ModelPicker(start_worker, notify_error)
    picker.model_loaded.connect(use_model)        # an EdgeSamModel, loaded in a worker
    picker.status_changed.connect(set_status)     # str
    picker.restore_last()                         # the model used last (or the default)
    picker.select("edgesam-3x"); picker.download(card)
    picker.load_custom_model(enc, dec)
    picker.show_model(model)                      # a model set by other means: shown only
    picker.model, picker.busy, picker.status
    picker.shutdown()
"""

from __future__ import annotations

import logging
from pathlib import Path

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QWidget,
)

from . import messages
from .licence_dialog import ask_licence
from .workers import download_job, load_model_job, resolve_card_job

_log = logging.getLogger(__name__)

__all__ = ["CUSTOM_PICK", "NOT_DOWNLOADED", "ModelPicker"]

#: The combo box entry that opens the two file dialogs.
CUSTOM_PICK = "custom files..."
#: Suffix of a published model whose files are not on this machine.
NOT_DOWNLOADED = "  (not downloaded)"
#: What to tell users who cannot download (appended to download failures).
CUSTOM_HINT = (
    f'Or choose "{CUSTOM_PICK}" in the model list to use an encoder/decoder pair you '
    "already have."
)
_PRESENT = ("verified", "present")


class ModelPicker(QWidget):
    """The model row: published models, custom files, download with progress and Cancel.

    Parameters
    ----------
    start_worker : callable
        ``start_worker(func, *args, returned=None, errored=None, finished=None, desc=None,
        yielded=None, total=0) -> worker``: runs ``func(*args)`` in a worker thread and
        calls the callbacks on the GUI thread (the panel's ``EdgeSamWidget.start_worker``).
    notify_error : callable
        ``notify_error(exc, prefix="")``: shows an error (exception or text) to the user.
    parent : QWidget, optional

    Notes
    -----
    Nothing is loaded by the constructor: connect the signals, then call
    :meth:`restore_last` (or :meth:`show_model` for a model set by other means).
    """

    #: A model (an :class:`~napari_edgesam.engine.EdgeSamModel`) was loaded in a worker.
    model_loaded = Signal(object)
    #: A status text for the panel's status line.
    status_changed = Signal(str)

    def __init__(self, start_worker, notify_error, parent=None):
        super().__init__(parent)
        self._start_worker = start_worker
        self._notify_error = notify_error
        self._alive = True
        self._model = None
        self._model_worker = None
        self._download_worker = None
        self._download_state: dict = {}
        self._load_generation = 0
        self._status = ""
        self._pick_dir = ""  # where the file dialogs open
        self._updating = False
        self._build_ui()
        self._download_timer = QTimer(self)
        self._download_timer.setInterval(100)
        self._download_timer.timeout.connect(self._update_download_progress)
        self._populate()

    def _build_ui(self):
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(8)  # never widens the panel
        self.model_combo.setToolTip("Published EdgeSAM models, or your own encoder/decoder pair")
        self.model_combo.activated.connect(self._on_chosen)
        self.download_button = QPushButton("Download")
        self.download_button.setToolTip("Download the selected model (licence shown first)")
        self.download_button.clicked.connect(self._on_download_clicked)
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.download_button)
        form.addRow(row)  # the section's title says "Model"
        self.download_progress = QProgressBar()
        self.download_progress.setVisible(False)
        self.cancel_download_button = QPushButton("Cancel")
        self.cancel_download_button.setVisible(False)
        self.cancel_download_button.clicked.connect(self.cancel_download)
        prow = QHBoxLayout()
        prow.addWidget(self.download_progress, 1)
        prow.addWidget(self.cancel_download_button)
        form.addRow(prow)

    # ------------------------------------------------------------------ public ------
    @property
    def model(self):
        """The model loaded (or shown with :meth:`show_model`), or ``None``."""
        return self._model

    @property
    def busy(self) -> bool:
        """Whether a model is being loaded or downloaded."""
        return self._model_worker is not None or self._download_worker is not None

    @property
    def downloading(self) -> bool:
        """Whether a download runs."""
        return self._download_worker is not None

    @property
    def status(self) -> str:
        """The last status text emitted."""
        return self._status

    @staticmethod
    def model_label(model) -> str:
        """How ``model`` is named in the combo box and status lines (see
        :func:`.messages.model_label`)."""
        return messages.model_label(model)

    def show_model(self, model) -> None:
        """Show ``model`` as the one in use (a model set by other means, e.g. the panel's
        ``set_model``). Nothing is loaded, emitted or remembered.

        Parameters
        ----------
        model : EdgeSamModel or None
            An optimised variant is shown as its original (``model.source``).
        """
        if model is not None:
            model = getattr(model, "source", None) or model
        self._model = model
        self._populate()

    def select(self, card_name: str):
        """Choose a published model as the user would in the combo box: load it when its
        files are here (in a worker), else say that it needs downloading.

        Parameters
        ----------
        card_name : str
            A card's name, display name or alias (any case).

        Returns
        -------
        worker or None
            The loading worker, if one was started.

        Raises
        ------
        ValueError
            When no listed card has that name.
        """
        for i in range(self.model_combo.count()):
            d = self.model_combo.itemData(i)
            if d and d[0] == "card" and d[1].matches(card_name):
                self.model_combo.setCurrentIndex(i)
                return self._on_chosen(i)
        raise ValueError(f"no model card named {card_name!r} in the list")

    def restore_last(self):
        """Load the model used last (``last_model`` in ``settings.json``), in a worker.

        Without a remembered model, the default published model is loaded when its files
        are here. A remembered custom pair whose files are gone gives a status naming where
        they were and one warning notification, and "custom files..." then opens there; a
        pair that fails the contract check is reported the same way when its worker fails.

        Returns
        -------
        worker or None
            The loading worker, if one was started.
        """
        from napari_edgesam.engine.models import get_card, last_model

        try:
            last = last_model()
        except Exception as exc:  # noqa: BLE001 - an unreadable setting is no model
            _log.info("Cannot read the remembered model: %s", exc)
            last = None
        if last is None:
            return self._load_default()
        if last.custom:
            enc, dec = last.encoder, last.decoder
            self._pick_dir = str(_existing_folder(enc.parent))
            missing = [p for p in (enc, dec) if not p.is_file()]
            if missing:
                gone = " and ".join(str(p) for p in missing)
                self._restore_failed(
                    f"The custom model used last is no longer there: {gone} not found "
                    f"(encoder {enc}, decoder {dec})."
                )
                return None
            return self._load_custom(enc, dec, restoring=True)
        try:
            card = get_card(last.card)
        except Exception as exc:  # noqa: BLE001 - a card that is gone: the default
            _log.info("The remembered model %r is not known: %s", last.card, exc)
            return self._load_default()
        for i in range(self.model_combo.count()):
            d = self.model_combo.itemData(i)
            if d and d[0] == "card" and d[1].name == card.name:
                self.model_combo.setCurrentIndex(i)
                if d[2] in _PRESENT:
                    return self._load_card(d[1], restoring=True)
                self._set_status(
                    f"{card.display_name} (used last time) is not on this machine: press "
                    f'Download (or choose "{CUSTOM_PICK}").'
                )
                break
        self._update_download_button()
        return None

    def load_custom_model(self, encoder, decoder):
        """Use an encoder/decoder pair of ONNX files (checked and loaded in a worker).

        The model is named after the encoder file ("custom: <file name>"); it is never
        presented as EdgeSAM. Once loaded it is remembered for the next start.

        Parameters
        ----------
        encoder, decoder : path
            ONNX files honouring the EdgeSAM contract.

        Returns
        -------
        worker
            The loading worker.
        """
        return self._load_custom(encoder, decoder, restoring=False)

    def download(self, card):
        """Download a published model (after the licence dialog, the first time) in a
        worker, then load it; one progress bar shows the whole model.

        Parameters
        ----------
        card : ModelCard or str
            The model (a card or its name).

        Returns
        -------
        worker or None
            The download worker; ``None`` when a download already runs or the licence was
            declined.
        """
        from napari_edgesam.engine.models import get_card, licence_notice_shown

        card = get_card(card)
        if self._download_worker is not None:
            return None
        if not licence_notice_shown(card) and not self._ask_licence(card):
            self._set_status("Download cancelled (licence not accepted).")
            return None
        self._download_state = {"done": 0, "total": card.total_size, "card": card}
        self.download_progress.setRange(0, 1000)
        self._update_download_progress()
        self.download_progress.setVisible(True)
        self.cancel_download_button.setVisible(True)
        self.cancel_download_button.setEnabled(True)
        self._set_status(f"Downloading {card.display_name}...")
        self._load_generation += 1  # a model chosen meanwhile wins over this download
        gen = self._load_generation
        self._download_worker = self._start_worker(
            download_job, card, self._download_state,
            returned=lambda m: (self._on_loaded(m, ("card", card.name))
                                if gen == self._load_generation else None),
            errored=self._on_download_failed,
            finished=self._on_download_done,
            desc=f"EdgeSAM: downloading {card.display_name}",
        )
        self._download_timer.start()
        self._update_download_button()
        return self._download_worker

    def cancel_download(self) -> None:
        """Ask the running download to stop (it stops at its next block of bytes; nothing
        is left behind and it is reported as cancelled, not as an error)."""
        if self._download_worker is None:
            return
        self._download_state["cancel"] = True
        self.cancel_download_button.setEnabled(False)
        self._set_status("Cancelling the download...")

    def shutdown(self) -> None:
        """Stop: cancel a download, ignore workers still running, stop the timer."""
        self._alive = False
        self._load_generation += 1
        self._download_timer.stop()
        if self._download_state:
            self._download_state["cancel"] = True

    # ------------------------------------------------------------------ combo -------
    def _populate(self):
        from napari_edgesam.engine.models import list_cards, model_status

        self._updating = True
        try:
            current = self.model_combo.currentData()
            self.model_combo.clear()
            try:
                cards = list_cards()
            except Exception as exc:  # an invalid card file: still offer custom files
                self._notify_error(exc, "cannot read the model cards: ")
                cards = []
            for card in cards:
                try:
                    # size + memo only: never hash files on the GUI thread
                    state = model_status(card, verify=False).state
                except Exception:  # noqa: BLE001 - shown as unavailable
                    state = "missing"
                suffix = "" if state in _PRESENT else NOT_DOWNLOADED
                self.model_combo.addItem(card.display_name + suffix, ("card", card, state))
            model = self._model
            if model is not None and not any(c.name == model.name for c in cards):
                self.model_combo.addItem(self.model_label(model), ("model", model))
            self.model_combo.addItem(CUSTOM_PICK, ("pick", None))
            # select what is in use, else what was selected
            idx = -1
            for i in range(self.model_combo.count()):
                d = self.model_combo.itemData(i)
                if model is not None and (
                    (d[0] == "model" and d[1] is model)
                    or (d[0] == "card" and d[1].name == model.name)
                ):
                    idx = i
            if idx < 0 and current is not None:
                for i in range(self.model_combo.count()):
                    d = self.model_combo.itemData(i)
                    if d[0] == current[0] == "card" and d[1].name == current[1].name:
                        idx = i
            self.model_combo.setCurrentIndex(max(idx, 0))
        finally:
            self._updating = False
        self._update_download_button()

    def _select_pick(self):
        self.model_combo.setCurrentIndex(self.model_combo.count() - 1)  # "custom files..."
        self._update_download_button()

    def _update_download_button(self):
        d = self.model_combo.currentData()
        needs = d is not None and d[0] == "card" and d[2] not in _PRESENT
        self.download_button.setEnabled(bool(needs) and self._download_worker is None)

    def _on_chosen(self, index: int):
        if self._updating:
            return None
        d = self.model_combo.itemData(index)
        if d is None:
            return None
        worker = None
        if d[0] == "pick":
            pair = self._ask_files()
            if pair is not None:
                return self.load_custom_model(*pair)
            self._populate()  # back to what is in use
        elif d[0] == "card":
            if d[2] in _PRESENT:
                if self._model is None or self._model.name != d[1].name:
                    worker = self._load_card(d[1])
            else:
                self._set_status(
                    f"{d[1].display_name} is not on this machine: press Download "
                    f'(or choose "{CUSTOM_PICK}").'
                )
        elif d[0] == "model" and d[1] is not self._model:
            self._model = d[1]
            self.model_loaded.emit(d[1])
        self._update_download_button()
        return worker

    def _ask_files(self):
        """The two file dialogs; ``(encoder, decoder)`` or ``None`` when cancelled."""
        onnx = "ONNX files (*.onnx);;All files (*)"
        enc, _ = QFileDialog.getOpenFileName(self, "EdgeSAM encoder (ONNX)", self._pick_dir,
                                             onnx)
        if not enc:
            return None
        dec, _ = QFileDialog.getOpenFileName(self, "EdgeSAM decoder (ONNX)",
                                             str(Path(enc).parent), onnx)
        if not dec:
            return None
        self._pick_dir = str(Path(enc).parent)
        return enc, dec

    # ------------------------------------------------------------------ loading -----
    def _load_default(self):
        """Use the default published model when its files are here (verified in a worker)."""
        for i in range(self.model_combo.count()):
            d = self.model_combo.itemData(i)
            if d[0] == "card" and d[1].default and d[2] in _PRESENT:
                self.model_combo.setCurrentIndex(i)
                self._update_download_button()
                return self._load_card(d[1])
        return None

    def _load_card(self, card, *, restoring: bool = False):
        return self._start_load(
            resolve_card_job, card, remember=("card", card.name), restoring=restoring,
            status=f"Loading {card.display_name}...",
            desc=f"EdgeSAM: checking {card.display_name}",
        )

    def _load_custom(self, encoder, decoder, *, restoring: bool):
        from napari_edgesam.engine import EdgeSamModel

        model = EdgeSamModel(encoder, decoder, name=f"custom: {Path(encoder).name}")
        when = " (used last time)" if restoring else ""
        return self._start_load(
            load_model_job, model, remember=("custom", str(encoder), str(decoder)),
            restoring=restoring, status=f"Loading {Path(encoder).name}{when}...",
            desc="EdgeSAM: loading model",
        )

    def _start_load(self, job, arg, *, remember, restoring, status, desc):
        self._load_generation += 1
        generation = self._load_generation
        holder: dict = {}

        def current() -> bool:
            return self._alive and generation == self._load_generation

        def returned(model):
            if current():
                self._on_loaded(model, remember)

        def errored(exc):
            if current():
                self._on_load_failed(exc, remember, restoring)

        def finished():
            if self._model_worker is holder.get("worker"):
                self._model_worker = None

        self._set_status(status)
        worker = self._start_worker(job, arg, returned=returned, errored=errored,
                                    finished=finished, desc=desc)
        holder["worker"] = self._model_worker = worker
        return worker

    def _on_loaded(self, model, remember):
        if not self._alive:
            return
        from napari_edgesam.engine.models import remember_last_model

        self._model = model
        if remember[0] == "card":
            remember_last_model(card=remember[1])
        else:
            remember_last_model(encoder=remember[1], decoder=remember[2])
            self._pick_dir = str(Path(remember[1]).parent)
        self._populate()
        self._set_status(f"Loaded {self.model_label(model)}.")
        self.model_loaded.emit(model)

    def _on_load_failed(self, exc, remember, restoring):
        if restoring:
            if remember[0] == "custom":
                what = f"The custom model used last (encoder {remember[1]}, decoder {remember[2]})"
            else:
                what = f"{remember[1]} (used last time)"
            reason = str(exc).strip() or type(exc).__name__
            if not reason.endswith("."):
                reason += "."
            self._restore_failed(f"{what} cannot be used: {reason}")
            return
        self._notify_error(exc, "model not usable: ")
        self._populate()

    def _restore_failed(self, what: str):
        """Say why the remembered model is not loaded (status + one warning) and leave the
        choice to the user: "custom files..." is selected and opens where the files were."""
        from napari.utils.notifications import show_warning

        self._populate()
        if self._model is None:
            self._select_pick()
        text = (f'{what} Choose "{CUSTOM_PICK}" to pick the encoder and decoder again, or '
                "a published model.")
        self._set_status(text)
        show_warning(f"EdgeSAM: {text}")

    # ------------------------------------------------------------------ download ----
    def _ask_licence(self, card) -> bool:
        """The licence dialog (:func:`~.licence_dialog.ask_licence`); True when accepted."""
        return ask_licence(card, self)

    def _on_download_clicked(self):
        d = self.model_combo.currentData()
        if d is None or d[0] != "card":
            return
        self.download(d[1])

    def _update_download_progress(self):
        st = self._download_state
        total = st.get("total") or 0
        done = min(st.get("done", 0), total)
        card = st.get("card")
        name = card.display_name if card is not None else "model"
        self.download_progress.setFormat(
            f"{name}: {messages.byte_size(done)} of {messages.byte_size(total)} (%p%)")
        if total:
            self.download_progress.setValue(int(1000 * done / total))

    def _on_download_failed(self, exc):
        from napari_edgesam.engine import CancelledError

        if not self._alive:
            return
        if isinstance(exc, CancelledError):
            self._set_status("Download cancelled.")
            return
        self._notify_error(f"{exc} {CUSTOM_HINT}", "download failed: ")

    def _on_download_done(self):
        self._download_worker = None
        self._download_timer.stop()
        if not self._alive:
            return
        self.download_progress.setVisible(False)
        self.cancel_download_button.setVisible(False)
        self._populate()

    # ------------------------------------------------------------------ status ------
    def _set_status(self, text: str):
        self._status = text
        if self._alive:
            self.status_changed.emit(text)


def _existing_folder(folder: Path) -> Path:
    """``folder`` or its nearest existing parent (where a file dialog can open)."""
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            return candidate
    return folder
