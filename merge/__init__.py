"""Merging: TorchLens capture, call trees, alignment of events with the trace, and loop inference."""
