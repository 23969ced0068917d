"""Work per op, step and stage from the TorchLens probe and the session's steps, and roofline bounds."""
