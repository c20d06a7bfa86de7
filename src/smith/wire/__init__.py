"""Pydantic models of what crosses the network between Smith's own services (the edges).

Services never import each other; they share these wire models instead.
"""
