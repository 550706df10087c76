"""Integrations with training frameworks and loggers. Each module imports its framework lazily.

- ``gradguard.integrations.lightning.GradGuardCallback``: a Lightning callback (``lightning``).
- ``gradguard.integrations.huggingface.GradGuardCallback``: a ``transformers.Trainer`` callback.
- ``gradguard.integrations.tensorboard.TensorBoardLogger``: a Guard logger for TensorBoard.
- ``gradguard.integrations.wandb.WandbLogger``: a Guard logger for Weights & Biases (``wandb``).
- ``gradguard.integrations.mlflow.MlflowLogger``: a Guard logger for MLflow (``mlflow``).

Importing one of them without its framework raises ``MissingDependencyError`` with the install
command (``pip install 'gradguard[integrations]'``, or ``'gradguard[loggers]'`` for W&B and MLflow). The callbacks log under the same names as
the TensorBoard logger: ``grad_norm/pre_clip``, ``grad_norm/post_clip``, ``clip/coef``,
``clip/threshold``, ``clip/active_frac``, ``steps/skipped`` and ``grad_norm/<module>``.
"""
