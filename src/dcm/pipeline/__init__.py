"""What each DVC stage does, one function per stage: ``stages/*.py`` and the ``dcm`` CLI call these.

Every stage reads validated params, opens one MLflow run, and writes its outputs under its own
folder (:class:`dcm.layout.Layout`) atomically.
"""
