"""openrft's HTTP server: the managed service's job API and a web dashboard, on the user's machine.

``create_app`` (in :mod:`openrft.server.app`) builds the FastAPI application; ``openrft server``
runs it with uvicorn.
"""
