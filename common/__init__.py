"""Small helpers every stage shares: JSON values of dataclasses, tensor flattening, attribute swaps, address
patterns, whole-or-nothing file writes."""
