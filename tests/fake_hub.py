"""A stand-in for ``datasets.load_dataset`` that serves hand-made rows shaped like a hub dataset's."""

from __future__ import annotations


def fake_hub(monkeypatch, rows_by_call: dict) -> list:
    """Serve ``rows_by_call[(path, name, split)]``; return the list that records every call."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return rows_by_call[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls
