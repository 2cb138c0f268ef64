"""Reference speaker statistics shipped with the package (`spk_stat.npy`, upstream's published values)."""
