"""The experiment shell: the active-learning loop, training, models, data, configs, report."""
