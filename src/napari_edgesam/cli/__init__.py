"""The ``napari-edgesam`` command line: ``main`` (parser, exit codes), the shared
``arguments``, and one ``*_cmd`` module per subcommand (``segment``, ``propagate``,
``batch``, ``models``, ``optimize``)."""
