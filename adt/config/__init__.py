"""Named settings (profiles) and provenance (output folders, git commit, MANIFEST.json);
``provenance`` imports no torch."""
