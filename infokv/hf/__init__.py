"""The transformers adapter: the only code that knows transformers internals.

Loading models and tokenizers (:mod:`~infokv.hf.models`, :mod:`~infokv.hf.fetch`), the model call
(:mod:`~infokv.hf.forward`), our attention function and hooks (:mod:`~infokv.hf.hooks`), the KV cache
(:mod:`~infokv.hf.cache`, :mod:`~infokv.hf.shared_prefix`) and the LM head (:mod:`~infokv.hf.logit_head`).
It imports :mod:`infokv.kernels` and :mod:`infokv.signals`; never the engine, methods, eval or analysis.
"""
