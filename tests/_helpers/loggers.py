"""A Lightning logger that keeps every ``log_metrics`` call in memory."""

from lightning.pytorch.loggers import Logger


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, metrics)`` in ``rows`` (callbacks log straight to the loggers)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def values(self, key):
        """Every logged value of ``key``, in order."""
        return [row[key] for _, row in self.rows if key in row]
