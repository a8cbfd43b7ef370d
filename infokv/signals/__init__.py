"""Per-token signals that compression methods score with: attention, entropy, representation evolution.

Pure tensor math over queries, keys, logits and hidden states. It may import :mod:`infokv.kernels`;
never the runtime (:mod:`infokv.hf`, :mod:`infokv.engine`), the methods or anything above them.
"""

WINDOW_QUERIES = "window_queries"
CUMULATIVE_ATTENTION = "cumulative_attention"
ENTROPY = "entropy"
EVOLUTION = "evolution"
QUERY_STATISTICS = "query_statistics"

ALL_SIGNALS = frozenset({WINDOW_QUERIES, CUMULATIVE_ATTENTION, ENTROPY, EVOLUTION, QUERY_STATISTICS})
