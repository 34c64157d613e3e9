"""The best model of a finished search, studied the way the course reports did by hand, in one report.

One module per stage: ``source`` (the search, model and test set, from MLflow), ``curves``,
``classification``, ``weights``, ``probes``, ``tsne``, ``robustness``; ``html`` renders them, ``report``
runs them in order. ``python -m tuner.analyze`` is the command.
"""
