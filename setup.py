"""Only the optional C extension lives here; everything else is in pyproject.toml.

``pipelines._native`` holds the C kernels of ingest and two of serving (see pipelines/_native.c
and pipelines/native.py). Without a C compiler the install goes on without it, and the same
values are computed in Python and numpy, more slowly.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pipelines._native", sources=["pipelines/_native.c"], optional=True)])
