"""rsgi-wasm guest adapter: the WSGI server as seen from inside the sandbox.

The host (Rust) speaks the WIT contract in ``wit/wsgi.wit``; this package
turns it into exact PEP 3333 semantics for an unmodified WSGI application.

Modules:
  wsgi_input  -- ``wsgi.input``: a bounded, buffered stream over a chunk source
  protocol    -- ``start_response``, ``write``, result iteration, error pages
  boot        -- build-time loading of the user's app, warm-up, error reports
  component   -- the WIT export (only importable inside a component build)
"""
