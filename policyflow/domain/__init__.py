"""The pure core: violations, their keys, the record of what was done, routing. No I/O here."""
