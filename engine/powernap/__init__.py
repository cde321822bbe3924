"""powernap: the per-host nap engine of the powernap.fleet collection.

Standard library only; runs on Python 3.9 and later.
"""

__version__ = "0.1.0"
