"""The TorchLens probe: a metadata-only trace of a session's first steps as a neutral call tree, and what is read
from it (seed fields, GEMM shapes). merge/ aligns it with the events."""
