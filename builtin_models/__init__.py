"""Models loopmeta can build offline (random weights, real vendor code) for the main job, tests and benchmarks."""


def default_session(request):
    """The command line's session when no model is named: the built-in DeepSeek-OCR 2 at `request.builtin` size."""
    from .deepseek_ocr2_tiny import builtin_session

    return builtin_session(request)

