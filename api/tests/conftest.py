from dashboard.tests.conftest import *  # noqa: F401,F403  (the shared personas and objects)
