"""The ``slidergan`` CLI and the stages that chain the parts through ``pipeline``."""
__version__ = "0.1.0"
