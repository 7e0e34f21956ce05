"""Layer 5: evaluation — the digit judge's scores, and FID / sFID / IS / precision / recall."""
