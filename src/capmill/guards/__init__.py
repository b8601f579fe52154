"""Checks on model-written text before it is stored (refusals, loops, injected text, lost facts)."""
