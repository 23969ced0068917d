"""Files analytic simulators read, made from a report's work section (GenZ, LLM-Viewer style, plain CSV / JSON)."""
