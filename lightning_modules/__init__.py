"""Lightning modules, data modules and the MM config bridge.

Importing this package applies the stack's compatibility fixes (see ``compat``).
"""

from . import compat

compat.install()

__all__ = ["compat"]
