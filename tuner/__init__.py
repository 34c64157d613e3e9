"""tuner: hyperparameter search for convolutional image classifiers on Ray Tune, tracked in MLflow.

The path of the data: a space file (``tuner.spaces``) -> the search (``tuner.search``) -> a trial
(``tuner.trial``) -> the training loop (``tuner.train``) -> a model (``models``), with tracking
(``tuner.tracking``) beside it. ``python -m tuner.run`` is the command.
"""

__version__ = "0.1.0"
