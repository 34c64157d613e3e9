"""After a search: the search's own report and its best model's, from what the search left in MLflow.

The search's part: ``trials`` (the trials' records), ``importance``, ``coordinates``, ``budget``,
``tradeoffs``, assembled by ``search_report``. The model's part, one module per stage: ``source`` (the
search, model and test set), ``curves``, ``classification``, ``weights``, ``probes``, ``tsne``,
``robustness``. ``html`` renders them, ``report`` runs them in order. ``python -m tuner.analyze`` is the
command.
"""
