"""The ``softmaxkit`` command: ``demo``, ``bench``, ``report``."""
