"""The run: the job process, the training loop, controls, escalation, guards, watchdogs, batch finder."""
