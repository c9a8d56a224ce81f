"""Ground floor: the pivot types, the format registry, errors, atomic output, and one module per file format."""
