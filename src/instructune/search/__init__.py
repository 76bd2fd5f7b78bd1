"""Hyperparameter search: the space (`space`) and the Optuna study that samples it (`study`)."""
