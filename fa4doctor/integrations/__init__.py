"""Integrations: other libraries' attention hooks routed through the vetted dispatcher.

`fa4doctor.integrations.transformers.register()` adds an `attn_implementation` named `fa4doctor`
to Hugging Face transformers. Importing this package imports neither torch nor transformers.
"""
