"""The router app wrapped in wsgiref.validate.validator: every PEP 3333 rule
the validator knows is checked on each request the conformance corpus sends.
A complaint is an AssertionError (500 + traceback in the log) or a
WSGIWarning on stderr; tests/conformance.rs fails on either."""

import warnings
from wsgiref.validate import WSGIWarning, validator

from app import application as router

# Warnings become log lines the test can see, every time (not just once).
warnings.simplefilter("always", WSGIWarning)

application = validator(router)
