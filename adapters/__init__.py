"""loradock's hub core: settings, base-model catalog, and (with the hub) adapter records and storage.

Importing this package is cheap on purpose: it never imports torch or vLLM, so the CLI, the registry and
the server's request path can use it without paying for the ML stack.
"""

__version__ = "0.1.0"
