"""One module per output format of a ``Report``: ``text`` (rich, the terminal), ``markdown``,
``jsonrenderer``, ``image`` (matplotlib: PNG, SVG, PDF); ``base`` holds what they share.
Renderers only read the report model; the model knows nothing of them."""
