"""Per-token signals that compression methods score with: attention, entropy, representation evolution."""

WINDOW_QUERIES = "window_queries"
CUMULATIVE_ATTENTION = "cumulative_attention"
ENTROPY = "entropy"
EVOLUTION = "evolution"
QUERY_STATISTICS = "query_statistics"

ALL_SIGNALS = frozenset({WINDOW_QUERIES, CUMULATIVE_ATTENTION, ENTROPY, EVOLUTION, QUERY_STATISTICS})
