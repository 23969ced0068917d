"""Time views of a session: its recorded calls as a Chrome / Perfetto trace (`chrome.py`, from a version-5 events
file), and time per stage and step from a torch.profiler trace of a session labelled with `profile=True`
(`profile.py`). They read events and profiler traces, never the report, and change nothing in it."""
