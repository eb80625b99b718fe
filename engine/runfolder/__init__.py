"""The run folder contract: the only channel between a run and whatever watches or steers it.

One module per file of the folder: events.py (events.jsonl; its kinds in event_types.py), commands.py (commands.jsonl), status.py
(status.json), folder.py (the folder, its spec.toml, listing and resolving runs), lock.py (job.lock);
record.py is the codec they share, redact.py keeps secrets out of all of them."""
