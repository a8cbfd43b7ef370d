"""The engine: prefill with signal capture, compression, decoding, sampling, and the sweep over methods.

It owns the flow of one batch (:mod:`~infokv.engine.sweep`: tokenize, prefill once with
:mod:`~infokv.engine.capture`, compress per setting, decode with :mod:`~infokv.engine.decoding`) and
the views methods score (:mod:`~infokv.engine.views`). It imports downward only: :mod:`infokv.hf` for
the model call and the cache, :mod:`infokv.methods` and :mod:`infokv.signals`; never :mod:`infokv.eval`
or :mod:`infokv.analysis`.
"""
