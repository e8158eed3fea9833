"""Test helpers shipped with the package (local stand-ins for services tests cannot reach)."""
