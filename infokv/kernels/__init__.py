"""Attention kernels: causal, single-query decoding and fused attention with signal capture, and the
query blocks of blockwise attention per device (:mod:`~infokv.kernels.blocks`).

Plain tensor functions chosen by device and shape (:mod:`~infokv.kernels.prefix` says which rows can be
attended without a mask). This is the bottom layer: it imports nothing else of infokv.
"""
