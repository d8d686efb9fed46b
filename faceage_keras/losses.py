"""Loss functions of the five models."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="faceage_keras")
class FocalLoss(keras.losses.Loss):
    """Focal loss for integer class labels and logits.

    For a sample of true class `c` with softmax probability `p_c`, the loss is
    `-alpha[c] * (1 - p_c) ** gamma * log(p_c)`. The thesis used `gamma=2` and
    `alpha=(0.2, 0.8)` for gender (0 = male, 1 = female).

    Args:
        gamma: float. Focusing parameter; 0 gives weighted cross-entropy.
        alpha: sequence of float or None. Weight per class; None weighs all
            classes 1.
        **kwargs: Standard `keras.losses.Loss` arguments (`name`, `reduction`).
    """

    def __init__(self, gamma=2.0, alpha=(0.2, 0.8), name="focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if gamma < 0:
            raise ValueError(f"`gamma` must be >= 0. Received: gamma={gamma}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else [float(value) for value in alpha]

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        num_classes = ops.shape(y_pred)[-1]
        one_hot = ops.one_hot(labels, num_classes, dtype=y_pred.dtype)

        log_probs = ops.log_softmax(y_pred, axis=-1)
        true_log_prob = ops.sum(one_hot * log_probs, axis=-1)
        true_prob = ops.exp(true_log_prob)
        loss = -ops.power(1.0 - true_prob, self.gamma) * true_log_prob

        if self.alpha is not None:
            alpha = ops.convert_to_tensor(self.alpha, dtype=y_pred.dtype)
            loss = loss * ops.sum(one_hot * alpha, axis=-1)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update({"gamma": self.gamma, "alpha": self.alpha})
        return config
