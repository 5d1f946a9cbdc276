"""Small helpers shared by the subpackages (progress bars, fingerprints)."""
