"""Models loopmeta can build offline (random weights, real vendor code) for the main job, tests and benchmarks."""
