"""rlaif: turn a written constitution into preference data and aligned models with AI feedback."""

__version__ = "0.1.0"
