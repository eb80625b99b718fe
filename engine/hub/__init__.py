"""The Hugging Face Hub, client side: where it is and whether it answers (connection), what a repo holds
(repo), downloading a model into the Hub cache (download) and a dataset by its id (datasets).

Below the data and model wings, above the base: models and data ask it; it asks nothing of them. Heavy
imports (huggingface_hub) happen inside functions. The token is passed on, never printed or written.
"""
