"""atendeai-ctl: the operator's control plane for the AtendeAI platform."""

__version__ = "0.1.0"

__all__ = ["__version__"]
