"""``exdb shell``: an interactive SQL shell (prompt_toolkit) and its non-interactive modes.

The statement splitter (:mod:`exdb.shell.split`) is shared with ``exdb run``; only the REPL
(:mod:`exdb.shell.repl`) needs prompt_toolkit, the ``shell`` extra.
"""
