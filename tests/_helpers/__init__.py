"""What the tests and the test scripts share: tiny models and data, an in-memory logger, a quiet trainer, the
AutoBalance search of the tiny runs, the scripts' command line and records, launchers for DDP scripts and a reader
of imports. One module per concept; import from the module itself."""

import pkgutil
import sys

if "pytest" in sys.modules:  # under pytest: the helpers' asserts explain their failures like the tests' own do
    sys.modules["pytest"].register_assert_rewrite(*(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)))
