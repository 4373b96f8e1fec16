"""Lightning modules, data modules, the MM config bridge and the command lines.

Importing the package does nothing: the stack's compatibility fixes (``compat.install``) are
applied by the entry points (``cli``, ``classification.cli_main``, ``inference``), and each
submodule imports only what it needs (``demo_data`` imports no torch).
"""
