"""Text measures shared by stages, `capmill eval` and export: CLIP token counts (`clip_bpe`),
length targets of caption formats (`length`), and the per-shard length tally (`tally`)."""
