"""The napari adapter: the annotation session (no Qt widgets; ``session`` and the modules it
uses), the views (Qt widgets: ``dock`` and the panels), and ``workers`` (the background jobs).
See the README's layout table."""
