"""methods package of osteobench."""
