"""Dashboard views, one module per page. Each is thin: check the org and role (accounts.tenancy),
call one action, render."""
