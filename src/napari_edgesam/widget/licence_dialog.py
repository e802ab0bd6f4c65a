"""The licence dialog shown before a published model is first downloaded.

:func:`ask_licence` shows the card's licence name, a link to the licence and its summary,
with "Accept and download" and Cancel. The link gets a colour readable on the dialog's
background (:func:`link_colour`): Qt's default dark blue is not on napari's dark theme.
"""

from __future__ import annotations

import html

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QPalette
from qtpy.QtWidgets import QMessageBox

__all__ = ["ask_licence", "contrast_ratio", "link_colour"]


def _luminance(colour: QColor) -> float:
    def channel(v: float) -> float:
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    return (0.2126 * channel(colour.redF()) + 0.7152 * channel(colour.greenF())
            + 0.0722 * channel(colour.blueF()))


def contrast_ratio(a: QColor, b: QColor) -> float:
    """WCAG contrast ratio of two colours (1 to 21; 4.5 is readable body text).

    Parameters
    ----------
    a, b : QColor

    Returns
    -------
    float
    """
    la, lb = sorted((_luminance(QColor(a)), _luminance(QColor(b))), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def link_colour(palette: QPalette) -> str:
    """A link colour readable on ``palette``'s window background, as ``#rrggbb``.

    The palette's own link colour when it is readable (Qt's default dark blue is not on
    napari's dark theme), else a light blue on dark backgrounds and a dark blue on light ones.

    Parameters
    ----------
    palette : QPalette
        The (polished) palette of the widget showing the link.

    Returns
    -------
    str
    """
    background = palette.color(QPalette.ColorRole.Window)
    own = palette.color(QPalette.ColorRole.Link)
    if contrast_ratio(own, background) >= 4.5:
        return own.name()
    for candidate in ("#8ab4f8", "#0b57d0"):
        if contrast_ratio(QColor(candidate), background) >= 4.5:
            return candidate
    return palette.color(QPalette.ColorRole.WindowText).name()


def ask_licence(card, parent=None) -> bool:
    """Show the licence of ``card`` with its link (modal); True when the user accepts.

    Parameters
    ----------
    card : ModelCard
        The published model about to be downloaded.
    parent : QWidget, optional
        The dialog's parent (its theme's colours are used).

    Returns
    -------
    bool
        Whether "Accept and download" was pressed.
    """
    box = QMessageBox(parent)
    box.setWindowTitle(f"{card.display_name}: licence")
    box.setTextFormat(Qt.TextFormat.RichText)
    box.ensurePolished()  # the palette now holds the theme's colours
    colour = link_colour(box.palette())
    palette = box.palette()
    palette.setColor(QPalette.ColorRole.Link, QColor(colour))
    palette.setColor(QPalette.ColorRole.LinkVisited, QColor(colour))
    box.setPalette(palette)
    url = html.escape(card.licence_url, quote=True)
    box.setText(
        f"The {html.escape(card.display_name)} weights are licensed under the "
        f"<b>{html.escape(card.licence_name)}</b>: "
        f"<a href=\"{url}\" style=\"color: {colour};\">{url}</a>"
    )
    box.setInformativeText(card.licence_summary)
    accept = box.addButton("Accept and download", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is accept
