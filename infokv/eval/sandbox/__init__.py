"""A sandbox for model-written code: a child process with resource limits and kernel layers.

:mod:`~infokv.eval.sandbox.process` starts :mod:`~infokv.eval.sandbox.child`, which applies
:mod:`~infokv.eval.sandbox.layers` and runs test calls (:mod:`~infokv.eval.sandbox.calls`). The child
files run by path with only the standard library: they import nothing of infokv.
"""
