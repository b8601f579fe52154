"""The pure cores of the verifying stages (ScaleCap, Patch Matters, Visual Fact Checker,
FuseCap): the golden-sentence filter, region geometry, fact serialisation, parsers of LLM
answers, and the one place their LLM steps are retried, guarded and fall back.

Everything here is a plain function of its inputs (no model, no I/O) except `steps`, which calls
a backend it is handed; the stages in `capmill.stages` wire them to the backends.
"""
