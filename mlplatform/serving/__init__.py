"""REST serving of every spec'd model's champion, with canary and shadow rollout and a durable prediction log.

``app.create_app`` builds the FastAPI application; ``server.serve`` runs it under uvicorn (``mlplatform serve``).
"""
