"""Metric math (CLIPScore, RefCLIPScore, self-retrieval) shared by stages, `capmill eval` and export."""
