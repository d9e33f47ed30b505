"""baselines package of osteobench."""
