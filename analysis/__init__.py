"""Analyses of what the attention does: explicit attention maps, injectivity, rank and the
effective receptive field (``tools/analyze.py``).

Depends on ``backbones`` only through its public modules: attention modules are found by type and
hooked, and their maps rebuilt from their own weights (see ``analysis.sites``).
"""
