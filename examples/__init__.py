"""Examples of eventbus applications."""
