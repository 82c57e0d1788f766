"""The pure MoA core: specs and presets, prompts, layer planning, provider clients, cost.

Nothing here imports celery, sqlalchemy or fastapi; workers and the API call in.
"""
