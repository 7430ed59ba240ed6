"""Libraries with no app of their own: environment parsing, Redis clients, per-loop state, money.

The ground floor of Tokios: nothing here imports an app (accounts, deployments, billing, proxy,
api, dashboard) or the site's settings module.
"""
