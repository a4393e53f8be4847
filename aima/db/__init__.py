"""Persistence: SQLAlchemy tables (PostgreSQL), Beanie documents (MongoDB) and Milvus collections."""
