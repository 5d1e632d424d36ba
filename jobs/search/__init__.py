"""Adaptive hyperparameter search: an experiment whose jobs are trials sampled from a space by an
Optuna sampler and stopped early by an Optuna pruner. space: the request's distributions;
samplers and pruners: names to Optuna classes; study: ask, tell, prune, on the job rows."""
