"""Prefect flows: thin wrappers over the tested functions in ``features``, ``models`` and
``serving``. Entry points call ``autoscaler.runtime.configure_prefect`` before importing
these modules."""
