"""Operator features behind the admin API (the routes are `server/api/admin.py`): the activity log of
admin operations (`activity`) and the experts a config seeds at start (`seeding`)."""
