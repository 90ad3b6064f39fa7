"""The ``softmaxkit`` command: ``demo``, ``bench``."""
