"""`brats2d view`: a local, read-only web viewer over `brats2d predict` output (docs/viewer.md). Not for clinical use."""
