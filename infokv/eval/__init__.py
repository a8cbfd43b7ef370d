"""Evaluation: benchmarks, the code sandbox, the job runner, the results store, tables, plots, tracking.

The command line (:mod:`~infokv.eval.cli`, ``infokv-run``) checks a Hydra job and runs it
(:mod:`~infokv.eval.runner`) through :func:`infokv.engine.sweep.generate_sweep`; records go to the
store (:mod:`~infokv.eval.store`) and from there to tables, plots and W&B. It imports the engine, hf and
methods; nothing below imports it, and it never imports :mod:`infokv.analysis`.
"""
