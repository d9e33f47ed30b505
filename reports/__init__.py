"""reports package of osteobench."""
