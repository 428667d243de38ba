"""The drop-in: the project's model with lightning-autobalance's mixin (first in the bases) and three small changes."""

from lit_classifier import LitClassifier

from lightning_autobalance import AutoBalanceMixin


class BalancedClassifier(AutoBalanceMixin, LitClassifier):
    def training_step(self, batch, batch_idx):
        return self.autobalance_step_loss(batch)  # instead of F.cross_entropy(logits, y)

    def autobalance_features(self, x):  # the fast (last-layer) hyper-step engine: features ...
        return self.net.model[:-1](x.flatten(1))

    def autobalance_head(self):  # ... and the head that maps them to logits
        return self.net.model[-1]

    def validation_step(self, batch, batch_idx):  # optional: the balanced / worst-class errors next to val/acc
        super().validation_step(batch, batch_idx)
        self.autobalance_evaluate("val", batch)

    def test_step(self, batch, batch_idx):
        super().test_step(batch, batch_idx)
        self.autobalance_evaluate("test", batch)
