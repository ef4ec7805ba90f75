"""The operator console at /console: static pages that drive the same admin and inference API as any client.

Sign-in exchanges the admin token for a session cookie (`sessions.py`); the pages (`static/`) are plain
HTML, CSS and JavaScript with no library and nothing from a CDN.
"""
