"""What both LinePulse HTTP APIs (KPI and alerts) share, one concept per module:

- `settings`: who may call an API and how much: tokens, limits, CORS, TLS, as the plant
  config has them and as resolved at start;
- `guard`: the ASGI middleware that enforces them (token, body size, rate);
- `api`: the FastAPI app both APIs are built on: offline docs, `/metrics`, and the one
  error shape with its handlers.
"""
