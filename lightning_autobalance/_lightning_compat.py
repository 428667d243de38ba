"""The only home of Lightning internals the package relies on: private classes, methods and module functions.

Everything else in the package uses Lightning's public API; when a Lightning release changes one of the pieces below,
this module is the one to adapt. Written against Lightning 2.6 (``lightning.pytorch.strategies.launchers.
subprocess_script``: ``_SubprocessScriptLauncher._call_children_scripts``, which starts ranks > 0 with the module
function ``_hydra_subprocess_cmd`` inside a Hydra app, and ``DDPStrategy._configure_launcher`` / ``_launcher``).

* :class:`JobCommandDDPStrategy` — a ``DDPStrategy`` whose worker processes are started with a command of the
  subclass's choosing (:meth:`JobCommandDDPStrategy.worker_command`) rather than Lightning's re-run of the command line,
  with hooks before and after the launch.

Example:
    >>> class EchoStrategy(JobCommandDDPStrategy):
    ...     def worker_command(self, local_rank):
    ...         return ["python", "-c", f"print({local_rank})"], "."
    >>> EchoStrategy().worker_command(1)
    (['python', '-c', 'print(1)'], '.')
"""

from __future__ import annotations

import subprocess
from abc import abstractmethod
from collections.abc import Sequence
from unittest import mock

from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import subprocess_script

__all__ = ["JobCommandDDPStrategy"]


class _JobCommandLauncher(subprocess_script._SubprocessScriptLauncher):
    """Lightning's subprocess launcher, starting ranks > 0 with the strategy's :meth:`worker_command`."""

    def __init__(self, strategy: JobCommandDDPStrategy) -> None:
        super().__init__(strategy.cluster_environment, strategy.num_processes, strategy.num_nodes)
        self.strategy = strategy

    def _call_children_scripts(self) -> None:
        self.strategy.before_launch()
        # Lightning starts the workers with `_hydra_subprocess_cmd(local_rank)` inside a Hydra app (else sys.argv)
        with mock.patch.object(subprocess_script, "_hydra_subprocess_cmd", self.strategy.worker_command):
            super()._call_children_scripts()
        self.strategy.after_launch(list(self.procs))


class JobCommandDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose workers (ranks > 0 on this node) run :meth:`worker_command` inside a Hydra app.

    Subclasses implement :meth:`worker_command` and may override :meth:`before_launch` / :meth:`after_launch`.
    Outside a Hydra app, and with launchers other than Lightning's subprocess-script launcher (e.g. under
    ``torchrun`` or SLURM), it behaves exactly like ``DDPStrategy``.
    """

    @abstractmethod
    def worker_command(self, local_rank: int) -> tuple[Sequence[str], str]:
        """The command line and working directory of the worker of ``local_rank``."""

    def before_launch(self) -> None:
        """Called in the launching process just before the workers start."""

    def after_launch(self, workers: list[subprocess.Popen]) -> None:
        """Called in the launching process with the started worker processes."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, subprocess_script._SubprocessScriptLauncher):
            self._launcher = _JobCommandLauncher(self)
