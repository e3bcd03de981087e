"""The selection core: pure, jitted ALFA-Mix selection on one device or a mesh."""
