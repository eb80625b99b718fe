"""Searching: hyperparameter sweeps with Optuna (each trial an ordinary run) and the learning-rate range test.

space.py parses `--space` (log/uniform/int/choice over any spec key); plan.py makes the sweep folder and says
what it costs; driver.py runs the trials, prunes from their eval events and resumes a killed sweep;
study.py is the Optuna glue; state.py the sweep.json that readers use; lr_find.py the range test.
"""
