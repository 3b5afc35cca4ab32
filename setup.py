"""Only the optional C extension lives here; everything else is in pyproject.toml.

``pipelines._blake2b`` hashes the content ids of ingest in C (see pipelines/_blake2b.c).
Without a C compiler the install goes on without it, and ingest hashes in Python: the same
ids, slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pipelines._blake2b", sources=["pipelines/_blake2b.c"], optional=True)])
