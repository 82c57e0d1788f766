"""PostgreSQL storage: models, engine and session factory, repository functions.

Repository functions never commit: the caller owns the transaction.
"""
