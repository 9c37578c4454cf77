"""matplotlib for the bench plots and the demo: imported lazily (an optional dependency, in the
``bench`` extra) and on the file-only Agg backend (no display needed)."""


class MissingMatplotlib(ImportError):
    """matplotlib is not installed; the message says what to install and how to skip the plot."""


def pyplot(missing_message: str):
    """``matplotlib.pyplot``, or :class:`MissingMatplotlib` carrying ``missing_message``."""
    try:
        import matplotlib
    except ImportError:
        raise MissingMatplotlib(missing_message) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
