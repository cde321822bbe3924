"""powernap lab: a simulated fleet on one machine (see lab/README.md)."""
