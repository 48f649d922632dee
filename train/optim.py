"""Rectified Adam for Keras 3.

The tutorial used `tfa.optimizers.RectifiedAdam`; tensorflow-addons reached end of life in
2024 and does not install with Keras 3, which ships no RAdam. This is the algorithm of Liu et
al., "On the Variance of the Adaptive Learning Rate and Beyond" (ICLR 2020), with the defaults
of the tensorflow-addons version (``sma_threshold=5``), so the tutorial's runs keep their meaning.
Decoupled weight decay comes from Keras' base optimizer (``weight_decay=``).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="edgeseg")
class RectifiedAdam(keras.optimizers.Optimizer):
    """Adam whose adaptive step is switched on only once its variance estimate is trustworthy.

    While the length of the approximated simple moving average ``rho_t`` is at most
    `sma_threshold`, the update is plain momentum SGD ``lr * m_hat``; afterwards it is
    ``lr * r_t * m_hat / (sqrt(v_hat) + epsilon)`` with the variance rectification term ``r_t``.
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        sma_threshold: float = 5.0,
        name: str = "rectified_adam",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.sma_threshold = sma_threshold

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1 = ops.cast(self.beta_1, variable.dtype)
        beta_2 = ops.cast(self.beta_2, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]

        self.assign(m, beta_1 * m + (1.0 - beta_1) * gradient)
        self.assign(v, beta_2 * v + (1.0 - beta_2) * ops.square(gradient))
        beta_1_power = ops.power(beta_1, step)
        beta_2_power = ops.power(beta_2, step)
        m_hat = m / (1.0 - beta_1_power)
        rho_inf = 2.0 / (1.0 - beta_2) - 1.0
        rho_t = rho_inf - 2.0 * step * beta_2_power / (1.0 - beta_2_power)
        rectifier = ops.sqrt(
            ops.maximum(rho_t - 4.0, 0.0) * ops.maximum(rho_t - 2.0, 0.0) * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
        )
        v_hat = ops.sqrt(v / (1.0 - beta_2_power))
        adaptive = rectifier * m_hat / (v_hat + self.epsilon)
        update = ops.where(rho_t > self.sma_threshold, adaptive, m_hat)
        self.assign_sub(variable, lr * update)

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "sma_threshold": self.sma_threshold,
        }
