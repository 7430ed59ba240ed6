"""Dashboard views, one module per page. Each is thin: check the org and role (dashboard.access),
call one action, render."""
