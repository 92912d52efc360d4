"""ftmix: choose, predict and run the fastest fine-tuning optimization mixture that fits.

The Python API is the CLI's own functions (docs/api.md); importing ftmix loads no torch.
"""

import sys
import types

from ftmix.api import estimate, evaluate, matrix, plan, train, train_config
from ftmix.errors import FtmixError

__version__ = "0.1.0"
__all__ = ["estimate", "plan", "matrix", "train", "evaluate", "train_config", "FtmixError", "__version__"]


class _Package(types.ModuleType):
    """``ftmix.estimate``, ``ftmix.plan`` and ``ftmix.train`` are API functions and subpackages
    alike: importing a subpackage sets the parent's attribute to it, which would hide the function
    (``from ftmix.plan import x`` still finds the subpackage in ``sys.modules``)."""

    def __setattr__(self, name, value):
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
