"""A titled section of the panel whose content folds away with a click on its title."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy, QToolButton, QVBoxLayout, QWidget

__all__ = ["Section"]


class Section(QWidget):
    """A titled section whose content folds away with a click on its title (the content's
    layout keeps its height for the width it gets, so wrapped rows never overlap)."""

    def __init__(self, title: str, content: QWidget, expanded: bool = True):
        super().__init__()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setChecked(expanded)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.toggle.setAutoRaise(True)
        self.toggle.toggled.connect(self._on_toggled)
        self.content = content
        content.setContentsMargins(4, 0, 0, 2)
        lay.addWidget(self.toggle)
        lay.addWidget(content)
        self._on_toggled(expanded)

    def _on_toggled(self, expanded: bool):
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.content.setVisible(expanded)

    def is_expanded(self) -> bool:
        """Whether the section is unfolded."""
        return self.toggle.isChecked()
