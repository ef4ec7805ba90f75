"""Routing as the server runs it: deciding (`service`), session affinity (`sessions`), fitting the
fallback rule (`calibration`), measuring it on labelled data (`evaluation`) and learning from users'
corrections (`feedback`). The policies themselves live in `routers/`, with no HTTP and no serving."""
