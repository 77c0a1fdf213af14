"""Stage entry points: they compose the ``dtmem`` library with Ray and MLflow.

Importable both from the installed ``dtmem`` CLI and from a Ray job whose working directory
is the repository (both put this package on ``sys.path``).
"""
